// Attention over the paged KV cache: the scalar reference and the fast kernel.
//
// Legend: NH = query heads, KVH = KV heads, G = NH / KVH, D = head dim, B = block tokens,
// Q = a job's query_len, L = vector lanes (16 AVX-512, 8 AVX2, 4 portable), R = rows of a work
// item (its queries times G), Dp = D rounded up to a multiple of L.
//
// The fast kernel. One work item is (job, KV head, tile of up to kQueryTile queries); its R rows
// are every query head of the KV head's group for every query of the tile, so each K/V vector
// read from the pool serves all R rows. Keys are walked in chunks of L consecutive positions
// starting at a multiple of L, over [first key any row of the tile sees, last query + 1): blocks
// wholly outside every window are never touched. Keys are grouped in spans of S = 4 L positions
// (4 chunks of L). Per span:
//   1. per chunk, the scores s_i = q.k_i / sqrt(D) of every row against its L keys, with the keys
//      in the vector lanes: K is stored transposed (paged_kv.h), so one load gives the same
//      dimensions (one 32-bit word: two bf16 dimensions or one f32) of the chunk's L keys, and
//      each row adds q_d times that vector into its accumulator, q_d broadcast. No score needs a
//      reduction across lanes and K is never copied; bf16 splits into f32 lanes with one shift
//      (even dimension) or one mask (odd). When B is not a multiple of L a chunk can straddle
//      blocks, and its K words are gathered into an L1-resident scratch tile first;
//   2. per row, keys outside its mask get -inf, then one online softmax update for the whole
//      span (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax";
//      FlashAttention, Dao et al. 2022, Alg. 1): with running max m, denominator l and numerator
//      o[D],   m' = max(m, max_i s_i),  a = e^(m - m'),
//              l' = a l + sum_i e^(s_i - m'),  o' = a o + sum_i e^(s_i - m') v_i;
//   3. the o update runs for the G rows of a query together, so each V vector loaded serves G
//      rows through G independent multiply-add chains. V rows are widened once per span into
//      scratch, except in a decode tile (one query) with bf16 V and D % 2L == 0, which reads L
//      words of a V row straight from the pool and splits them into its even and odd dimensions
//      (AccumulateSplitValues): 2 G chains, no widening pass, no table of row addresses.
// After the last span, out = o / l.
// Bandwidth arithmetic (decode, G = 4, D = 64, bf16): per key and KV head the kernel reads
// 2 * 64 * 2 = 256 bytes and does 2 * G * D = 512 multiply-adds, i.e. 2 multiply-adds per byte:
// at 40 GB/s per core that is 80 G multiply-adds/s, a third of one Zen 5 core's f32 FMA peak, so
// decode stays bandwidth-bound as long as the per-key overhead (conversion, softmax) stays small.
// That is why each K/V load serves the whole query group and scores come out in lanes.
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

#include "core/dtype.h"
#include "core/error.h"
#include "ops/x86_intrinsics.h"

#if defined(__x86_64__)
#define MIXATTN_PAGED_ATTENTION_X86 1
#endif

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
  MIXATTN_CHECK(kv.head_dim * DTypeSize(kv.dtype) % 4 == 0);  // K is stored in 32-bit words
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
    const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
    accum.resize(static_cast<size_t>(dim));
    for (int64_t t = 0; t < job.query_len; ++t) {
      const int64_t p = job.q_start + t;
      const int64_t first_key = FirstVisibleKey(p, job.window);
      scores.resize(static_cast<size_t>(p - first_key + 1));
      for (int64_t n = 0; n < query_heads; ++n) {
        const int64_t head = n / group;  // KV head n / G
        const float* q_vec = job.q + (t * query_heads + n) * dim;
        double max_score = -INFINITY;
        for (int64_t j = first_key; j <= p; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < dim; ++d)
            dot += double{q_vec[d]} * LoadElement(kv.key_element(j, head, d), 0, kv.dtype);
          scores[static_cast<size_t>(j - first_key)] = dot * scale;
          max_score = std::max(max_score, dot * scale);
        }
        double normaliser = 0;
        std::fill(accum.begin(), accum.end(), 0.0);
        for (int64_t j = first_key; j <= p; ++j) {
          const double weight = std::exp(scores[static_cast<size_t>(j - first_key)] - max_score);
          normaliser += weight;
          const std::byte* v_vec = kv.value(j, head);
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
// Keys prefetched ahead of the chunk being read, line by line (its K word rows and V rows): 32
// keys of D = 64 bf16 K and V are 8 KiB in flight per work item. Blocks sit at scattered pool
// addresses, so the hardware prefetcher stalls at every block boundary. Measured on 2 threads
// from DRAM at 32K context, B = 64: 15 GB/s without, 26 with this; prefetching whole blocks
// ahead instead (a share of the next block per chunk) gave 20.
// A decode tile with split values spreads its prefetches over the compute instead of issuing
// a chunk's 2 D / P lines in one burst: one K line of the chunk kPrefetchKeys ahead per K word
// row scored (KeyScores), one V line of the next span per value row step (AccumulateSplitValues).
// A burst stalls the core once the cache's miss queue is full, so memory and compute took turns;
// spread, they overlap: 23-26 -> 27-32 GB/s from DRAM at 32K (paged_attention_bench, 2 threads,
// old and new kernels taking turns), and the cache-resident kernel got 14% faster.
constexpr int64_t kPrefetchKeys = 32;
// Prefetches the cache line holding p. GCC counts __builtin_prefetch as free of side effects, so
// a loop nest that only prefetches is deleted as dead code (C++ forward progress, -ffinite-loops);
// an asm statement is kept.
void PrefetchLine(const std::byte* p) {
#if defined(__x86_64__) && defined(__GNUC__)
  asm volatile("prefetcht0 %0" : : "m"(*p));
#else
  __builtin_prefetch(p);
#endif
}

int64_t RoundUp(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// Offsets (in floats, each 64-byte aligned relative to the base) of one work item's scratch.
struct TileScratch {
  int64_t q_rows;    // [R, Dp] queries scaled by 1/sqrt(D), zero-padded to Dp
  int64_t o_rows;    // [R, Dp] running numerators o
  int64_t row_max;   // [R] running maxima m
  int64_t row_sum;   // [R, L] running denominators l, kept per lane until the end
  int64_t k_chunk;   // [D / P, L] a straddling chunk's K words, gathered (B % L != 0 only)
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
  // Of kLanes 32-bit words each holding two bf16 (paged_kv.h), the first (low) or second (high)
  // halves as f32.
  static V LowBf16(V words) {
    return MapBits(words, [](uint32_t w) { return w << 16; });
  }
  static V HighBf16(V words) {
    return MapBits(words, [](uint32_t w) { return w & 0xffff0000u; });
  }
  template <typename Op>
  static V MapBits(V a, Op op) {
    for (float& lane : a.lane) {
      uint32_t bits;
      std::memcpy(&bits, &lane, 4);
      bits = op(bits);
      std::memcpy(&lane, &bits, 4);
    }
    return a;
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
  static V LowBf16(V words) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(words), 16));
  }
  static V HighBf16(V words) {
    return _mm256_and_ps(words, _mm256_castsi256_ps(_mm256_set1_epi32(~0xffff)));
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
  static V KeepLanes(V x, int64_t first, int64_t last, float fill) {
    const uint32_t below_last = (1u << last) - 1;  // last <= 16
    const auto keep = static_cast<__mmask16>(below_last & (0xffffu << first));
    return _mm512_mask_mov_ps(_mm512_set1_ps(fill), keep, x);
  }
  static V LoadBf16(const uint16_t* p) {  // bf16 is the top half of an f32
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  }
  static V LowBf16(V words) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(words), 16));
  }
  static V HighBf16(V words) {
    return _mm512_castsi512_ps(
        _mm512_and_si512(_mm512_castps_si512(words), _mm512_set1_epi32(~0xffff)));
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

// Scores of N rows q[N, Dp] (rows Dp apart) against L consecutive keys whose K words come as
// rows of L words, `stride` words apart (dimensions i * P .. of key l at k + i * stride + l), for
// `words` = D / P rows; the scores of row n go to out + n * out_stride. Two accumulators per row
// (even and odd dimensions) keep 2 N multiply-add chains in flight. With bf16 K and `prefetch`
// set, word row i also prefetches the line at prefetch + i * prefetch_stride bytes.
template <int N, bool kBf16>
void KeyScores(const float* q, int64_t padded_dim, const float* k, int64_t stride, int64_t words,
               float* out, int64_t out_stride, const std::byte* prefetch, int64_t prefetch_stride) {
  using V = Isa::V;
  V even[N], odd[N];
#pragma GCC unroll 4
  for (int n = 0; n < N; ++n) even[n] = odd[n] = Isa::Zero();
  if constexpr (kBf16) {
#pragma GCC unroll 4
    for (int64_t i = 0; i < words; ++i) {
      if (prefetch != nullptr) PrefetchLine(prefetch + i * prefetch_stride);
      const V w = Isa::Load(k + i * stride);
      const V low = Isa::LowBf16(w), high = Isa::HighBf16(w);  // dimensions 2i and 2i + 1
#pragma GCC unroll 4
      for (int n = 0; n < N; ++n) {
        even[n] = Isa::MulAdd(Isa::Set1(q[n * padded_dim + 2 * i]), low, even[n]);
        odd[n] = Isa::MulAdd(Isa::Set1(q[n * padded_dim + 2 * i + 1]), high, odd[n]);
      }
    }
  } else {
    int64_t i = 0;
#pragma GCC unroll 2
    for (; i + 2 <= words; i += 2) {
      const V w0 = Isa::Load(k + i * stride), w1 = Isa::Load(k + (i + 1) * stride);
#pragma GCC unroll 4
      for (int n = 0; n < N; ++n) {
        even[n] = Isa::MulAdd(Isa::Set1(q[n * padded_dim + i]), w0, even[n]);
        odd[n] = Isa::MulAdd(Isa::Set1(q[n * padded_dim + i + 1]), w1, odd[n]);
      }
    }
    if (i < words) {
      const V w = Isa::Load(k + i * stride);
#pragma GCC unroll 4
      for (int n = 0; n < N; ++n)
        even[n] = Isa::MulAdd(Isa::Set1(q[n * padded_dim + i]), w, even[n]);
    }
  }
#pragma GCC unroll 4
  for (int n = 0; n < N; ++n) Isa::Store(out + n * out_stride, Isa::Add(even[n], odd[n]));
}

// KeyScores for `rows` rows, four at a time; the first call issues the prefetches.
template <bool kBf16>
void AllKeyScores(const float* q, int64_t rows, int64_t padded_dim, const float* k, int64_t stride,
                  int64_t words, float* out, int64_t out_stride,
                  const std::byte* prefetch = nullptr, int64_t prefetch_stride = 0) {
  int64_t n = 0;
  for (; n + 4 <= rows; n += 4) {
    KeyScores<4, kBf16>(q + n * padded_dim, padded_dim, k, stride, words, out + n * out_stride,
                        out_stride, prefetch, prefetch_stride);
    prefetch = nullptr;
  }
  for (; n < rows; ++n) {
    KeyScores<1, kBf16>(q + n * padded_dim, padded_dim, k, stride, words, out + n * out_stride,
                        out_stride, prefetch, prefetch_stride);
    prefetch = nullptr;
  }
}

// o[n] = alphas[n] o[n] + sum_i probs[n, i] v_i over the S keys of a span, for N rows o[N, Dp]
// (probs[N, S]) at once: each value vector is loaded once for all N rows, and the N multiply-add
// chains are independent.
template <int N>
void AccumulateValues(const float* const (&v_rows)[kSpanKeys], const float* probs,
                      const float* alphas, float* o, int64_t padded_dim) {
  for (int64_t d = 0; d < padded_dim; d += Isa::kLanes) {
    Isa::V acc[N];
#pragma GCC unroll 4
    for (int n = 0; n < N; ++n)
      acc[n] = Isa::Mul(Isa::Load(o + n * padded_dim + d), Isa::Set1(alphas[n]));
#pragma GCC unroll 8
    for (int i = 0; i < kSpanKeys; ++i) {
      const Isa::V v = Isa::Load(v_rows[i] + d);
#pragma GCC unroll 4
      for (int n = 0; n < N; ++n)
        acc[n] = Isa::MulAdd(Isa::Set1(probs[n * kSpanKeys + i]), v, acc[n]);
    }
#pragma GCC unroll 4
    for (int n = 0; n < N; ++n) Isa::Store(o + n * padded_dim + d, acc[n]);
  }
}

// The decode tile's value update straight from bf16 rows in the pool: the same sum as
// AccumulateValues, with o kept in word-split order. Each load of L 32-bit words gives 2 L
// dimensions of one value row, the even ones (low halves) and the odd ones (high halves) as f32
// with one shift or one mask, so o holds each group of 2 L dimensions as its L even ones, then its
// L odd ones (SplitIndex). The 2 N accumulators of a group are independent multiply-add chains,
// enough to keep both FMA pipes busy through the FMA latency. Chunk c's L value rows [L, D] bf16
// are consecutive at v_chunks[c] (D % 2L == 0); their addresses need no table. Where
// prefetch[c] is set (the V rows of the next span's chunk c, D / 2 lines like chunk c here), each
// step of row i of chunk c prefetches one of its lines.
template <int N>
void AccumulateSplitValues(const uint16_t* const (&v_chunks)[kSpanChunks], int64_t dim,
                           const float* probs, const float* alphas, float* o,
                           const std::byte* const (&prefetch)[kSpanChunks]) {
  constexpr int kLanes = Isa::kLanes;
  for (int64_t d = 0; d < dim; d += 2 * kLanes) {
    Isa::V even[N], odd[N];
#pragma GCC unroll 4
    for (int n = 0; n < N; ++n) {
      even[n] = Isa::Mul(Isa::Load(o + n * dim + d), Isa::Set1(alphas[n]));
      odd[n] = Isa::Mul(Isa::Load(o + n * dim + d + kLanes), Isa::Set1(alphas[n]));
    }
    for (int c = 0; c < kSpanChunks; ++c) {
      const uint16_t* rows = v_chunks[c] + d;
      const float* chunk_probs = probs + c * kLanes;
      // Lines d / 2 .. d / 2 + L - 1 of the next chunk's D / 2 (L rows of 2 D bytes).
      const std::byte* next = prefetch[c] == nullptr ? nullptr : prefetch[c] + d / 2 * 64;
#pragma GCC unroll 4
      for (int i = 0; i < kLanes; ++i) {
        if (next != nullptr) PrefetchLine(next + i * 64);
        const Isa::V words = Isa::Load(reinterpret_cast<const float*>(rows + i * dim));
        const Isa::V low = Isa::LowBf16(words), high = Isa::HighBf16(words);
#pragma GCC unroll 4
        for (int n = 0; n < N; ++n) {
          const Isa::V p = Isa::Set1(chunk_probs[n * kSpanKeys + i]);
          even[n] = Isa::MulAdd(p, low, even[n]);
          odd[n] = Isa::MulAdd(p, high, odd[n]);
        }
      }
    }
#pragma GCC unroll 4
    for (int n = 0; n < N; ++n) {
      Isa::Store(o + n * dim + d, even[n]);
      Isa::Store(o + n * dim + d + kLanes, odd[n]);
    }
  }
}

// Where dimension d of a row sits in word-split order (AccumulateSplitValues).
int64_t SplitIndex(int64_t d) {
  constexpr int64_t kGroup = 2 * Isa::kLanes;
  return d / kGroup * kGroup + (d % 2) * Isa::kLanes + d % kGroup / 2;
}

// AccumulateValues for `rows` rows, four at a time.
void AccumulateAllValues(const float* const (&v_rows)[kSpanKeys], const float* probs,
                         const float* alphas, float* o, int64_t rows, int64_t padded_dim) {
  int64_t n = 0;
  for (; n + 4 <= rows; n += 4)
    AccumulateValues<4>(v_rows, probs + n * kSpanKeys, alphas + n, o + n * padded_dim, padded_dim);
  for (; n < rows; ++n)
    AccumulateValues<1>(v_rows, probs + n * kSpanKeys, alphas + n, o + n * padded_dim, padded_dim);
}

// AccumulateSplitValues for `rows` rows, four at a time; the first call issues the prefetches.
void AccumulateAllSplitValues(const uint16_t* const (&v_chunks)[kSpanChunks], int64_t dim,
                              const float* probs, const float* alphas, float* o, int64_t rows,
                              const std::byte* const (&prefetch)[kSpanChunks]) {
  const std::byte* const none[kSpanChunks] = {};
  int64_t n = 0;
  for (; n + 4 <= rows; n += 4) {
    AccumulateSplitValues<4>(v_chunks, dim, probs + n * kSpanKeys, alphas + n, o + n * dim,
                             n == 0 ? prefetch : none);
  }
  for (; n < rows; ++n) {
    AccumulateSplitValues<1>(v_chunks, dim, probs + n * kSpanKeys, alphas + n, o + n * dim,
                             n == 0 ? prefetch : none);
  }
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
  std::fill(v_span, v_span + kSpanKeys * padded_dim, 0.0f);
  std::fill(zero_row, zero_row + padded_dim, 0.0f);

  const bool bf16 = kv.dtype == DType::kBF16;
  const int64_t head_words = dim * DTypeSize(kv.dtype) / 4;  // D / P
  const int64_t block_tokens = kv.block_tokens;              // B
  // With B a multiple of L, every chunk (L-aligned) lies in one block and KeyScores reads its K
  // words in place; otherwise they are gathered into k_chunk.
  const bool chunks_in_place = block_tokens % kLanes == 0;
  // f32 values with D % L == 0 are read in place.
  const bool values_in_place = kv.dtype == DType::kF32 && dim % kLanes == 0;
  // A decode tile (one query) reads bf16 values straight from the pool in step 3, where each
  // value vector serves all G rows, instead of widening them into v_span first; o is then in
  // word-split order (AccumulateSplitValues).
  const bool split_values = bf16 && dim % (2 * kLanes) == 0 && t_end - t_begin == 1;
  const int64_t key_begin = FirstVisibleKey(job.q_start + t_begin, job.window);
  const int64_t key_end = job.q_start + t_end;
  const int64_t walk_begin = key_begin / kLanes * kLanes;  // chunks start at multiples of L
  const float* v_rows[kSpanKeys];                          // [S] -> [Dp] f32 values of the span
  const uint16_t* v_chunks[kSpanChunks];  // [chunks] -> [L, D] bf16 values, if split_values
  // With split_values, a chunk whose keys are not all read (the walk's first and last) has its
  // valid value rows copied into v_span (as bf16, the rest zero), so every chunk is L rows.
  auto* v_chunk_copies = reinterpret_cast<uint16_t*>(v_span);  // [chunks, L, D]

  // This KV head's part of logical block `block` (paged_kv.h): K words [D / P, B], then V [B, D].
  const int64_t part_bytes = kv.head_part_bytes();
  const int64_t row_bytes = dim * DTypeSize(kv.dtype);
  const std::byte* head_base = kv.pool_base + kv_head * part_bytes;
  auto part_of = [&](int64_t block) {
    return head_base + kv.block_ids[block - kv.first_block] * kv.block_bytes;
  };
  // Prefetches keys [position, position + L), L-aligned and in one block (chunks in place only).
  auto prefetch_chunk = [&](int64_t position) {
    if (position >= key_end) return;
    const int64_t block = position / block_tokens;
    const int64_t slot = position - block * block_tokens;
    const std::byte* part = part_of(block);
    for (int64_t w = 0; w < head_words; ++w) PrefetchLine(part + (w * block_tokens + slot) * 4);
    const std::byte* values = part + (block_tokens + slot) * row_bytes;
    for (int64_t offset = 0; offset < kLanes * row_bytes; offset += 64)
      PrefetchLine(values + offset);
  };
  // Decode tiles with split values spread their prefetches over the compute (see kPrefetchKeys);
  // the first span's chunks are prefetched here.
  const bool spread_prefetch = chunks_in_place && split_values;
  if (chunks_in_place) {
    const int64_t ahead = spread_prefetch ? kSpanKeys : kPrefetchKeys;
    for (int64_t position = walk_begin; position < walk_begin + ahead; position += kLanes)
      prefetch_chunk(position);
  }

  for (int64_t span = walk_begin; span < key_end; span += kSpanKeys) {
    const int64_t span_len = std::min<int64_t>(kSpanKeys, key_end - span);
    // 1. Scores s_i = q.k_i / sqrt(D) of every row for the span's keys, chunk by chunk, the keys
    //    in the lanes. Rows whose query sees no key of a chunk are skipped; the keys a row does
    //    not see in the others get a score, which step 2 masks.
    for (int64_t c = 0; c < kSpanKeys; c += kLanes) {
      const int64_t chunk = span + c;
      // Keys [valid_begin, valid_end) of the chunk are listed and written; the others are read
      // by no row, and their values are zero rows (their p is 0, and 0 * NaN would not be).
      const int64_t valid_begin = std::clamp<int64_t>(key_begin - chunk, 0, kLanes);
      const int64_t valid_end = std::clamp<int64_t>(key_end - chunk, 0, kLanes);
      if (valid_begin > 0 || valid_end < kLanes) {
        for (int64_t i = 0; i < kLanes; ++i) v_rows[c + i] = zero_row;
        if (split_values) {
          v_chunks[c / kLanes] = v_chunk_copies + c * dim;  // valid rows are copied below
          std::fill_n(v_chunk_copies + c * dim, kLanes * dim, uint16_t{0});
        }
      }
      if (valid_begin >= valid_end) continue;

      const float* k_words = k_chunk;
      int64_t k_stride = kLanes;
      const std::byte* k_prefetch = nullptr;  // K words of key chunk + kPrefetchKeys (spread)
      const std::byte* v_first = nullptr;     // V row of key `chunk`, with chunks in place
      if (chunks_in_place) {
        const int64_t block = chunk / block_tokens;
        const int64_t slot = chunk - block * block_tokens;
        const int64_t ahead = chunk + kPrefetchKeys;
        if (!spread_prefetch) {
          prefetch_chunk(ahead);
        } else if (ahead < key_end) {
          const int64_t ahead_block = ahead / block_tokens;
          k_prefetch = part_of(ahead_block) + (ahead - ahead_block * block_tokens) * 4;
        }
        const std::byte* part = part_of(block);
        k_words = reinterpret_cast<const float*>(part + slot * 4);
        k_stride = block_tokens;
        v_first = part + block_tokens * row_bytes + slot * row_bytes;
      } else {
        for (int64_t i = 0; i < kLanes; ++i) {
          const bool valid = i >= valid_begin && i < valid_end;
          const std::byte* key = valid ? kv.key_element(chunk + i, kv_head, 0) : nullptr;
          for (int64_t w = 0; w < head_words; ++w) {
            float& word = k_chunk[w * kLanes + i];
            if (valid) {
              std::memcpy(&word, key + w * block_tokens * 4, 4);
            } else {
              word = 0.0f;
            }
          }
        }
      }
      if (split_values && chunks_in_place && valid_begin == 0 && valid_end == kLanes) {
        v_chunks[c / kLanes] = reinterpret_cast<const uint16_t*>(v_first);
      } else {
        if (split_values) v_chunks[c / kLanes] = v_chunk_copies + c * dim;
        for (int64_t i = valid_begin; i < valid_end; ++i) {
          const std::byte* value =
              chunks_in_place ? v_first + i * row_bytes : kv.value(chunk + i, kv_head);
          if (split_values) {
            std::memcpy(v_chunk_copies + (c + i) * dim, value, static_cast<size_t>(row_bytes));
            continue;
          }
          float* v_dst = v_span + (c + i) * padded_dim;
          v_rows[c + i] = v_dst;
          if (!bf16) {
            if (values_in_place) {
              v_rows[c + i] = reinterpret_cast<const float*>(value);
            } else {
              std::memcpy(v_dst, value, static_cast<size_t>(dim * 4));
            }
          } else {
            WidenBf16Row(reinterpret_cast<const uint16_t*>(value), v_dst, dim);
          }
        }
      }

      // Queries seeing some key of the chunk: positions in [chunk, chunk + L + W - 1) (no upper
      // bound for full attention), a run of consecutive t.
      const int64_t t_lo = std::max(t_begin, chunk - job.q_start);
      const int64_t t_hi =
          job.window > 0 ? std::min(t_end, chunk + kLanes + job.window - 1 - job.q_start) : t_end;
      if (t_lo >= t_hi) continue;
      const int64_t r_lo = (t_lo - t_begin) * group;
      const int64_t r_count = (t_hi - t_lo) * group;
      if (bf16) {
        AllKeyScores<true>(q_rows + r_lo * padded_dim, r_count, padded_dim, k_words, k_stride,
                           head_words, scores + r_lo * kSpanKeys + c, kSpanKeys, k_prefetch,
                           block_tokens * 4);
      } else {
        AllKeyScores<false>(q_rows + r_lo * padded_dim, r_count, padded_dim, k_words, k_stride,
                            head_words, scores + r_lo * kSpanKeys + c, kSpanKeys);
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
      if (split_values) {
        const std::byte* v_prefetch[kSpanChunks] = {};  // V rows of the next span's chunks
        for (int c = 0; spread_prefetch && c < kSpanChunks; ++c) {
          const int64_t next = span + kSpanKeys + c * kLanes;
          if (next >= key_end) break;
          const int64_t next_block = next / block_tokens;
          v_prefetch[c] =
              part_of(next_block) + (block_tokens + next - next_block * block_tokens) * row_bytes;
        }
        AccumulateAllSplitValues(v_chunks, dim, scores + r0 * kSpanKeys, alphas,
                                 o_rows + r0 * padded_dim, group, v_prefetch);
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
      for (int64_t d = 0; d < dim; ++d) out[d] = o[split_values ? SplitIndex(d) : d] / l;
    }
  }
}

#endif  // MIXATTN_PAGED_ATTENTION_KERNEL_PASS
