// Backward ops: the templated references (instantiated for float and double at the end of the
// file) and the fast f32 kernels beside them.
//
// Legend as in backward.h; in the attention kernels also R = rows of a work item (the query
// positions of a tile times G, every head of the group), C = keys in a key tile (kKeyTile).
//
// Fast kernels are plain loops written so that GCC vectorises them (`omp simd`, no float
// comparisons inside vector loops, fixed-size register blocks), compiled twice: once for
// AVX2 + FMA through a target attribute (so the rest of the project keeps its baseline -march)
// and once for the baseline; each call picks one with ActiveSimdLevel(), so tests cover both.
#include "ops/backward.h"

#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/error.h"
#include "ops/parallel_chunks.h"

#define MIXATTN_AVX2 __attribute__((target("avx2,fma")))
// The bodies of the fast kernels are inlined into an AVX2 and a baseline wrapper.
#define MIXATTN_ALWAYS_INLINE __attribute__((always_inline)) inline

namespace mixattn::ops {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

bool UseAvx2() { return ActiveSimdLevel() >= SimdLevel::kAvx2; }

// Threads a parallel region started here would get (1 inside another parallel region, where
// OpenMP runs nested regions on one thread).
int64_t AvailableThreads() { return omp_in_parallel() ? 1 : omp_get_max_threads(); }

// e^x in f32, for |x| < 2^22. Cephes expf, the same polynomial as ExpAvx2 in elementwise.cc:
// x = n ln2 + r with |r| <= ln2/2 (ln2 split in two parts so n ln2 is exact), e^r = 1 + r +
// r^2 P(r) with P of degree 5 (about 1e-7 relative), times 2^n built in the exponent bits.
// Written for GCC's vectoriser: n = round(x log2 e) is read from the low mantissa bits of
// x log2 e + 1.5 * 2^23, and clamped to [-127, 128] in integers (float comparisons are not
// if-converted under -ftrapping-math), so e^x flushes to 0 below about -87.3 and overflows to
// inf above about 88.4. NaN stays NaN.
MIXATTN_ALWAYS_INLINE float ExpF(float x) {
  constexpr float kShifter = 12582912.0f;  // 1.5 * 2^23
  const float shifted = x * 1.44269504088896341f + kShifter;
  const float n = shifted - kShifter;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float exp_r = p * (r * r) + (r + 1.0f);
  int32_t n_int =
      static_cast<int32_t>(std::bit_cast<uint32_t>(shifted) - std::bit_cast<uint32_t>(kShifter));
  n_int = n_int < -127 ? -127 : n_int;
  n_int = n_int > 128 ? 128 : n_int;
  return exp_r * std::bit_cast<float>(static_cast<uint32_t>(n_int + 127) << 23);
}

// ---- SwiGLU ----

// s(a) = 1 / (1 + e^-a) from e = e^-|a| in (0, 1], which never overflows: s = 1 / (1 + e) for
// a >= 0 and e / (1 + e) for a < 0. |a| is capped at 88 through its bit pattern (monotone for
// non-negative floats) to stay in ExpF's range; s is then 0 or 1 to f32 precision anyway.
MIXATTN_ALWAYS_INLINE float Sigmoid(float a) {
  constexpr uint32_t kCapBits = 0x42b00000;  // 88.0f
  uint32_t abs_bits = std::bit_cast<uint32_t>(a) & 0x7fffffffu;
  abs_bits = abs_bits < kCapBits ? abs_bits : kCapBits;
  const float e = ExpF(-std::bit_cast<float>(abs_bits));
  const bool negative = (std::bit_cast<uint32_t>(a) >> 31) != 0;
  return (negative ? e : 1.0f) / (1.0f + e);
}

MIXATTN_ALWAYS_INLINE void SwiGluBackwardBody(const float* gate, const float* up, const float* dy,
                                              int64_t count, float* dgate, float* dup) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) {
    const float a = gate[i], u = up[i], g = dy[i];
    const float s = Sigmoid(a);
    dgate[i] = g * u * (s * (1.0f + a * (1.0f - s)));  // silu'(a) = s (1 + a (1 - s))
    dup[i] = g * (a * s);                              // silu(a) = a s
  }
}

MIXATTN_AVX2 void SwiGluBackwardAvx2(const float* gate, const float* up, const float* dy,
                                     int64_t count, float* dgate, float* dup) {
  SwiGluBackwardBody(gate, up, dy, count, dgate, dup);
}

void SwiGluBackwardPortable(const float* gate, const float* up, const float* dy, int64_t count,
                            float* dgate, float* dup) {
  SwiGluBackwardBody(gate, up, dy, count, dgate, dup);
}

// ---- Cross-entropy ----

// Float bit patterns as integers in the same order (the radix-sort trick): non-negative floats
// keep their bits, negative ones get their magnitude bits flipped. A max over floats then runs
// as an integer max, which GCC vectorises (a float max it does not, for NaN's sake).
MIXATTN_ALWAYS_INLINE int32_t OrderedBits(float x) {
  const int32_t bits = std::bit_cast<int32_t>(x);
  return bits ^ ((bits >> 31) & 0x7fffffff);
}
MIXATTN_ALWAYS_INLINE float FromOrderedBits(int32_t key) {
  return std::bit_cast<float>(key ^ ((key >> 31) & 0x7fffffff));
}

// One counted row: returns lse - logits[target] and, when dl is not null, writes
// dl[V] = (softmax - onehot) * inv_count. dl may be x.
MIXATTN_ALWAYS_INLINE double CrossEntropyRowBody(const float* x, int64_t vocab, int32_t target,
                                                 float inv_count, float* dl) {
  int32_t max_key = OrderedBits(-kInf);
#pragma omp simd reduction(max : max_key)
  for (int64_t i = 0; i < vocab; ++i) max_key = std::max(max_key, OrderedBits(x[i]));
  const float row_max = FromOrderedBits(max_key);
  const float target_logit = x[target];  // read before dl (maybe x) is written
  float sum = 0;
  if (dl != nullptr) {
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < vocab; ++i) {
      const float e = ExpF(x[i] - row_max);
      dl[i] = e;
      sum += e;
    }
    const float scale = inv_count / sum;
#pragma omp simd
    for (int64_t i = 0; i < vocab; ++i) dl[i] *= scale;
    dl[target] -= inv_count;
  } else {
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < vocab; ++i) sum += ExpF(x[i] - row_max);
  }
  return double{row_max} + std::log(double{sum}) - target_logit;
}

MIXATTN_AVX2 double CrossEntropyRowAvx2(const float* x, int64_t vocab, int32_t target,
                                        float inv_count, float* dl) {
  return CrossEntropyRowBody(x, vocab, target, inv_count, dl);
}

double CrossEntropyRowPortable(const float* x, int64_t vocab, int32_t target, float inv_count,
                               float* dl) {
  return CrossEntropyRowBody(x, vocab, target, inv_count, dl);
}

// Rows with a target >= 0; fails on a target outside the vocabulary.
int64_t CountTargets(const int32_t* targets, int64_t rows, int64_t vocab) {
  int64_t count = 0;
  for (int64_t t = 0; t < rows; ++t) {
    if (targets[t] >= vocab)
      Fail("cross-entropy: row ", t, " has target ", targets[t], ", outside the vocabulary [0, ",
           vocab, ")");
    if (targets[t] >= 0) ++count;
  }
  return count;
}

// ---- Attention ----

// First key position a query at `position` sees.
int64_t FirstVisibleKey(int64_t position, int64_t window) {
  return window > 0 ? std::max<int64_t>(0, position - window + 1) : 0;
}

void CheckAttentionShape(int64_t tokens, int64_t query_heads, int64_t kv_heads, int64_t head_dim,
                         int64_t window) {
  MIXATTN_CHECK(tokens >= 0 && window >= 0 && head_dim >= 1);
  MIXATTN_CHECK(kv_heads >= 1 && query_heads >= kv_heads && query_heads % kv_heads == 0);
}

// Tiles. A work item is one KV head g and a tile of consecutive query positions; its R rows are
// all G query heads of g at each position, so every K/V element loaded serves G heads. Keys are
// walked in tiles of C; per (query tile, key tile) the kernels run small GEMMs on blocks that
// stay in cache (FlashAttention-2 Algorithms 1 and 2). With R = 64 and C = 32 a block's working
// set (Q, dO, dQ [R, D]; K^T, V^T [D, C]; S, dS [R, C]) is 80 KiB at D = 64: in L2, with the
// blocks each GEMM streams (K^T or a row panel of S) in L1. Measured on the development machine
// (T = 512, NH = 4, KVH = 1, D = 64, one thread, backward), R in {32, 64, 128} x C in {32, 64}:
// C = 64 was ~5% faster with full attention but ~15% slower with a window of 64 (it wastes more
// of the band's edge tiles); R = 32 was up to 1.7x slower (it feeds the 4 x 16 GEMM blocks less).
constexpr int64_t kKeyTile = 32;   // C
constexpr int64_t kTileRows = 64;  // R (at least G)

struct AttentionDims {
  int64_t tokens;          // T
  int64_t query_heads;     // NH
  int64_t kv_heads;        // KVH
  int64_t head_dim;        // D
  int64_t window;          // 0 = full
  int64_t group;           // G
  int64_t tile_positions;  // query positions per tile; R = tile_positions * G
  float scale;             // 1 / sqrt(D)

  int64_t tiles() const { return (tokens + tile_positions - 1) / tile_positions; }
  int64_t tile_begin(int64_t tile) const { return tile * tile_positions; }
  int64_t tile_end(int64_t tile) const { return std::min(tokens, (tile + 1) * tile_positions); }
  // Row index in [T * NH] (of q, out, dout, dq, lse) of row r of the item (tile at p_begin, g).
  int64_t query_row(int64_t p_begin, int64_t g, int64_t r) const {
    return (p_begin + r / group) * query_heads + g * group + r % group;
  }
};

AttentionDims MakeAttentionDims(int64_t tokens, int64_t query_heads, int64_t kv_heads,
                                int64_t head_dim, int64_t window) {
  CheckAttentionShape(tokens, query_heads, kv_heads, head_dim, window);
  const int64_t group = query_heads / kv_heads;
  return {tokens,
          query_heads,
          kv_heads,
          head_dim,
          window,
          group,
          std::max<int64_t>(1, kTileRows / group),
          static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)))};
}

// Key tiles of the query tile [p_begin, p_end) are [end - C, end) for end = p_end, p_end - C, ...
// while end > the first key any row sees. The lowest may begin before that key (its extra
// columns are masked) so that every tile is full except near position 0: full tiles take the
// GEMM's register-blocked path. This is the lowest key any of them touches.
int64_t LowestKeyOfTiles(int64_t p_begin, int64_t p_end, int64_t window) {
  const int64_t first = FirstVisibleKey(p_begin, window);
  const int64_t tiles = (p_end - first + kKeyTile - 1) / kKeyTile;
  return std::max<int64_t>(0, p_end - tiles * kKeyTile);
}

// Per-thread blocks of one work item, allocated once per call and thread.
struct AttentionScratch {
  explicit AttentionScratch(const AttentionDims& dims)
      : q_rows(Size(dims, dims.head_dim)),
        dout_rows(Size(dims, dims.head_dim)),
        acc_rows(Size(dims, dims.head_dim)),
        k_t(static_cast<size_t>(dims.head_dim * kKeyTile)),
        v_t(static_cast<size_t>(dims.head_dim * kKeyTile)),
        s(Size(dims, kKeyTile)),
        ds(Size(dims, kKeyTile)),
        row_a(Size(dims, 1)),
        row_b(Size(dims, 1)) {}
  static size_t Size(const AttentionDims& dims, int64_t columns) {
    return static_cast<size_t>(dims.tile_positions * dims.group * columns);
  }

  std::vector<float> q_rows;     // [R, D] the item's queries
  std::vector<float> dout_rows;  // [R, D] backward: their dout
  std::vector<float> acc_rows;   // [R, D] forward: unnormalised out; backward: dq
  std::vector<float> k_t, v_t;   // [D, C] a key tile transposed (rows of C keys)
  std::vector<float> s;          // [R, C] scores, then probabilities P
  std::vector<float> ds;         // [R, C] backward: dP, then dS
  std::vector<float> row_a;      // [R] forward: running max m; backward: lse
  std::vector<float> row_b;      // [R] forward: running sum l; backward: Delta
};

// a(i, p) of op(a) in GemmAccumulate.
template <bool kTransposeA>
MIXATTN_ALWAYS_INLINE float ElementOfA(const float* a, int64_t lda, int64_t i, int64_t p) {
  return kTransposeA ? a[p * lda + i] : a[i * lda + p];
}

// c[M, N] += op(a) b[K, N] with op(a) = a[M, K], or a[K, M]^T when kTransposeA; row strides lda,
// ldb, ldc. Blocks of 4 x 16 outputs stay in registers: per p, two 8-lane loads of b, four
// broadcasts of a, eight FMAs into eight independent accumulators (enough to cover the FMA
// latency of 4 cycles on 2 pipes). Leftover columns and rows are done a row at a time.
template <bool kTransposeA>
MIXATTN_ALWAYS_INLINE void GemmAccumulate(int64_t m, int64_t n, int64_t k, const float* a,
                                          int64_t lda, const float* b, int64_t ldb, float* c,
                                          int64_t ldc) {
  constexpr int64_t kMr = 4, kNr = 16;
  const int64_t m_blocked = m - m % kMr, n_blocked = n - n % kNr;
  for (int64_t i = 0; i < m_blocked; i += kMr) {
    for (int64_t j = 0; j < n_blocked; j += kNr) {
      float acc[kMr][kNr];
#pragma GCC unroll 4
      for (int64_t ii = 0; ii < kMr; ++ii) {
#pragma omp simd
        for (int64_t jj = 0; jj < kNr; ++jj) acc[ii][jj] = c[(i + ii) * ldc + j + jj];
      }
      for (int64_t p = 0; p < k; ++p) {
        const float* b_row = b + p * ldb + j;
#pragma GCC unroll 4
        for (int64_t ii = 0; ii < kMr; ++ii) {
          const float a_value = ElementOfA<kTransposeA>(a, lda, i + ii, p);
#pragma omp simd
          for (int64_t jj = 0; jj < kNr; ++jj) acc[ii][jj] += a_value * b_row[jj];
        }
      }
#pragma GCC unroll 4
      for (int64_t ii = 0; ii < kMr; ++ii) {
#pragma omp simd
        for (int64_t jj = 0; jj < kNr; ++jj) c[(i + ii) * ldc + j + jj] = acc[ii][jj];
      }
    }
  }
  for (int64_t i = 0; i < m; ++i) {
    const int64_t j_begin = i < m_blocked ? n_blocked : 0;
    if (j_begin == n) continue;
    float* c_row = c + i * ldc;
    for (int64_t p = 0; p < k; ++p) {
      const float a_value = ElementOfA<kTransposeA>(a, lda, i, p);
      const float* b_row = b + p * ldb;
#pragma omp simd
      for (int64_t j = j_begin; j < n; ++j) c_row[j] += a_value * b_row[j];
    }
  }
}

// dst[D, C] = the `count` rows src[c * stride + d] of a key tile, transposed.
MIXATTN_ALWAYS_INLINE void TransposeKeyTile(const float* src, int64_t stride, int64_t count,
                                            int64_t head_dim, float* dst) {
  for (int64_t c = 0; c < count; ++c) {
    const float* row = src + c * stride;
    for (int64_t d = 0; d < head_dim; ++d) dst[d * kKeyTile + c] = row[d];
  }
}

// Copies the item's rows out of x[T * NH, D] into rows[R, D]: at each position the G heads of
// group g are contiguous.
MIXATTN_ALWAYS_INLINE void GatherRows(const AttentionDims& dims, const float* x, int64_t p_begin,
                                      int64_t p_end, int64_t g, float* rows) {
  const int64_t row_floats = dims.group * dims.head_dim;
  for (int64_t p = p_begin; p < p_end; ++p) {
    std::memcpy(rows + (p - p_begin) * row_floats,
                x + (p * dims.query_heads + g * dims.group) * dims.head_dim,
                static_cast<size_t>(row_floats) * sizeof(float));
  }
}

// Columns [begin, end) of the key tile [start, start + count) that row r of the item sees
// (empty when the row's window misses the tile).
struct VisibleColumns {
  int64_t begin, end;
};
MIXATTN_ALWAYS_INLINE VisibleColumns VisibleColumnsOf(const AttentionDims& dims, int64_t p_begin,
                                                      int64_t r, int64_t start, int64_t count) {
  const int64_t position = p_begin + r / dims.group;
  const int64_t begin =
      std::clamp<int64_t>(FirstVisibleKey(position, dims.window) - start, 0, count);
  const int64_t end = std::clamp<int64_t>(position + 1 - start, begin, count);
  return {begin, end};
}

struct ForwardArgs {
  AttentionDims dims;
  const float* q;  // [T, NH, D]
  const float* k;  // [T, KVH, D]
  const float* v;  // [T, KVH, D]
  float* out;      // [T, NH, D]
  float* lse;      // [T, NH] or nullptr
};

// Forward of one item (query tile [p_begin, p_end), KV head g): FlashAttention-2 Algorithm 1.
// Per key tile, with running max m, sum l and unnormalised output o per row:
//   S = Q K^T / sqrt(D) (masked), m' = max(m, rowmax S), P = e^(S - m'),
//   l' = e^(m - m') l + rowsum P,  o' = e^(m - m') o + P V;   at the end out = o / l and
//   lse = m + log l.
MIXATTN_ALWAYS_INLINE void ForwardTileBody(const ForwardArgs& args, int64_t p_begin, int64_t p_end,
                                           int64_t g, AttentionScratch& scratch) {
  const AttentionDims& dims = args.dims;
  const int64_t dim = dims.head_dim;
  const int64_t rows = (p_end - p_begin) * dims.group;
  const int64_t kv_stride = dims.kv_heads * dim;
  float* q_rows = scratch.q_rows.data();
  float* o_rows = scratch.acc_rows.data();
  float* s = scratch.s.data();
  float* row_max = scratch.row_a.data();
  float* row_sum = scratch.row_b.data();
  GatherRows(dims, args.q, p_begin, p_end, g, q_rows);
  std::fill_n(o_rows, rows * dim, 0.0f);
  std::fill_n(row_max, rows, -kInf);
  std::fill_n(row_sum, rows, 0.0f);

  const int64_t first_key = FirstVisibleKey(p_begin, dims.window);
  for (int64_t end = p_end; end > first_key; end -= kKeyTile) {
    const int64_t start = std::max<int64_t>(0, end - kKeyTile), count = end - start;
    const float* k_tile = args.k + start * kv_stride + g * dim;  // [C, D], row stride KVH * D
    const float* v_tile = args.v + start * kv_stride + g * dim;
    TransposeKeyTile(k_tile, kv_stride, count, dim, scratch.k_t.data());
    for (int64_t r = 0; r < rows; ++r) std::fill_n(s + r * kKeyTile, count, 0.0f);
    GemmAccumulate<false>(rows, count, dim, q_rows, dim, scratch.k_t.data(), kKeyTile, s, kKeyTile);
    for (int64_t r = 0; r < rows; ++r) {
      float* s_row = s + r * kKeyTile;
      const VisibleColumns cols = VisibleColumnsOf(dims, p_begin, r, start, count);
      float tile_max = -kInf;
      for (int64_t c = cols.begin; c < cols.end; ++c) {
        s_row[c] *= dims.scale;
        tile_max = std::max(tile_max, s_row[c]);
      }
      std::fill_n(s_row, cols.begin, 0.0f);
      std::fill_n(s_row + cols.end, count - cols.end, 0.0f);
      if (cols.begin == cols.end) continue;  // this row sees none of the tile: P row = 0
      const float new_max = std::max(row_max[r], tile_max);
      const float rescale = std::exp(row_max[r] - new_max);  // 0 on the row's first keys
      float tile_sum = 0;
#pragma omp simd reduction(+ : tile_sum)
      for (int64_t c = cols.begin; c < cols.end; ++c) {
        s_row[c] = ExpF(s_row[c] - new_max);
        tile_sum += s_row[c];
      }
      row_max[r] = new_max;
      row_sum[r] = rescale * row_sum[r] + tile_sum;
      float* o_row = o_rows + r * dim;
#pragma omp simd
      for (int64_t d = 0; d < dim; ++d) o_row[d] *= rescale;
    }
    GemmAccumulate<false>(rows, dim, count, s, kKeyTile, v_tile, kv_stride, o_rows, dim);
  }

  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = dims.query_row(p_begin, g, r);
    const float inv_sum = 1.0f / row_sum[r];  // row_sum >= 1: the max term is e^0
    float* out_row = args.out + row * dim;
    const float* o_row = o_rows + r * dim;
#pragma omp simd
    for (int64_t d = 0; d < dim; ++d) out_row[d] = o_row[d] * inv_sum;
    if (args.lse != nullptr) args.lse[row] = row_max[r] + std::log(row_sum[r]);
  }
}

MIXATTN_AVX2 void ForwardTileAvx2(const ForwardArgs& args, int64_t p_begin, int64_t p_end,
                                  int64_t g, AttentionScratch& scratch) {
  ForwardTileBody(args, p_begin, p_end, g, scratch);
}

void ForwardTilePortable(const ForwardArgs& args, int64_t p_begin, int64_t p_end, int64_t g,
                         AttentionScratch& scratch) {
  ForwardTileBody(args, p_begin, p_end, g, scratch);
}

struct BackwardArgs {
  AttentionDims dims;
  const float* q;     // [T, NH, D]
  const float* k;     // [T, KVH, D]
  const float* v;     // [T, KVH, D]
  const float* out;   // [T, NH, D]
  const float* lse;   // [T, NH]
  const float* dout;  // [T, NH, D]
  float* dq;          // [T, NH, D]
};

// Where an item adds its dK, dV: rows [first_key, ...) of KV head g, row stride `stride`.
struct KvGradientTarget {
  float* dk;
  float* dv;
  int64_t first_key;
  int64_t stride;
};

// Backward of one item: FlashAttention-2 Algorithm 2 for one query tile. Per key tile:
//   S = Q K^T / sqrt(D),  P = e^(S - lse) (masked to 0),  dP = dO V^T,
//   dS = P (dP - Delta) / sqrt(D)    (the 1/sqrt(D) of S folded in),
//   dV += P^T dO,  dK += dS^T Q,  dQ += dS K.
// Delta = rowsum(dO o O) is computed once per row from the saved output.
MIXATTN_ALWAYS_INLINE void BackwardTileBody(const BackwardArgs& args, int64_t p_begin,
                                            int64_t p_end, int64_t g, AttentionScratch& scratch,
                                            const KvGradientTarget& target) {
  const AttentionDims& dims = args.dims;
  const int64_t dim = dims.head_dim;
  const int64_t rows = (p_end - p_begin) * dims.group;
  const int64_t kv_stride = dims.kv_heads * dim;
  float* q_rows = scratch.q_rows.data();
  float* dout_rows = scratch.dout_rows.data();
  float* dq_rows = scratch.acc_rows.data();
  float* s = scratch.s.data();
  float* ds = scratch.ds.data();
  float* row_lse = scratch.row_a.data();
  float* row_delta = scratch.row_b.data();
  GatherRows(dims, args.q, p_begin, p_end, g, q_rows);
  GatherRows(dims, args.dout, p_begin, p_end, g, dout_rows);
  std::fill_n(dq_rows, rows * dim, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = dims.query_row(p_begin, g, r);
    const float* out_row = args.out + row * dim;
    const float* dout_row = dout_rows + r * dim;
    float delta = 0;
#pragma omp simd reduction(+ : delta)
    for (int64_t d = 0; d < dim; ++d) delta += dout_row[d] * out_row[d];
    row_delta[r] = delta;
    row_lse[r] = args.lse[row];
  }

  const int64_t first_key = FirstVisibleKey(p_begin, dims.window);
  for (int64_t end = p_end; end > first_key; end -= kKeyTile) {
    const int64_t start = std::max<int64_t>(0, end - kKeyTile), count = end - start;
    const float* k_tile = args.k + start * kv_stride + g * dim;  // [C, D], row stride KVH * D
    const float* v_tile = args.v + start * kv_stride + g * dim;
    TransposeKeyTile(k_tile, kv_stride, count, dim, scratch.k_t.data());
    TransposeKeyTile(v_tile, kv_stride, count, dim, scratch.v_t.data());
    for (int64_t r = 0; r < rows; ++r) {
      std::fill_n(s + r * kKeyTile, count, 0.0f);
      std::fill_n(ds + r * kKeyTile, count, 0.0f);
    }
    GemmAccumulate<false>(rows, count, dim, q_rows, dim, scratch.k_t.data(), kKeyTile, s,
                          kKeyTile);  // S (unscaled)
    GemmAccumulate<false>(rows, count, dim, dout_rows, dim, scratch.v_t.data(), kKeyTile, ds,
                          kKeyTile);  // dP
    for (int64_t r = 0; r < rows; ++r) {
      float* p_row = s + r * kKeyTile;
      float* ds_row = ds + r * kKeyTile;
      const VisibleColumns cols = VisibleColumnsOf(dims, p_begin, r, start, count);
      const float lse = row_lse[r], delta = row_delta[r], scale = dims.scale;
#pragma omp simd
      for (int64_t c = cols.begin; c < cols.end; ++c) {
        const float p = ExpF(p_row[c] * scale - lse);
        p_row[c] = p;
        ds_row[c] = p * (ds_row[c] - delta) * scale;
      }
      std::fill_n(p_row, cols.begin, 0.0f);
      std::fill_n(p_row + cols.end, count - cols.end, 0.0f);
      std::fill_n(ds_row, cols.begin, 0.0f);
      std::fill_n(ds_row + cols.end, count - cols.end, 0.0f);
    }
    const int64_t target_offset = (start - target.first_key) * target.stride;
    GemmAccumulate<true>(count, dim, rows, s, kKeyTile, dout_rows, dim, target.dv + target_offset,
                         target.stride);  // dV += P^T dO
    GemmAccumulate<true>(count, dim, rows, ds, kKeyTile, q_rows, dim, target.dk + target_offset,
                         target.stride);  // dK += dS^T Q
    GemmAccumulate<false>(rows, dim, count, ds, kKeyTile, k_tile, kv_stride, dq_rows,
                          dim);  // dQ += dS K
  }

  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(args.dq + dims.query_row(p_begin, g, r) * dim, dq_rows + r * dim,
                static_cast<size_t>(dim) * sizeof(float));
  }
}

MIXATTN_AVX2 void BackwardTileAvx2(const BackwardArgs& args, int64_t p_begin, int64_t p_end,
                                   int64_t g, AttentionScratch& scratch,
                                   const KvGradientTarget& target) {
  BackwardTileBody(args, p_begin, p_end, g, scratch, target);
}

void BackwardTilePortable(const BackwardArgs& args, int64_t p_begin, int64_t p_end, int64_t g,
                          AttentionScratch& scratch, const KvGradientTarget& target) {
  BackwardTileBody(args, p_begin, p_end, g, scratch, target);
}

// A contiguous run of query tiles of one KV head in the backward, and the keys it can touch.
struct QuerySlice {
  int64_t tile_begin = 0, tile_end = 0;  // tiles [tile_begin, tile_end)
  int64_t key_begin = 0, key_end = 0;    // keys [key_begin, key_end) its dK, dV rows cover
  int64_t buffer_offset = 0;             // of its private dK rows, then dV rows, per KV head
};

// Splits the query tiles into `count` runs of about equal work (keys seen, summed over rows).
std::vector<QuerySlice> SliceQueryTiles(const AttentionDims& dims, int64_t count) {
  const int64_t tiles = dims.tiles();
  std::vector<int64_t> work_before(static_cast<size_t>(tiles + 1), 0);  // prefix sums
  for (int64_t t = 0; t < tiles; ++t) {
    int64_t work = 0;
    for (int64_t p = dims.tile_begin(t); p < dims.tile_end(t); ++p)
      work += p - FirstVisibleKey(p, dims.window) + 1;
    work_before[static_cast<size_t>(t + 1)] = work_before[static_cast<size_t>(t)] + work;
  }
  std::vector<QuerySlice> slices(static_cast<size_t>(count));
  int64_t tile = 0, buffer_rows = 0;
  for (int64_t i = 0; i < count; ++i) {
    QuerySlice& slice = slices[static_cast<size_t>(i)];
    slice.tile_begin = tile;
    const int64_t target_work = work_before.back() * (i + 1) / count;
    while (tile < tiles && (i == count - 1 || work_before[static_cast<size_t>(tile)] < target_work))
      ++tile;
    slice.tile_end = tile;
    if (slice.tile_begin < slice.tile_end) {
      slice.key_begin = dims.tokens;
      for (int64_t t = slice.tile_begin; t < slice.tile_end; ++t) {
        slice.key_begin = std::min(
            slice.key_begin, LowestKeyOfTiles(dims.tile_begin(t), dims.tile_end(t), dims.window));
      }
      slice.key_end = dims.tile_end(slice.tile_end - 1);
    }
    slice.buffer_offset = buffer_rows * 2 * dims.head_dim;
    buffer_rows += slice.key_end - slice.key_begin;
  }
  return slices;
}

}  // namespace

// ---- Linear ----

template <typename Real>
void MatMulTransposedBackwardScalar(const Real* x, const Real* w, const Real* dy, int64_t rows,
                                    int64_t out_features, int64_t in_features, Real* dx, Real* dw) {
  if (dx != nullptr) {
    for (int64_t m = 0; m < rows; ++m) {
      for (int64_t k = 0; k < in_features; ++k) {
        double sum = 0;  // dx[m, k] += sum_n dy[m, n] w[n, k]
        for (int64_t n = 0; n < out_features; ++n)
          sum += double{dy[m * out_features + n]} * w[n * in_features + k];
        dx[m * in_features + k] += static_cast<Real>(sum);
      }
    }
  }
  if (dw != nullptr) {
    for (int64_t n = 0; n < out_features; ++n) {
      for (int64_t k = 0; k < in_features; ++k) {
        double sum = 0;  // dw[n, k] += sum_m dy[m, n] x[m, k]
        for (int64_t m = 0; m < rows; ++m)
          sum += double{dy[m * out_features + n]} * x[m * in_features + k];
        dw[n * in_features + k] += static_cast<Real>(sum);
      }
    }
  }
}

void MatMulTransposedBackward(const float* x, const float* w, const float* dy, int64_t rows,
                              int64_t out_features, int64_t in_features, float* dx, float* dw) {
  MIXATTN_CHECK(rows >= 0 && out_features >= 0 && in_features >= 0);
  if (rows == 0 || out_features == 0 || in_features == 0) return;
  // Row-major sgemm: C[M', N'] = alpha op(A)[M', K'] op(B)[K', N'] + beta C.
  if (dx != nullptr) {  // dx[M, K] += dy[M, N] w[N, K]
    MIXATTN_CHECK(dnnl_sgemm('N', 'N', rows, in_features, out_features, 1.0f, dy, out_features, w,
                             in_features, 1.0f, dx, in_features) == dnnl_success);
  }
  if (dw != nullptr) {  // dw[N, K] += dy[M, N]^T x[M, K]
    MIXATTN_CHECK(dnnl_sgemm('T', 'N', out_features, in_features, rows, 1.0f, dy, out_features, x,
                             in_features, 1.0f, dw, in_features) == dnnl_success);
  }
}

void MatMulTransposed(const float* x, const float* w, int64_t rows, int64_t out_features,
                      int64_t in_features, float* y) {
  MIXATTN_CHECK(rows >= 0 && out_features >= 0 && in_features >= 0);
  if (rows == 0 || out_features == 0) return;
  // y[M, N] = x[M, K] w[N, K]^T; with K = 0 the product is all zeros (beta = 0 writes them).
  MIXATTN_CHECK(dnnl_sgemm('N', 'T', rows, out_features, in_features, 1.0f, x, in_features, w,
                           in_features, 0.0f, y, out_features) == dnnl_success);
}

// ---- RMSNorm ----

template <typename Real>
void RmsNormBackward(const Real* x, const Real* weight, const Real* dy, int64_t rows, int64_t width,
                     double eps, Real* dx, Real* dweight) {
  const double inv_width = 1.0 / static_cast<double>(width);
  for (int64_t t = 0; t < rows; ++t) {
    const Real* x_row = x + t * width;
    const Real* dy_row = dy + t * width;
    double sum_squares = 0, sum_xg = 0;  // sum_i x_i^2, sum_i x_i g_i with g = w dy
    for (int64_t c = 0; c < width; ++c) {
      sum_squares += double{x_row[c]} * x_row[c];
      sum_xg += double{x_row[c]} * weight[c] * dy_row[c];
    }
    const double r = 1.0 / std::sqrt(sum_squares * inv_width + eps);
    const double x_coefficient = r * r * r * sum_xg * inv_width;
    for (int64_t c = 0; c < width; ++c) {
      const double x_c = x_row[c], dy_c = dy_row[c];  // read before dx (maybe dy) is written
      dweight[c] += static_cast<Real>(dy_c * x_c * r);
      dx[t * width + c] = static_cast<Real>(r * weight[c] * dy_c - x_c * x_coefficient);
    }
  }
}

// ---- RoPE ----

template <typename Real>
void RopeBackward(Real* d, int64_t tokens, int64_t heads, int64_t head_dim, int64_t first_position,
                  double theta) {
  const int64_t half = head_dim / 2;
  for (int64_t t = 0; t < tokens; ++t) {
    const double position = static_cast<double>(first_position + t);
    for (int64_t j = 0; j < half; ++j) {
      // Same expression as RopeScalar, so the forward and backward angles agree bit for bit.
      const double angle =
          position * std::pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(head_dim));
      const double cos_a = std::cos(angle), sin_a = std::sin(angle);
      for (int64_t h = 0; h < heads; ++h) {
        Real* vec = d + (t * heads + h) * head_dim;
        const double first = vec[j], second = vec[j + half];
        vec[j] = static_cast<Real>(first * cos_a + second * sin_a);
        vec[j + half] = static_cast<Real>(second * cos_a - first * sin_a);
      }
    }
  }
}

void ApplyRopeBackward(float* d, const int32_t* positions, int64_t rows, int64_t heads,
                       int64_t head_dim, const RopeTable& table) {
  if (head_dim != table.head_dim())
    Fail("RoPE backward: head_dim ", head_dim, " does not match the table's ", table.head_dim());
  for (int64_t t = 0; t < rows; ++t) {
    if (positions[t] < 0 || positions[t] >= table.max_positions())
      Fail("RoPE backward: row ", t, " is at position ", positions[t], ", outside the table's [0, ",
           table.max_positions(), ")");
  }
  const int64_t half = head_dim / 2, row_size = heads * head_dim;
#pragma omp parallel for schedule(static) if (rows * row_size >= kParallelMinElements)
  for (int64_t t = 0; t < rows; ++t) {
    const float* cos = table.cos(positions[t]);
    const float* sin = table.sin(positions[t]);
    for (int64_t h = 0; h < heads; ++h) {
      float* vec = d + t * row_size + h * head_dim;
#pragma omp simd
      for (int64_t j = 0; j < half; ++j) {
        const float first = vec[j], second = vec[j + half];
        vec[j] = first * cos[j] + second * sin[j];
        vec[j + half] = second * cos[j] - first * sin[j];
      }
    }
  }
}

// ---- SwiGLU ----

template <typename Real>
void SwiGluBackwardScalar(const Real* gate, const Real* up, const Real* dy, int64_t count,
                          Real* dgate, Real* dup) {
  for (int64_t i = 0; i < count; ++i) {
    const double a = gate[i], u = up[i], g = dy[i];  // read before dgate, dup are written
    const double s = 1.0 / (1.0 + std::exp(-a));
    dgate[i] = static_cast<Real>(g * u * s * (1.0 + a * (1.0 - s)));
    dup[i] = static_cast<Real>(g * a * s);
  }
}

void SwiGluBackward(const float* gate, const float* up, const float* dy, int64_t count,
                    float* dgate, float* dup) {
  const bool avx2 = UseAvx2();
  ForChunks(count, [&](int64_t begin, int64_t n) {
    if (avx2) {
      SwiGluBackwardAvx2(gate + begin, up + begin, dy + begin, n, dgate + begin, dup + begin);
    } else {
      SwiGluBackwardPortable(gate + begin, up + begin, dy + begin, n, dgate + begin, dup + begin);
    }
  });
}

// ---- Embedding ----

template <typename Real>
void EmbeddingBackward(const int32_t* tokens, int64_t rows, const Real* dx, int64_t width,
                       int64_t vocab, Real* dtable) {
  for (int64_t t = 0; t < rows; ++t) {
    if (tokens[t] < 0 || tokens[t] >= vocab)
      Fail("embedding backward: row ", t, " has token ", tokens[t], ", outside [0, ", vocab, ")");
    Real* table_row = dtable + int64_t{tokens[t]} * width;
    const Real* dx_row = dx + t * width;
    for (int64_t c = 0; c < width; ++c) table_row[c] += dx_row[c];
  }
}

// ---- Cross-entropy ----

template <typename Real>
double CrossEntropyForwardBackwardScalar(const Real* logits, const int32_t* targets, int64_t rows,
                                         int64_t vocab, Real* dlogits) {
  const int64_t count = CountTargets(targets, rows, vocab);
  const double inv_count = count > 0 ? 1.0 / static_cast<double>(count) : 0.0;
  double loss = 0;
  for (int64_t t = 0; t < rows; ++t) {
    const Real* x = logits + t * vocab;
    Real* dl = dlogits != nullptr ? dlogits + t * vocab : nullptr;
    if (targets[t] < 0) {
      if (dl != nullptr) std::fill_n(dl, vocab, Real{0});
      continue;
    }
    double row_max = -INFINITY;
    for (int64_t i = 0; i < vocab; ++i) row_max = std::max<double>(row_max, x[i]);
    double sum = 0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(x[i] - row_max);
    const double lse = row_max + std::log(sum);
    loss += lse - x[targets[t]];
    if (dl == nullptr) continue;
    for (int64_t i = 0; i < vocab; ++i) {  // x[i] is read before dl[i] (maybe x[i]) is written
      const double onehot = i == targets[t] ? 1.0 : 0.0;
      dl[i] = static_cast<Real>((std::exp(x[i] - lse) - onehot) * inv_count);
    }
  }
  return loss * inv_count;
}

double CrossEntropyForwardBackward(const float* logits, const int32_t* targets, int64_t rows,
                                   int64_t vocab, float* dlogits) {
  const int64_t count = CountTargets(targets, rows, vocab);
  const float inv_count = count > 0 ? static_cast<float>(1.0 / static_cast<double>(count)) : 0.0f;
  const bool avx2 = UseAvx2();
  std::vector<double> row_loss(static_cast<size_t>(rows), 0.0);
#pragma omp parallel for schedule(static) if (rows * vocab >= kParallelMinElements)
  for (int64_t t = 0; t < rows; ++t) {
    const float* x = logits + t * vocab;
    float* dl = dlogits != nullptr ? dlogits + t * vocab : nullptr;
    if (targets[t] < 0) {
      if (dl != nullptr) std::fill_n(dl, vocab, 0.0f);
      continue;
    }
    row_loss[static_cast<size_t>(t)] =
        avx2 ? CrossEntropyRowAvx2(x, vocab, targets[t], inv_count, dl)
             : CrossEntropyRowPortable(x, vocab, targets[t], inv_count, dl);
  }
  double loss = 0;
  for (const double row : row_loss) loss += row;
  return count > 0 ? loss / static_cast<double>(count) : 0.0;
}

// ---- Attention ----

template <typename Real>
void CausalAttentionForwardScalar(const Real* q, const Real* k, const Real* v, int64_t tokens,
                                  int64_t query_heads, int64_t kv_heads, int64_t head_dim,
                                  int64_t window, Real* out, Real* lse) {
  CheckAttentionShape(tokens, query_heads, kv_heads, head_dim, window);
  const int64_t group = query_heads / kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  std::vector<double> scores(static_cast<size_t>(tokens));
  std::vector<double> accum(static_cast<size_t>(head_dim));
  for (int64_t p = 0; p < tokens; ++p) {
    const int64_t first_key = FirstVisibleKey(p, window);
    for (int64_t n = 0; n < query_heads; ++n) {
      const int64_t g = n / group;
      const Real* q_vec = q + (p * query_heads + n) * head_dim;
      double max_score = -INFINITY;
      for (int64_t j = first_key; j <= p; ++j) {
        const Real* k_vec = k + (j * kv_heads + g) * head_dim;
        double dot = 0;
        for (int64_t d = 0; d < head_dim; ++d) dot += double{q_vec[d]} * k_vec[d];
        scores[static_cast<size_t>(j)] = dot * scale;
        max_score = std::max(max_score, dot * scale);
      }
      double normaliser = 0;
      std::fill(accum.begin(), accum.end(), 0.0);
      for (int64_t j = first_key; j <= p; ++j) {
        const double weight = std::exp(scores[static_cast<size_t>(j)] - max_score);
        normaliser += weight;
        const Real* v_vec = v + (j * kv_heads + g) * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) accum[static_cast<size_t>(d)] += weight * v_vec[d];
      }
      Real* out_vec = out + (p * query_heads + n) * head_dim;
      for (int64_t d = 0; d < head_dim; ++d)
        out_vec[d] = static_cast<Real>(accum[static_cast<size_t>(d)] / normaliser);
      if (lse != nullptr)
        lse[p * query_heads + n] = static_cast<Real>(max_score + std::log(normaliser));
    }
  }
}

template <typename Real>
void CausalAttentionBackwardScalar(const Real* q, const Real* k, const Real* v, const Real* dout,
                                   int64_t tokens, int64_t query_heads, int64_t kv_heads,
                                   int64_t head_dim, int64_t window, Real* dq, Real* dk, Real* dv) {
  CheckAttentionShape(tokens, query_heads, kv_heads, head_dim, window);
  const int64_t group = query_heads / kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  const size_t kv_size = static_cast<size_t>(tokens * kv_heads * head_dim);
  std::vector<double> dk_sum(kv_size, 0.0), dv_sum(kv_size, 0.0);  // [T, KVH, D]
  std::vector<double> probs(static_cast<size_t>(tokens)), dprobs(static_cast<size_t>(tokens));
  std::vector<double> dq_sum(static_cast<size_t>(head_dim));
  for (int64_t p = 0; p < tokens; ++p) {
    const int64_t first_key = FirstVisibleKey(p, window);
    for (int64_t n = 0; n < query_heads; ++n) {
      const int64_t g = n / group;
      const Real* q_vec = q + (p * query_heads + n) * head_dim;
      const Real* dout_vec = dout + (p * query_heads + n) * head_dim;
      // P_j = softmax_j(q . k_j / sqrt(D)),  dP_j = dout . v_j.
      double max_score = -INFINITY;
      for (int64_t j = first_key; j <= p; ++j) {
        const Real* k_vec = k + (j * kv_heads + g) * head_dim;
        const Real* v_vec = v + (j * kv_heads + g) * head_dim;
        double dot = 0, dprob = 0;
        for (int64_t d = 0; d < head_dim; ++d) {
          dot += double{q_vec[d]} * k_vec[d];
          dprob += double{dout_vec[d]} * v_vec[d];
        }
        probs[static_cast<size_t>(j)] = dot * scale;
        dprobs[static_cast<size_t>(j)] = dprob;
        max_score = std::max(max_score, dot * scale);
      }
      double normaliser = 0;
      for (int64_t j = first_key; j <= p; ++j) {
        probs[static_cast<size_t>(j)] = std::exp(probs[static_cast<size_t>(j)] - max_score);
        normaliser += probs[static_cast<size_t>(j)];
      }
      double delta = 0;  // sum_j P_j dP_j
      for (int64_t j = first_key; j <= p; ++j) {
        probs[static_cast<size_t>(j)] /= normaliser;
        delta += probs[static_cast<size_t>(j)] * dprobs[static_cast<size_t>(j)];
      }
      // dS_j = P_j (dP_j - delta); s_j = q . k_j / sqrt(D) gives the 1/sqrt(D) of dq and dk.
      std::fill(dq_sum.begin(), dq_sum.end(), 0.0);
      for (int64_t j = first_key; j <= p; ++j) {
        const double prob = probs[static_cast<size_t>(j)];
        const double dscore = prob * (dprobs[static_cast<size_t>(j)] - delta) * scale;
        const Real* k_vec = k + (j * kv_heads + g) * head_dim;
        double* dk_vec = dk_sum.data() + (j * kv_heads + g) * head_dim;
        double* dv_vec = dv_sum.data() + (j * kv_heads + g) * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) {
          dq_sum[static_cast<size_t>(d)] += dscore * k_vec[d];
          dk_vec[d] += dscore * q_vec[d];
          dv_vec[d] += prob * dout_vec[d];
        }
      }
      Real* dq_vec = dq + (p * query_heads + n) * head_dim;
      for (int64_t d = 0; d < head_dim; ++d)
        dq_vec[d] = static_cast<Real>(dq_sum[static_cast<size_t>(d)]);
    }
  }
  for (size_t i = 0; i < kv_size; ++i) {
    dk[i] += static_cast<Real>(dk_sum[i]);
    dv[i] += static_cast<Real>(dv_sum[i]);
  }
}

void CausalAttentionForward(const float* q, const float* k, const float* v, int64_t tokens,
                            int64_t query_heads, int64_t kv_heads, int64_t head_dim, int64_t window,
                            float* out, float* lse) {
  const ForwardArgs args{
      MakeAttentionDims(tokens, query_heads, kv_heads, head_dim, window), q, k, v, out, lse};
  const AttentionDims& dims = args.dims;
  const int64_t items = dims.tiles() * kv_heads;
  const bool avx2 = UseAvx2();
#pragma omp parallel if (items > 1)
  {
    AttentionScratch scratch(dims);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t tile = item / kv_heads, g = item % kv_heads;
      const int64_t p_begin = dims.tile_begin(tile), p_end = dims.tile_end(tile);
      if (avx2) {
        ForwardTileAvx2(args, p_begin, p_end, g, scratch);
      } else {
        ForwardTilePortable(args, p_begin, p_end, g, scratch);
      }
    }
  }
}

void CausalAttentionBackward(const float* q, const float* k, const float* v, const float* out,
                             const float* lse, const float* dout, int64_t tokens,
                             int64_t query_heads, int64_t kv_heads, int64_t head_dim,
                             int64_t window, float* dq, float* dk, float* dv) {
  const BackwardArgs args{MakeAttentionDims(tokens, query_heads, kv_heads, head_dim, window),
                          q,
                          k,
                          v,
                          out,
                          lse,
                          dout,
                          dq};
  const AttentionDims& dims = args.dims;
  if (tokens == 0) return;
  // Items are (KV head, slice of query tiles). Different KV heads write disjoint dK, dV rows;
  // when there are fewer KV heads than threads each head's tiles are split into slices, whose
  // key ranges overlap, so each slice sums into a private buffer added in afterwards.
  const int64_t slice_count =
      std::clamp<int64_t>((AvailableThreads() + kv_heads - 1) / kv_heads, 1, dims.tiles());
  const std::vector<QuerySlice> slices = SliceQueryTiles(dims, slice_count);
  int64_t buffer_rows = 0;  // per KV head: the key rows of all its slices
  if (slice_count > 1) {
    for (const QuerySlice& slice : slices) buffer_rows += slice.key_end - slice.key_begin;
  }
  const int64_t floats_per_head = buffer_rows * 2 * head_dim;
  std::vector<float> buffers(static_cast<size_t>(kv_heads * floats_per_head), 0.0f);
  const int64_t items = kv_heads * slice_count;
  const bool avx2 = UseAvx2();
#pragma omp parallel if (items > 1)
  {
    AttentionScratch scratch(dims);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t g = item / slice_count;
      const QuerySlice& slice = slices[static_cast<size_t>(item % slice_count)];
      KvGradientTarget target{dk + g * head_dim, dv + g * head_dim, 0, kv_heads * head_dim};
      if (slice_count > 1) {
        float* buffer = buffers.data() + g * floats_per_head + slice.buffer_offset;
        const int64_t key_rows = slice.key_end - slice.key_begin;
        target = {buffer, buffer + key_rows * head_dim, slice.key_begin, head_dim};
      }
      for (int64_t tile = slice.tile_begin; tile < slice.tile_end; ++tile) {
        const int64_t p_begin = dims.tile_begin(tile), p_end = dims.tile_end(tile);
        if (avx2) {
          BackwardTileAvx2(args, p_begin, p_end, g, scratch, target);
        } else {
          BackwardTilePortable(args, p_begin, p_end, g, scratch, target);
        }
      }
    }
  }
  if (slice_count == 1) return;
    // dk[j, g] += the slices' rows for key j, in slice order (deterministic for a thread count).
#pragma omp parallel for schedule(static) if (tokens * kv_heads * head_dim >= kParallelMinElements)
  for (int64_t j = 0; j < tokens; ++j) {
    for (int64_t g = 0; g < kv_heads; ++g) {
      float* dk_row = dk + (j * kv_heads + g) * head_dim;
      float* dv_row = dv + (j * kv_heads + g) * head_dim;
      for (const QuerySlice& slice : slices) {
        if (j < slice.key_begin || j >= slice.key_end) continue;
        const float* buffer = buffers.data() + g * floats_per_head + slice.buffer_offset;
        const int64_t key_rows = slice.key_end - slice.key_begin;
        const float* dk_part = buffer + (j - slice.key_begin) * head_dim;
        const float* dv_part = buffer + (key_rows + j - slice.key_begin) * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) {
          dk_row[d] += dk_part[d];
          dv_row[d] += dv_part[d];
        }
      }
    }
  }
}

// ---- Instantiations: float for the trainer, double for the gradient checks ----

#define MIXATTN_INSTANTIATE_BACKWARD(Real)                                                         \
  template void MatMulTransposedBackwardScalar<Real>(const Real*, const Real*, const Real*,        \
                                                     int64_t, int64_t, int64_t, Real*, Real*);     \
  template void RmsNormBackward<Real>(const Real*, const Real*, const Real*, int64_t, int64_t,     \
                                      double, Real*, Real*);                                       \
  template void RopeBackward<Real>(Real*, int64_t, int64_t, int64_t, int64_t, double);             \
  template void SwiGluBackwardScalar<Real>(const Real*, const Real*, const Real*, int64_t, Real*,  \
                                           Real*);                                                 \
  template void EmbeddingBackward<Real>(const int32_t*, int64_t, const Real*, int64_t, int64_t,    \
                                        Real*);                                                    \
  template double CrossEntropyForwardBackwardScalar<Real>(const Real*, const int32_t*, int64_t,    \
                                                          int64_t, Real*);                         \
  template void CausalAttentionForwardScalar<Real>(const Real*, const Real*, const Real*, int64_t, \
                                                   int64_t, int64_t, int64_t, int64_t, Real*,      \
                                                   Real*);                                         \
  template void CausalAttentionBackwardScalar<Real>(const Real*, const Real*, const Real*,         \
                                                    const Real*, int64_t, int64_t, int64_t,        \
                                                    int64_t, int64_t, Real*, Real*, Real*);

MIXATTN_INSTANTIATE_BACKWARD(float)
MIXATTN_INSTANTIATE_BACKWARD(double)

}  // namespace mixattn::ops
