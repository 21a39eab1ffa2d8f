// Plain scalar kernels: the readable oracle every fast kernel is tested against, and the building
// blocks of the reference forward pass. Inner products accumulate in double so that these are
// more accurate than any fast f32/bf16 kernel they judge.
//
// Legend: T = tokens, H = model width, NH = query heads, KVH = KV heads, D = head dim,
// K = inner dimension, N = output features. All tensors are row-major and contiguous.
#pragma once

#include <cstdint>

namespace mixattn::ops {

// y[T, N] = x[T, K] * w[N, K]^T   (PyTorch's Linear without bias)
void MatMulTransposedScalar(const float* x, const float* w, int64_t rows, int64_t out_features,
                            int64_t in_features, float* y);

// out[T, H] = x / sqrt(mean(x^2) + eps) * weight[H]   (RMSNorm, Zhang & Sennrich 2019)
void RmsNormScalar(const float* x, const float* weight, int64_t rows, int64_t width, double eps,
                   float* out);

// Rotary position embedding in place on x[T, heads, D], rotate-half layout (Hugging Face Llama):
// for j < D/2, with angle = p * theta^(-2j/D) and p = first_position + t,
//   x'[j]       = x[j] cos - x[j + D/2] sin
//   x'[j + D/2] = x[j + D/2] cos + x[j] sin                       (Su et al. 2021, eq. 34)
void RopeScalar(float* x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t first_position,
                double theta);

// out[T, F] = silu(gate) * up, silu(a) = a / (1 + e^-a)   (SwiGLU, Shazeer 2020)
void SwiGluScalar(const float* gate, const float* up, int64_t count, float* out);

// Causal grouped-query attention of T queries at positions 0..T-1 over T keys at the same
// positions. Query head n uses KV head n / (NH / KVH). Query p sees key j iff j <= p and, when
// window > 0, p - j < window (the window counts tokens, the query's own included).
//   q[T, NH, D], k[T, KVH, D], v[T, KVH, D] -> out[T, NH, D]; scores scaled by 1/sqrt(D).
void CausalAttentionScalar(const float* q, const float* k, const float* v, int64_t tokens,
                           int64_t query_heads, int64_t kv_heads, int64_t head_dim, int64_t window,
                           float* out);

}  // namespace mixattn::ops
