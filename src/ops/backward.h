// Backward passes of the ops a training step runs, and the attention forward that saves what its
// backward needs (the log-sum-exp of every query's scores).
//
// Each op has plain, readable code templated on Real (float or double): tests/backward_test.cc
// checks it in double precision against central finite differences of the forward, and the
// trainer runs the same code in float. Where that plain code would dominate a training step
// (matmul, attention, cross-entropy, SwiGLU) a fast float version sits beside it under the plain
// name, and the templated one keeps the suffix Scalar: it stays runnable as the oracle the fast
// one is tested against (CONVENTIONS.md items 4 and 6).
//
// Legend: T = tokens (rows), H = width, F = elements, NH = query heads, KVH = KV heads,
// G = NH / KVH (the GQA group), D = head dim, V = vocab, M = rows, K = in_features,
// N = out_features. All tensors are row-major and contiguous. dX is dLoss/dX.
//
// Accumulation: an output marked (+=) adds into what the caller holds, because several terms of
// the loss reach it: a weight read by many rows (or by two layers, as a tied LM head and
// embedding), and the K/V of an owner layer that reader layers attend over (cross-layer KV
// reuse: every reading layer's attention backward adds its share into the owner's dK, dV, and
// from there into the owner's K/V projections). Outputs not marked (+=) are overwritten.
#pragma once

#include <cstdint>

#include "ops/elementwise.h"

namespace mixattn::ops {

// ---- Linear: y[M, N] = x[M, K] w[N, K]^T (MatMulTransposedScalar) ----
//   dx[M, K] += dy[M, N] w[N, K]        dw[N, K] += dy[M, N]^T x[M, K]
// Either dx or dw may be nullptr (not wanted, e.g. the input of the first layer).

// Plain loops, sums in double.
template <typename Real>
void MatMulTransposedBackwardScalar(const Real* x, const Real* w, const Real* dy, int64_t rows,
                                    int64_t out_features, int64_t in_features, Real* dx, Real* dw);
// oneDNN's sgemm (f32, all OpenMP threads), beta = 1 so the products add into dx and dw.
void MatMulTransposedBackward(const float* x, const float* w, const float* dy, int64_t rows,
                              int64_t out_features, int64_t in_features, float* dx, float* dw);

// The forward product the trainer runs, y[M, N] = x[M, K] w[N, K]^T (overwritten), by oneDNN's
// sgemm like the backward above; the engine's ops::Linear owns copies of its weights, which a
// trainer updating them every step does not want.
void MatMulTransposed(const float* x, const float* w, int64_t rows, int64_t out_features,
                      int64_t in_features, float* y);

// ---- RMSNorm: y = x r w with r = 1 / sqrt(mean(x^2) + eps) per row (RmsNormScalar) ----
// Since dr/dx_c = -r^3 x_c / H, with g = w * dy (elementwise):
//   dx_c = r g_c - x_c r^3 (1/H) sum_i x_i g_i            dw_c += sum_t dy[t, c] x[t, c] r_t
// x, dy, dx: [T, H]; w, dw: [H]. Sums in double. dx may be dy (in place).
template <typename Real>
void RmsNormBackward(const Real* x, const Real* weight, const Real* dy, int64_t rows, int64_t width,
                     double eps, Real* dx, Real* dweight);

// ---- RoPE (RopeScalar, ApplyRope) ----
// RoPE turns each pair (x[j], x[j + D/2]) by the angle a = p theta^(-2j/D): y = R(a) x. R is
// orthogonal, so dx = R(a)^T dy = R(-a) dy:
//   dx[j] = dy[j] cos a + dy[j + D/2] sin a,    dx[j + D/2] = dy[j + D/2] cos a - dy[j] sin a.
// In place on d[T, heads, D]: dy in, dx out.

// Row t at position first_position + t; angles computed in double, like RopeScalar.
template <typename Real>
void RopeBackward(Real* d, int64_t tokens, int64_t heads, int64_t head_dim, int64_t first_position,
                  double theta);
// Row t at positions[t] (any order, as ApplyRope), with the table's f32 cos/sin. Fails
// (mixattn::Error) if head_dim differs from the table's or a position is outside the table.
void ApplyRopeBackward(float* d, const int32_t* positions, int64_t rows, int64_t heads,
                       int64_t head_dim, const RopeTable& table);

// ---- SwiGLU: y = silu(a) u, silu(a) = a s(a), s = 1 / (1 + e^-a) (SwiGluScalar) ----
// silu'(a) = s (1 + a (1 - s)), so  dgate = dy u silu'(a),  dup = dy silu(a).
// gate, up, dy, dgate, dup: [F]. dgate may be gate and dup may be up (in place).
template <typename Real>
void SwiGluBackwardScalar(const Real* gate, const Real* up, const Real* dy, int64_t count,
                          Real* dgate, Real* dup);
// Vectorised (polynomial e^x, about 1e-7 relative) and split over OpenMP threads.
void SwiGluBackward(const float* gate, const float* up, const float* dy, int64_t count,
                    float* dgate, float* dup);

// ---- Embedding: x[t, :] = table[tokens[t], :] ----
// The transpose of a gather is a scatter-add: dtable[v, :] += sum over t with tokens[t] = v of
// dx[t, :]. tokens: [T]; dx: [T, H]; dtable: [V, H] (+=). Fails if a token is outside [0, V).
template <typename Real>
void EmbeddingBackward(const int32_t* tokens, int64_t rows, const Real* dx, int64_t width,
                       int64_t vocab, Real* dtable);

// ---- Cross-entropy of softmax(logits) against targets ----
// Over the C rows whose target is >= 0 (a negative target is ignored: padding, prompt tokens):
//   loss = (1/C) sum_t (lse_t - logits[t, y_t]),    lse_t = log sum_v e^logits[t, v]
//   dlogits[t, v] = (e^(logits[t, v] - lse_t) - [v = y_t]) / C,   0 on ignored rows.
// lse_t is taken as m + log sum_v e^(logits[t, v] - m) with m the row's max, so no exponent
// overflows. Returns the mean loss (0, with dlogits all 0, when C = 0). logits, dlogits: [T, V];
// targets: [T]. dlogits may be logits (in place) or nullptr (loss only). Fails if a target is
// >= V.
template <typename Real>
double CrossEntropyForwardBackwardScalar(const Real* logits, const int32_t* targets, int64_t rows,
                                         int64_t vocab, Real* dlogits);
// Vectorised and split over OpenMP threads by rows; the per-row losses are summed in a fixed
// order, so the result does not depend on the thread count.
double CrossEntropyForwardBackward(const float* logits, const int32_t* targets, int64_t rows,
                                   int64_t vocab, float* dlogits);

// ---- Causal grouped-query attention (CausalAttentionScalar) ----
// Queries and keys at positions 0..T-1; query p sees key j iff j <= p and (window == 0 or
// p - j < window); query head n reads KV head n / G; s_pj = q_p . k_j / sqrt(D);
// P = softmax_j(s); out_p = sum_j P_pj v_j.
// Shapes: q, out, dq, dout: [T, NH, D]; k, v, dk, dv: [T, KVH, D]; lse: [T, NH].
//
// Backward (FlashAttention-2, Dao 2023, section 3.1.2 and Algorithm 2), per query row:
//   dv_j += P_j dout                dP_j = dout . v_j
//   dS_j  = P_j (dP_j - Delta)      Delta = sum_j P_j dP_j = dout . out  (the softmax Jacobian)
//   dq    = sum_j dS_j k_j / sqrt(D)      dk_j += dS_j q / sqrt(D).
// dq is overwritten; dk and dv accumulate (+=): the G query heads of a group sum into their
// shared KV head, and a layer that reads another layer's K/V adds into the owner's gradient.

// Forward in Real with sums in double; also writes lse[p, n] = log sum_j e^(s_pj) (in the
// scaled-score units of s), unless lse is nullptr.
template <typename Real>
void CausalAttentionForwardScalar(const Real* q, const Real* k, const Real* v, int64_t tokens,
                                  int64_t query_heads, int64_t kv_heads, int64_t head_dim,
                                  int64_t window, Real* out, Real* lse);
// Backward oracle: recomputes the softmax of each row in double from q and k (needs no saved
// state) and uses Delta = sum_j P_j dP_j.
template <typename Real>
void CausalAttentionBackwardScalar(const Real* q, const Real* k, const Real* v, const Real* dout,
                                   int64_t tokens, int64_t query_heads, int64_t kv_heads,
                                   int64_t head_dim, int64_t window, Real* dq, Real* dk, Real* dv);

// Fast f32 forward (FlashAttention-2 Algorithm 1: tiles of queries x keys, online softmax, no
// T x T buffer), OpenMP over (query tile, KV head). lse as above (nullptr: not wanted). Key tiles
// wholly outside every window of a query tile are never touched: a sliding layer costs O(T W).
void CausalAttentionForward(const float* q, const float* k, const float* v, int64_t tokens,
                            int64_t query_heads, int64_t kv_heads, int64_t head_dim, int64_t window,
                            float* out, float* lse);
// Fast f32 backward from the forward's out and lse: P = e^(s - lse) is recomputed tile by tile
// and Delta = dout . out, so no T x T buffer is needed; masked tiles are skipped as in the
// forward. OpenMP over KV heads and balanced slices of query tiles; when a KV head is split
// between slices, each slice sums its dK, dV in a private buffer and the buffers are added in a
// fixed order (results depend on the thread count only in rounding).
void CausalAttentionBackward(const float* q, const float* k, const float* v, const float* out,
                             const float* lse, const float* dout, int64_t tokens,
                             int64_t query_heads, int64_t kv_heads, int64_t head_dim,
                             int64_t window, float* dq, float* dk, float* dv);

}  // namespace mixattn::ops
