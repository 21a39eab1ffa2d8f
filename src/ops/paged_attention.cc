// Attention over the paged KV cache: the scalar reference and the fast kernel.
//
// Legend: NH = query heads, KVH = KV heads, G = NH / KVH, D = head dim, B = block tokens,
// Q = a job's query_len, L = vector lanes (16 AVX-512, 8 AVX2, 4 portable), R = rows of a work
// item (its queries times G), Dp = D rounded up to a multiple of L.
//
// The fast kernel. One work item is (job, KV head, tile of up to kQueryTile queries); its R rows
// are every query head of the KV head's group for every query of the tile, so each K/V vector
// read from the pool serves all R rows. Keys are walked in chunks of L consecutive positions over
// [first key any row of the tile sees, last query + 1): blocks wholly outside every window are
// never touched. Keys are grouped in spans of S = 4 L positions (4 chunks of L). Per span:
//   1. per chunk, its K rows of this head are widened to f32 into an L1-resident scratch tile
//      [L, Dp] (bf16 -> f32 is a 16-bit shift; f32 rows with D % L == 0 are read in place), and
//      for every row L dot products s_i = q.k_i / sqrt(D) run in L vector accumulators, summed
//      across lanes by a transpose-and-add tree into one vector of L scores (no per-key
//      horizontal sum);
//   2. per row, keys outside its mask get -inf, then one online softmax update for the whole
//      span (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax";
//      FlashAttention, Dao et al. 2022, Alg. 1): with running max m, denominator l and numerator
//      o[D],   m' = max(m, max_i s_i),  a = e^(m - m'),
//              l' = a l + sum_i e^(s_i - m'),  o' = a o + sum_i e^(s_i - m') v_i;
//   3. the o update runs for the G rows of a query together, so each V vector loaded serves G
//      rows through G independent multiply-add chains. V rows are widened once per span into
//      scratch, except in a decode tile (one query), which reads bf16 V straight from the pool.
// After the last span, out = o / l.
// Bandwidth arithmetic (decode, G = 4, D = 64, bf16): per key and KV head the kernel reads
// 2 * 64 * 2 = 256 bytes and does 2 * G * D = 512 multiply-adds, i.e. 2 multiply-adds per byte:
// at 40 GB/s per core that is 80 G multiply-adds/s, a third of one Zen 5 core's f32 FMA peak, so
// decode stays bandwidth-bound as long as the per-key overhead (conversion, score tree, softmax)
// stays small. That is why each K/V load serves the whole query group and no score is reduced
// on its own.
#ifndef MIXATTN_PAGED_ATTENTION_KERNEL_PASS
// ================================================================================================
// Main pass: everything but the kernel, which is at the bottom of this file and is included once
// per instruction set (see "Kernel instances" below).

#include "ops/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__)
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 intrinsics fill "undefined" operands with self-initialised variables, which
// -Wmaybe-uninitialized (or -Wuninitialized) flags once inlined (GCC PR 105593, fixed in GCC 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif
#define MIXATTN_PAGED_ATTENTION_X86 1
#endif

#include "core/dtype.h"
#include "core/error.h"

namespace mixattn::ops {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// First key position a query at `position` sees.
int64_t FirstVisibleKey(int64_t position, int64_t window) {
  return window > 0 ? std::max<int64_t>(0, position - window + 1) : 0;
}

// The preconditions of one job; a failure is a bug in the caller (the engine), not user input.
void CheckJob(const AttentionJob& job, int64_t query_heads) {
  const PagedKvView& kv = job.kv;
  MIXATTN_CHECK(job.query_len >= 0 && job.q_start >= 0 && job.window >= 0);
  if (job.query_len == 0) return;
  MIXATTN_CHECK(job.q != nullptr && job.out != nullptr);
  MIXATTN_CHECK(kv.pool_base != nullptr && kv.block_ids != nullptr);
  MIXATTN_CHECK(kv.block_tokens > 0 && kv.kv_heads > 0 && kv.head_dim > 0);
  MIXATTN_CHECK(query_heads > 0 && query_heads % kv.kv_heads == 0);
  MIXATTN_CHECK(kv.block_bytes ==
                2 * kv.block_tokens * kv.kv_heads * kv.head_dim * DTypeSize(kv.dtype));
  MIXATTN_CHECK(kv.num_tokens >= job.q_start + job.query_len);
  // Every block from the first one any query needs to the last query's must be listed.
  MIXATTN_CHECK(FirstVisibleKey(job.q_start, job.window) / kv.block_tokens >= kv.first_block);
  MIXATTN_CHECK((job.q_start + job.query_len - 1) / kv.block_tokens <
                kv.first_block + kv.num_blocks);
}

// ------------------------------------------------------------------------------------------------
// Scalar reference.

// Element e of a K or V vector stored as `dtype`.
double LoadElement(const std::byte* vec, int64_t e, DType dtype) {
  if (dtype == DType::kF32) {
    float x;
    std::memcpy(&x, vec + 4 * e, 4);
    return x;
  }
  uint16_t x;
  std::memcpy(&x, vec + 2 * e, 2);
  return Bf16ToF32(x);
}

}  // namespace

void PagedAttentionScalar(std::span<const AttentionJob> jobs, int64_t query_heads) {
  for (const AttentionJob& job : jobs) CheckJob(job, query_heads);
  std::vector<double> scores;
  std::vector<double> accum;
  for (const AttentionJob& job : jobs) {
    if (job.query_len == 0) continue;
    const PagedKvView& kv = job.kv;
    const int64_t dim = kv.head_dim;
    const int64_t group = query_heads / kv.kv_heads;
    const int64_t elem = DTypeSize(kv.dtype);
    const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
    accum.resize(static_cast<size_t>(dim));
    for (int64_t t = 0; t < job.query_len; ++t) {
      const int64_t p = job.q_start + t;
      const int64_t first_key = FirstVisibleKey(p, job.window);
      scores.resize(static_cast<size_t>(p - first_key + 1));
      for (int64_t n = 0; n < query_heads; ++n) {
        const int64_t head_offset = (n / group) * dim * elem;  // KV head n / G
        const float* q_vec = job.q + (t * query_heads + n) * dim;
        double max_score = -INFINITY;
        for (int64_t j = first_key; j <= p; ++j) {
          const std::byte* k_vec = kv.key(j) + head_offset;
          double dot = 0;
          for (int64_t d = 0; d < dim; ++d)
            dot += double{q_vec[d]} * LoadElement(k_vec, d, kv.dtype);
          scores[static_cast<size_t>(j - first_key)] = dot * scale;
          max_score = std::max(max_score, dot * scale);
        }
        double normaliser = 0;
        std::fill(accum.begin(), accum.end(), 0.0);
        for (int64_t j = first_key; j <= p; ++j) {
          const double weight = std::exp(scores[static_cast<size_t>(j - first_key)] - max_score);
          normaliser += weight;
          const std::byte* v_vec = kv.value(j) + head_offset;
          for (int64_t d = 0; d < dim; ++d)
            accum[static_cast<size_t>(d)] += weight * LoadElement(v_vec, d, kv.dtype);
        }
        float* out_vec = job.out + (t * query_heads + n) * dim;
        for (int64_t d = 0; d < dim; ++d)
          out_vec[d] = static_cast<float>(accum[static_cast<size_t>(d)] / normaliser);
      }
    }
  }
}

namespace {

// ------------------------------------------------------------------------------------------------
// Shared by every kernel instance (no vector types here).

constexpr int64_t kQueryTile = 16;  // queries per work item: R = 16 G rows share each K/V chunk
constexpr int64_t kMaxLanes = 16;
// Chunks of L keys per span S = 4 L: the online softmax rescales once per span, and each value
// vector is widened once per span for all R rows.
constexpr int kSpanChunks = 4;
// Keys prefetched ahead of the one being loaded: 32 keys of D = 64 bf16 K and V are 16 KiB in
// flight, about what one core needs to stream at 40 GB/s with ~100 ns DRAM latency (Little's law:
// 40 GB/s * 100 ns = 4 KB, times a margin for the block jumps the hardware prefetcher misses).
constexpr int64_t kPrefetchKeys = 32;

// Walks key positions in order and gives the address of each one's K vector for one KV head,
// with no division and no block lookup per key inside a block. Pool layout (paged_kv.h): block id
// b holds K [B, KVH, D] then V [B, KVH, D]; position p is logical block p / B, slot p % B. The
// next block's id is looked up only when a key in it is asked for, so walking up to the end of
// the listed blocks never reads past them.
class KeyCursor {
 public:
  KeyCursor(const PagedKvView& kv, int64_t kv_head, int64_t position)
      : kv_(kv),
        token_bytes_(kv.kv_heads * kv.head_dim * DTypeSize(kv.dtype)),
        head_offset_(kv_head * kv.head_dim * DTypeSize(kv.dtype)),
        block_(position / kv.block_tokens),
        slot_(position % kv.block_tokens) {}

  const std::byte* key() {
    if (address_ == nullptr) {
      const int64_t id = kv_.block_ids[block_ - kv_.first_block];
      address_ = kv_.pool_base + id * kv_.block_bytes + slot_ * token_bytes_ + head_offset_;
    }
    return address_;
  }
  void Next() {
    if (++slot_ == kv_.block_tokens) {
      slot_ = 0;
      ++block_;
      address_ = nullptr;
    } else if (address_ != nullptr) {
      address_ += token_bytes_;
    }
  }

 private:
  const PagedKvView& kv_;
  int64_t token_bytes_;                 // one position's [KVH, D]
  int64_t head_offset_;                 // KV head kv_head within it
  int64_t block_;                       // logical block of the current position
  int64_t slot_;                        // its slot in the block
  const std::byte* address_ = nullptr;  // of the current K vector, once computed
};

// Prefetches the cache lines of one position's K and V vectors of one head.
void PrefetchKeyValue(const std::byte* key, int64_t value_offset, int64_t row_bytes) {
  for (int64_t offset = 0; offset < row_bytes; offset += 64) {
    __builtin_prefetch(key + offset);
    __builtin_prefetch(key + value_offset + offset);
  }
}

// Walks key positions [begin, end) of one KV head in order, giving each one's K address (its V
// is value_offset() further) and prefetching the K and V lines kPrefetchKeys positions ahead:
// blocks sit at scattered pool addresses, so the hardware prefetcher stalls at every block
// boundary. Only positions < end are prefetched (nothing else is listed).
class PrefetchingKeyWalk {
 public:
  PrefetchingKeyWalk(const PagedKvView& kv, int64_t kv_head, int64_t begin, int64_t end)
      : next_(kv, kv_head, begin),
        ahead_(kv, kv_head, begin),
        ahead_position_(begin),
        end_(end),
        row_bytes_(kv.head_dim * DTypeSize(kv.dtype)),
        value_offset_(kv.block_tokens * kv.kv_heads * row_bytes_) {
    for (int64_t i = 0; i < kPrefetchKeys; ++i) PrefetchOne();
  }
  int64_t value_offset() const { return value_offset_; }
  // The next position's K address; the caller never asks for more than end - begin of them.
  const std::byte* Next() {
    PrefetchOne();
    const std::byte* key = next_.key();
    next_.Next();
    return key;
  }

 private:
  void PrefetchOne() {
    if (ahead_position_ >= end_) return;
    PrefetchKeyValue(ahead_.key(), value_offset_, row_bytes_);
    ahead_.Next();
    ++ahead_position_;
  }
  KeyCursor next_, ahead_;
  int64_t ahead_position_, end_;
  int64_t row_bytes_, value_offset_;
};

int64_t RoundUp(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// Offsets (in floats, each 64-byte aligned relative to the base) of one work item's scratch.
struct TileScratch {
  int64_t q_rows;    // [R, Dp] queries scaled by 1/sqrt(D), zero-padded to Dp
  int64_t o_rows;    // [R, Dp] running numerators o
  int64_t row_max;   // [R] running maxima m
  int64_t row_sum;   // [R, L] running denominators l, kept per lane until the end
  int64_t k_chunk;   // [L, Dp] the current chunk's keys as f32
  int64_t v_span;    // [S, Dp] the span's values as f32
  int64_t zero_row;  // [Dp] zeros: stands in for the keys past the end of a short span
  int64_t scores;    // [R, S] the span's scores s_i, then e^(s_i - m') in place
  int64_t alphas;    // [G] e^(m - m') of the current query's rows
  int64_t total;
};

TileScratch LayoutTileScratch(int64_t rows, int64_t padded_dim, int64_t lanes) {
  const int64_t span = kSpanChunks * lanes;
  TileScratch s;
  int64_t at = 0;
  auto take = [&at](int64_t floats) {
    const int64_t offset = at;
    at += RoundUp(floats, 16);
    return offset;
  };
  s.q_rows = take(rows * padded_dim);
  s.o_rows = take(rows * padded_dim);
  s.row_max = take(rows);
  s.row_sum = take(rows * lanes);
  s.k_chunk = take(lanes * padded_dim);
  s.v_span = take(span * padded_dim);
  s.zero_row = take(padded_dim);
  s.scores = take(rows * span);
  s.alphas = take(rows);  // rows >= G
  s.total = at;
  return s;
}

// ------------------------------------------------------------------------------------------------
// Kernel instances. Each instruction set is a namespace holding `Isa` (a vector V of kLanes f32
// and a few operations on it) and the kernel, written once at the bottom of this file against
// `Isa` and included here. Both are compiled inside a target region for that ISA, the way
// Highway's foreach_target (and so gemma.cpp) does it: GCC and clang then inline the intrinsics,
// and neither passes a vector to code compiled without the ISA. PagedAttention picks one at run
// time; nothing here runs on a CPU that lacks its ISA.

#define MIXATTN_PAGED_ATTENTION_KERNEL_PASS

namespace portable {
struct Isa {
  static constexpr int kLanes = 4;
  struct V {
    float lane[kLanes];
  };

  static V Set1(float x) {
    V v;
    for (float& lane : v.lane) lane = x;
    return v;
  }
  static V Zero() { return Set1(0.0f); }
  static V Load(const float* p) {
    V v;
    std::memcpy(v.lane, p, sizeof v.lane);
    return v;
  }
  static void Store(float* p, V v) { std::memcpy(p, v.lane, sizeof v.lane); }
  template <typename Op>
  static V Map(V a, V b, Op op) {
    for (int i = 0; i < kLanes; ++i) a.lane[i] = op(a.lane[i], b.lane[i]);
    return a;
  }
  static V Add(V a, V b) {
    return Map(a, b, [](float x, float y) { return x + y; });
  }
  static V Sub(V a, V b) {
    return Map(a, b, [](float x, float y) { return x - y; });
  }
  static V Mul(V a, V b) {
    return Map(a, b, [](float x, float y) { return x * y; });
  }
  static V Max(V a, V b) {
    return Map(a, b, [](float x, float y) { return std::max(x, y); });
  }
  static V MulAdd(V a, V b, V c) { return Add(Mul(a, b), c); }  // a * b + c
  static V Round(V a) {                                         // to the nearest integer
    for (float& lane : a.lane) lane = std::nearbyint(lane);
    return a;
  }
  static V Pow2(V n) {  // 2^n for integral n in [-126, 127]: the biased exponent, shifted in
    for (float& lane : n.lane) {
      const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(lane) + 127) << 23;
      std::memcpy(&lane, &bits, 4);
    }
    return n;
  }
  static float ReduceMax(V a) { return *std::max_element(a.lane, a.lane + kLanes); }
  static float ReduceSum(V a) {
    float sum = 0;
    for (float lane : a.lane) sum += lane;
    return sum;
  }
  // Lane i of the result = sum of the lanes of acc[i].
  static V SumLanesOf(const V (&acc)[kLanes]) {
    V out;
    for (int i = 0; i < kLanes; ++i) out.lane[i] = ReduceSum(acc[i]);
    return out;
  }
  // Lanes outside [first, last) become `fill`.
  static V KeepLanes(V x, int64_t first, int64_t last, float fill) {
    for (int i = 0; i < kLanes; ++i)
      if (i < first || i >= last) x.lane[i] = fill;
    return x;
  }
  static V LoadBf16(const uint16_t* p) {  // kLanes bf16 widened to f32
    V v;
    for (int i = 0; i < kLanes; ++i) v.lane[i] = Bf16ToF32(p[i]);
    return v;
  }
};

#include "ops/paged_attention.cc"  // NOLINT(build/include): the kernel, for this Isa
}  // namespace portable

#ifdef MIXATTN_PAGED_ATTENTION_X86

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
namespace avx2 {
struct Isa {
  static constexpr int kLanes = 8;
  using V = __m256;

  static V Set1(float x) { return _mm256_set1_ps(x); }
  static V Zero() { return _mm256_setzero_ps(); }
  static V Load(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V Add(V a, V b) { return _mm256_add_ps(a, b); }
  static V Sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V Max(V a, V b) { return _mm256_max_ps(a, b); }
  static V MulAdd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V Round(V a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V Pow2(V n) {
    const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23));
  }
  static float ReduceMax(V a) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    x = _mm_max_ps(x, _mm_permute_ps(x, 0x4e));  // swap 64-bit halves
    x = _mm_max_ps(x, _mm_permute_ps(x, 0xb1));  // swap neighbours
    return _mm_cvtss_f32(x);
  }
  // Transpose-and-add: hadd pairs twice (each 128-bit half now holds 4 partial sums of 4
  // accumulators), then add the two halves: [s0..s3 | s4..s7].
  static V SumLanesOf(const V (&acc)[kLanes]) {
    const __m256 t0 = _mm256_hadd_ps(acc[0], acc[1]);
    const __m256 t1 = _mm256_hadd_ps(acc[2], acc[3]);
    const __m256 t2 = _mm256_hadd_ps(acc[4], acc[5]);
    const __m256 t3 = _mm256_hadd_ps(acc[6], acc[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1);  // halves: partial s0..s3
    const __m256 u1 = _mm256_hadd_ps(t2, t3);  // halves: partial s4..s7
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                         _mm256_permute2f128_ps(u0, u1, 0x31));
  }
  static V KeepLanes(V x, int64_t first, int64_t last, float fill) {
    const __m256 lane = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 keep =
        _mm256_and_ps(_mm256_cmp_ps(lane, _mm256_set1_ps(static_cast<float>(first)), _CMP_GE_OQ),
                      _mm256_cmp_ps(lane, _mm256_set1_ps(static_cast<float>(last)), _CMP_LT_OQ));
    return _mm256_blendv_ps(_mm256_set1_ps(fill), x, keep);
  }
  static V LoadBf16(const uint16_t* p) {  // bf16 is the top half of an f32
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
  }
};

#include "ops/paged_attention.cc"  // NOLINT(build/include): the kernel, for this Isa
}  // namespace avx2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,fma")
#endif
namespace avx512 {
// AVX-512F only (no avx512_bf16 needed): bf16 -> f32 is a shift, and the dot products stay f32
// because _mm512_dpbf16_ps would need q rounded to bf16, an error of ~2^-9 in every score.
struct Isa {
  static constexpr int kLanes = 16;
  using V = __m512;

  static V Set1(float x) { return _mm512_set1_ps(x); }
  static V Zero() { return _mm512_setzero_ps(); }
  static V Load(const float* p) { return _mm512_loadu_ps(p); }
  static void Store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V Add(V a, V b) { return _mm512_add_ps(a, b); }
  static V Sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V Max(V a, V b) { return _mm512_max_ps(a, b); }
  static V MulAdd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V Round(V a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static V Pow2(V n) {
    const __m512i biased = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(biased, 23));
  }
  // _mm512_shuffle_f32x4(a, b, imm) picks 128-bit quarters: [a.q(imm[1:0]), a.q(imm[3:2]),
  // b.q(imm[5:4]), b.q(imm[7:6])]; _mm512_shuffle_ps does the same with f32 lanes inside each
  // quarter. (GCC 12's _mm512_reduce_* warn about uninitialized temporaries, hence by hand.)
  static float ReduceMax(V a) {
    V x = _mm512_max_ps(a, _mm512_shuffle_f32x4(a, a, 0x4e));  // quarters 2 3 0 1
    x = _mm512_max_ps(x, _mm512_shuffle_f32x4(x, x, 0xb1));    // quarters 1 0 3 2
    x = _mm512_max_ps(x, _mm512_permute_ps(x, 0x4e));          // lanes 2 3 0 1 in each quarter
    x = _mm512_max_ps(x, _mm512_permute_ps(x, 0xb1));          // lanes 1 0 3 2 in each quarter
    return _mm512_cvtss_f32(x);
  }
  // Pairwise add inside each quarter: [x0+x1, x2+x3, y0+y1, y2+y3] (AVX's hadd, per quarter).
  static V HorizontalAdd(V x, V y) {
    return _mm512_add_ps(_mm512_shuffle_ps(x, y, 0x88), _mm512_shuffle_ps(x, y, 0xdd));
  }
  // Transpose-and-add tree, 46 shuffles and adds for 16 sums (16 separate reductions take ~130):
  //   b_i = [a_i.q0 + a_i.q2, a_i.q1 + a_i.q3, a_{i+8}.q0 + a_{i+8}.q2, a_{i+8}.q1 + a_{i+8}.q3]
  //   u0 = hadd(hadd(b0, b1), hadd(b2, b3)): quarter k holds the sums of quarter k of b0..b3,
  //   so u0.q0 + u0.q1 = s0..s3 and u0.q2 + u0.q3 = s8..s11; u1 likewise for s4..s7, s12..s15.
  static V SumLanesOf(const V (&acc)[kLanes]) {
    V b[8];
    // Unrolled, or GCC keeps b[] (and acc[] with it) on the stack: a store and reload per vector.
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      b[i] =
          _mm512_add_ps(_mm512_shuffle_f32x4(acc[i], acc[i + 8], 0x44),   // a.q0 a.q1 a'.q0 a'.q1
                        _mm512_shuffle_f32x4(acc[i], acc[i + 8], 0xee));  // a.q2 a.q3 a'.q2 a'.q3
    }
    const V u0 = HorizontalAdd(HorizontalAdd(b[0], b[1]), HorizontalAdd(b[2], b[3]));
    const V u1 = HorizontalAdd(HorizontalAdd(b[4], b[5]), HorizontalAdd(b[6], b[7]));
    const V sums = _mm512_add_ps(_mm512_shuffle_f32x4(u0, u1, 0x88),   // u0.q0 u0.q2 u1.q0 u1.q2
                                 _mm512_shuffle_f32x4(u0, u1, 0xdd));  // u0.q1 u0.q3 u1.q1 u1.q3
    return _mm512_shuffle_f32x4(sums, sums, 0xd8);  // [s0..3, s8..11, s4..7, s12..15] -> in order
  }
  static V KeepLanes(V x, int64_t first, int64_t last, float fill) {
    const uint32_t below_last = (1u << last) - 1;  // last <= 16
    const auto keep = static_cast<__mmask16>(below_last & (0xffffu << first));
    return _mm512_mask_mov_ps(_mm512_set1_ps(fill), keep, x);
  }
  static V LoadBf16(const uint16_t* p) {  // bf16 is the top half of an f32
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  }
};

#include "ops/paged_attention.cc"  // NOLINT(build/include): the kernel, for this Isa
}  // namespace avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // MIXATTN_PAGED_ATTENTION_X86

#undef MIXATTN_PAGED_ATTENTION_KERNEL_PASS

// ------------------------------------------------------------------------------------------------
// Dispatch.

using TileKernel = void (*)(const AttentionJob& job, int64_t query_heads, int64_t kv_head,
                            int64_t t_begin, int64_t t_end, float* scratch);

TileKernel KernelFor(AttentionIsa isa) {
  switch (isa) {
#ifdef MIXATTN_PAGED_ATTENTION_X86
    case AttentionIsa::kAvx512:
      return avx512::AttendTile;
    case AttentionIsa::kAvx2:
      return avx2::AttendTile;
#endif
    default:
      return portable::AttendTile;
  }
}

}  // namespace

const char* AttentionIsaName(AttentionIsa isa) {
  switch (isa) {
    case AttentionIsa::kAvx512:
      return "avx512";
    case AttentionIsa::kAvx2:
      return "avx2";
    case AttentionIsa::kPortable:
      return "portable";
  }
  return "unknown";
}

bool AttentionIsaSupported(AttentionIsa isa) {
  switch (isa) {
    case AttentionIsa::kPortable:
      return true;
#ifdef MIXATTN_PAGED_ATTENTION_X86
    case AttentionIsa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case AttentionIsa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
#endif
    default:
      return false;
  }
}

AttentionIsa BestAttentionIsa() {
  static const AttentionIsa best = [] {
    for (AttentionIsa isa : {AttentionIsa::kAvx512, AttentionIsa::kAvx2})
      if (AttentionIsaSupported(isa)) return isa;
    return AttentionIsa::kPortable;
  }();
  return best;
}

void PagedAttention(std::span<const AttentionJob> jobs, int64_t query_heads) {
  PagedAttention(jobs, query_heads, BestAttentionIsa());
}

void PagedAttention(std::span<const AttentionJob> jobs, int64_t query_heads, AttentionIsa isa) {
  MIXATTN_CHECK(AttentionIsaSupported(isa));
  const TileKernel kernel = KernelFor(isa);

  // Work items (job, KV head, query tile), numbered job after job; the scratch fits the largest.
  std::vector<int64_t> first_item(jobs.size() + 1, 0);  // [jobs + 1]
  int64_t scratch_floats = 0;
  for (size_t j = 0; j < jobs.size(); ++j) {
    const AttentionJob& job = jobs[j];
    CheckJob(job, query_heads);
    const int64_t tiles = (job.query_len + kQueryTile - 1) / kQueryTile;
    first_item[j + 1] = first_item[j] + (job.query_len > 0 ? tiles * job.kv.kv_heads : 0);
    if (job.query_len == 0) continue;
    const int64_t rows = std::min(job.query_len, kQueryTile) * (query_heads / job.kv.kv_heads);
    const int64_t floats =
        LayoutTileScratch(rows, RoundUp(job.kv.head_dim, kMaxLanes), kMaxLanes).total;
    scratch_floats = std::max(scratch_floats, floats);
  }
  const int64_t items = first_item.back();

#pragma omp parallel if (items > 1)
  {
    // Grows to the largest tile seen, then is reused by every later call on this thread.
    thread_local std::vector<float> scratch;
    if (static_cast<int64_t>(scratch.size()) < scratch_floats)
      scratch.resize(static_cast<size_t>(scratch_floats));
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const size_t j = static_cast<size_t>(
          std::upper_bound(first_item.begin(), first_item.end(), item) - first_item.begin() - 1);
      const AttentionJob& job = jobs[j];
      const int64_t tiles = (job.query_len + kQueryTile - 1) / kQueryTile;
      const int64_t index = item - first_item[j];
      const int64_t tile = index % tiles;
      const int64_t t_begin = tile * kQueryTile;
      kernel(job, query_heads, index / tiles, t_begin,
             std::min(job.query_len, t_begin + kQueryTile), scratch.data());
    }
  }
}

}  // namespace mixattn::ops

#else  // MIXATTN_PAGED_ATTENTION_KERNEL_PASS
// ================================================================================================
// Kernel pass: included inside namespace mixattn::ops::{anonymous}::<isa>, after that namespace's
// `struct Isa`, and inside its target region. Includes nothing and opens no namespace.

constexpr int kSpanKeys = kSpanChunks * Isa::kLanes;  // S

// out[D] = bf16 row in[D] widened to f32.
void WidenBf16Row(const uint16_t* in, float* out, int64_t dim) {
  int64_t d = 0;
#pragma GCC unroll 4
  for (; d + Isa::kLanes <= dim; d += Isa::kLanes) Isa::Store(out + d, Isa::LoadBf16(in + d));
  for (; d < dim; ++d) out[d] = Bf16ToF32(in[d]);
}

// k_out[D], v_out[D] = bf16 rows k[D], v[D] widened to f32 (one loop for both halves the loop
// overhead, which is what the conversion costs next to its one load, shift and store).
void WidenBf16Rows(const uint16_t* k, const uint16_t* v, float* k_out, float* v_out, int64_t dim) {
  int64_t d = 0;
#pragma GCC unroll 2
  for (; d + Isa::kLanes <= dim; d += Isa::kLanes) {
    Isa::Store(k_out + d, Isa::LoadBf16(k + d));
    Isa::Store(v_out + d, Isa::LoadBf16(v + d));
  }
  for (; d < dim; ++d) {
    k_out[d] = Bf16ToF32(k[d]);
    v_out[d] = Bf16ToF32(v[d]);
  }
}

// e^x for x <= 0, after Cephes expf: x = n ln2 + r with |r| <= ln2 / 2, e^r by its degree-6
// minimax polynomial, 2^n by building the exponent. Relative error ~1e-7. x is clamped at -87
// (e^-87 ~ 1.6e-38, and 2^n stays a normal number).
Isa::V ExpNonPositive(Isa::V x_in) {
  const auto x = Isa::Max(x_in, Isa::Set1(-87.0f));
  const auto n = Isa::Round(Isa::Mul(x, Isa::Set1(1.44269504088896341f)));  // x / ln2
  auto r = Isa::MulAdd(n, Isa::Set1(-0.693359375f), x);  // ln2 in two parts: exact n * hi
  r = Isa::MulAdd(n, Isa::Set1(2.12194440e-4f), r);
  auto p = Isa::Set1(1.9875691500e-4f);
  p = Isa::MulAdd(p, r, Isa::Set1(1.3981999507e-3f));
  p = Isa::MulAdd(p, r, Isa::Set1(8.3334519073e-3f));
  p = Isa::MulAdd(p, r, Isa::Set1(4.1665795894e-2f));
  p = Isa::MulAdd(p, r, Isa::Set1(1.6666665459e-1f));
  p = Isa::MulAdd(p, r, Isa::Set1(5.0000001201e-1f));
  p = Isa::MulAdd(p, Isa::Mul(r, r), Isa::Add(r, Isa::Set1(1.0f)));  // 1 + r + r^2 P(r)
  return Isa::Mul(p, Isa::Pow2(n));
}

// The online softmax update of one row for one span (see the top of the file): scores s[S] of
// which lanes [first[c], last[c]) of chunk c are visible; the running max m and the per-lane
// denominators l[L] are updated, s is overwritten with p_i = e^(s_i - m') (0 where not visible),
// and a = e^(m - m') is returned.
float SoftmaxSpanUpdate(float* s, const int64_t (&first)[kSpanChunks],
                        const int64_t (&last)[kSpanChunks], float& m, float* l) {
  using V = Isa::V;
  constexpr int kLanes = Isa::kLanes;
  V chunk_scores[kSpanChunks];
  V max = Isa::Set1(-kInf);
#pragma GCC unroll 4
  for (int c = 0; c < kSpanChunks; ++c) {
    chunk_scores[c] = Isa::KeepLanes(Isa::Load(s + c * kLanes), first[c], last[c], -kInf);
    max = Isa::Max(max, chunk_scores[c]);
  }
  const float m_old = m;
  const float m_new = std::max(m_old, Isa::ReduceMax(max));
  const float alpha = m_new == m_old ? 1.0f : std::exp(m_old - m_new);  // 0 at first
  m = m_new;
  V p_sum = Isa::Zero();
#pragma GCC unroll 4
  for (int c = 0; c < kSpanChunks; ++c) {
    V p = Isa::Zero();
    if (first[c] < last[c]) {
      p = Isa::KeepLanes(ExpNonPositive(Isa::Sub(chunk_scores[c], Isa::Set1(m_new))), first[c],
                         last[c], 0.0f);
    }
    Isa::Store(s + c * kLanes, p);
    p_sum = Isa::Add(p_sum, p);
  }
  Isa::Store(l, Isa::MulAdd(Isa::Load(l), Isa::Set1(alpha), p_sum));
  return alpha;
}

// Scores of one row q[Dp] against the chunk's L keys k[L, Dp] (f32, rows Dp apart): one
// accumulator per key, summed across lanes by the transpose-and-add tree. With kDimVectors =
// Dp / L fixed at compile time (0: Dp read from padded_dim) every key's address is the chunk's
// base plus a constant and the accumulators stay in registers; a table of per-key pointers
// instead costs a register move per key and spills the accumulators (perf annotate, Zen 4).
template <int kDimVectors>
Isa::V ChunkScores(const float* q, const float* k, int64_t padded_dim) {
  const int64_t stride = kDimVectors > 0 ? kDimVectors * Isa::kLanes : padded_dim;
  Isa::V acc[Isa::kLanes];
#pragma GCC unroll 16
  for (Isa::V& a : acc) a = Isa::Zero();
#pragma GCC unroll 8
  for (int64_t d = 0; d < stride; d += Isa::kLanes) {
    const Isa::V q_part = Isa::Load(q + d);
#pragma GCC unroll 16
    for (int i = 0; i < Isa::kLanes; ++i)
      acc[i] = Isa::MulAdd(q_part, Isa::Load(k + i * stride + d), acc[i]);
  }
  return Isa::SumLanesOf(acc);
}

using ChunkScoresFn = Isa::V (*)(const float*, const float*, int64_t);

// ChunkScores for this padded_dim: D = 64 and 128 get their own instance.
ChunkScoresFn ChunkScoresFor(int64_t padded_dim) {
  switch (padded_dim / Isa::kLanes) {
    case 4:
      return ChunkScores<4>;
    case 8:
      return ChunkScores<8>;
    case 16:
      return ChunkScores<16>;
    default:
      return ChunkScores<0>;
  }
}

// Value rows are f32, or bf16 read straight from the pool (with Dp == D).
Isa::V LoadRow(const float* p) { return Isa::Load(p); }
Isa::V LoadRow(const uint16_t* p) { return Isa::LoadBf16(p); }

// o[n] = alphas[n] o[n] + sum_i probs[n, i] v_i over the S keys of a span, for N rows o[N, Dp]
// (probs[N, S]) at once: each value vector is loaded once for all N rows, and the N multiply-add
// chains are independent.
template <int N, typename Element>
void AccumulateValues(const Element* const (&v_rows)[kSpanKeys], const float* probs,
                      const float* alphas, float* o, int64_t padded_dim) {
  for (int64_t d = 0; d < padded_dim; d += Isa::kLanes) {
    Isa::V acc[N];
#pragma GCC unroll 4
    for (int n = 0; n < N; ++n)
      acc[n] = Isa::Mul(Isa::Load(o + n * padded_dim + d), Isa::Set1(alphas[n]));
#pragma GCC unroll 8
    for (int i = 0; i < kSpanKeys; ++i) {
      const Isa::V v = LoadRow(v_rows[i] + d);
#pragma GCC unroll 4
      for (int n = 0; n < N; ++n)
        acc[n] = Isa::MulAdd(Isa::Set1(probs[n * kSpanKeys + i]), v, acc[n]);
    }
#pragma GCC unroll 4
    for (int n = 0; n < N; ++n) Isa::Store(o + n * padded_dim + d, acc[n]);
  }
}

// AccumulateValues for `rows` rows, four at a time.
template <typename Element>
void AccumulateAllValues(const Element* const (&v_rows)[kSpanKeys], const float* probs,
                         const float* alphas, float* o, int64_t rows, int64_t padded_dim) {
  int64_t n = 0;
  for (; n + 4 <= rows; n += 4)
    AccumulateValues<4>(v_rows, probs + n * kSpanKeys, alphas + n, o + n * padded_dim, padded_dim);
  for (; n < rows; ++n)
    AccumulateValues<1>(v_rows, probs + n * kSpanKeys, alphas + n, o + n * padded_dim, padded_dim);
}

// One work item: KV head `kv_head` of `job`, queries [t_begin, t_end) of the job.
//   job.q[Q, NH, D] -> job.out[Q, NH, D] for query heads kv_head * G .. kv_head * G + G - 1.
void AttendTile(const AttentionJob& job, int64_t query_heads, int64_t kv_head, int64_t t_begin,
                int64_t t_end, float* scratch) {
  constexpr int kLanes = Isa::kLanes;
  const PagedKvView& kv = job.kv;
  const int64_t dim = kv.head_dim;
  const int64_t padded_dim = RoundUp(dim, kLanes);
  const int64_t group = query_heads / kv.kv_heads;
  const int64_t rows = (t_end - t_begin) * group;  // row r = (t - t_begin) * G + g
  const TileScratch layout = LayoutTileScratch(rows, padded_dim, kLanes);
  float* q_rows = scratch + layout.q_rows;
  float* o_rows = scratch + layout.o_rows;
  float* row_max = scratch + layout.row_max;
  float* row_sum = scratch + layout.row_sum;
  float* k_chunk = scratch + layout.k_chunk;
  float* v_span = scratch + layout.v_span;
  float* zero_row = scratch + layout.zero_row;
  float* scores = scratch + layout.scores;
  float* alphas = scratch + layout.alphas;

  // Rows start from q / sqrt(D), o = 0, m = -inf, l = 0; padding lanes stay zero throughout.
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  for (int64_t t = t_begin; t < t_end; ++t) {
    for (int64_t g = 0; g < group; ++g) {
      const float* q = job.q + (t * query_heads + kv_head * group + g) * dim;
      float* row = q_rows + ((t - t_begin) * group + g) * padded_dim;
      for (int64_t d = 0; d < dim; ++d) row[d] = q[d] * scale;
      std::fill(row + dim, row + padded_dim, 0.0f);
    }
  }
  std::fill(o_rows, o_rows + rows * padded_dim, 0.0f);
  std::fill(row_max, row_max + rows, -kInf);
  std::fill(row_sum, row_sum + rows * kLanes, 0.0f);
  std::fill(k_chunk, k_chunk + kLanes * padded_dim, 0.0f);
  std::fill(v_span, v_span + kSpanKeys * padded_dim, 0.0f);
  std::fill(zero_row, zero_row + padded_dim, 0.0f);

  // f32 values with D % L == 0 are read in place; keys are always copied (or widened) into
  // k_chunk, so that ChunkScores finds them at a fixed stride.
  const bool values_in_place = kv.dtype == DType::kF32 && dim % kLanes == 0;
  const ChunkScoresFn chunk_scores = ChunkScoresFor(padded_dim);
  // A decode tile (one query) reads bf16 values straight from the pool in step 3, where each
  // value vector serves all G rows, instead of widening them into v_span first.
  const bool bf16_values = kv.dtype == DType::kBF16 && dim % kLanes == 0 && t_end - t_begin == 1;
  const int64_t key_begin = FirstVisibleKey(job.q_start + t_begin, job.window);
  const int64_t key_end = job.q_start + t_end;
  PrefetchingKeyWalk keys(kv, kv_head, key_begin, key_end);
  const int64_t value_offset = keys.value_offset();
  const float* v_rows[kSpanKeys];          // [S] -> [Dp] f32 values of the span
  const uint16_t* v_rows_bf16[kSpanKeys];  // [S] -> [D] bf16 values, if bf16_values
  const auto* zero_row_bf16 = reinterpret_cast<const uint16_t*>(zero_row);

  for (int64_t span = key_begin; span < key_end; span += kSpanKeys) {
    const int64_t span_len = std::min<int64_t>(kSpanKeys, key_end - span);
    // 1. Scores s_i = q.k_i / sqrt(D) of every row for the span's keys, chunk by chunk: one
    //    accumulator per key, summed across lanes at the end. A chunk a query sees no key of is
    //    skipped for its rows; the keys it does not see in the others get a score, which step 2
    //    masks.
    for (int64_t c = 0; c < kSpanKeys; c += kLanes) {
      const int64_t chunk_len = std::clamp<int64_t>(span_len - c, 0, kLanes);
      for (int64_t i = 0; i < kLanes; ++i) {
        float* k_dst = k_chunk + i * padded_dim;
        if (i >= chunk_len) {  // past the span's end: a zero key (its score is masked anyway)
          std::fill(k_dst, k_dst + dim, 0.0f);
          v_rows[c + i] = zero_row;
          v_rows_bf16[c + i] = zero_row_bf16;
          continue;
        }
        const std::byte* key = keys.Next();
        const std::byte* value = key + value_offset;
        float* v_dst = v_span + (c + i) * padded_dim;
        v_rows[c + i] = v_dst;
        if (kv.dtype == DType::kF32) {
          std::memcpy(k_dst, key, static_cast<size_t>(dim * 4));
          if (values_in_place) {
            v_rows[c + i] = reinterpret_cast<const float*>(value);
          } else {
            std::memcpy(v_dst, value, static_cast<size_t>(dim * 4));
          }
        } else if (bf16_values) {
          WidenBf16Row(reinterpret_cast<const uint16_t*>(key), k_dst, dim);
          v_rows_bf16[c + i] = reinterpret_cast<const uint16_t*>(value);
        } else {
          WidenBf16Rows(reinterpret_cast<const uint16_t*>(key),
                        reinterpret_cast<const uint16_t*>(value), k_dst, v_dst, dim);
        }
      }
      if (chunk_len == 0) continue;
      for (int64_t t = t_begin; t < t_end; ++t) {
        const int64_t position = job.q_start + t;
        const int64_t chunk = span + c;
        if (FirstVisibleKey(position, job.window) >= chunk + chunk_len || position < chunk)
          continue;  // no key of the chunk is visible to this query
        for (int64_t g = 0; g < group; ++g) {
          const int64_t r = (t - t_begin) * group + g;
          Isa::Store(scores + r * kSpanKeys + c,
                     chunk_scores(q_rows + r * padded_dim, k_chunk, padded_dim));
        }
      }
    }

    // 2. Per query with a visible key in the span (keys [visible_begin, visible_end) of it): the
    //    online softmax update (see the top of the file) of each of its G rows, once per span,
    //    leaving p_i = e^(s_i - m') (0 for keys it does not see) in place of the scores; then
    //    3. o' = a o + sum_i p_i v_i for the G rows together, four at a time.
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t position = job.q_start + t;
      const int64_t visible_begin =
          std::max<int64_t>(FirstVisibleKey(position, job.window) - span, 0);
      const int64_t visible_end = std::min<int64_t>(position + 1 - span, span_len);
      if (visible_begin >= visible_end) continue;
      int64_t first[kSpanChunks], last[kSpanChunks];  // visible lanes of each chunk
      for (int c = 0; c < kSpanChunks; ++c) {
        first[c] = std::clamp<int64_t>(visible_begin - c * kLanes, 0, kLanes);
        last[c] = std::clamp<int64_t>(visible_end - c * kLanes, 0, kLanes);
      }
      const int64_t r0 = (t - t_begin) * group;
      for (int64_t g = 0; g < group; ++g) {
        const int64_t r = r0 + g;
        alphas[g] = SoftmaxSpanUpdate(scores + r * kSpanKeys, first, last, row_max[r],
                                      row_sum + r * kLanes);
      }
      if (bf16_values) {
        AccumulateAllValues(v_rows_bf16, scores + r0 * kSpanKeys, alphas, o_rows + r0 * padded_dim,
                            group, padded_dim);
      } else {
        AccumulateAllValues(v_rows, scores + r0 * kSpanKeys, alphas, o_rows + r0 * padded_dim,
                            group, padded_dim);
      }
    }
  }

  // out = o / l.
  for (int64_t t = t_begin; t < t_end; ++t) {
    for (int64_t g = 0; g < group; ++g) {
      const int64_t r = (t - t_begin) * group + g;
      float l = 0;
      for (int64_t i = 0; i < kLanes; ++i) l += row_sum[r * kLanes + i];
      const float* o = o_rows + r * padded_dim;
      float* out = job.out + (t * query_heads + kv_head * group + g) * dim;
      for (int64_t d = 0; d < dim; ++d) out[d] = o[d] / l;
    }
  }
}

#endif  // MIXATTN_PAGED_ATTENTION_KERNEL_PASS
