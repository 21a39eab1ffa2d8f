#include "ops/linear.h"

#include <algorithm>
#include <memory>
#include <new>
#include <oneapi/dnnl/dnnl.hpp>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "ops/elementwise.h"
#include "ops/x86_intrinsics.h"

#define MIXATTN_AVX2 __attribute__((target("avx2,fma")))
#define MIXATTN_AVX512 __attribute__((target("avx512f,avx2,fma")))

// Legend as in the header: M = rows, K = in_features, N = out_features.
namespace mixattn::ops {
namespace {

// The small-batch kernel splits N across threads once the weights reach 128 KiB of f32; below
// that a fork/join costs about as much as the whole product.
constexpr int64_t kParallelMinWeights = int64_t{1} << 15;
// Widened bf16 -> f32 weight panels are about this big: inside a 512 KiB L2 together with the
// gemm's own packed copy, and large enough that one oneDNN call per panel costs little. Chosen by
// that reasoning, not tuned: timings on the shared development machine varied by +-20%.
constexpr int64_t kWidenPanelBytes = int64_t{256} << 10;

// Allocates on 64-byte boundaries, so each weight row of the small-batch kernels starts a cache
// line whenever K * element size is a multiple of 64: a 64-byte AVX-512 load then reads one line,
// not two (malloc aligns to 16 only).
template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  CacheLineAllocator() = default;
  template <typename U>
  explicit CacheLineAllocator(const CacheLineAllocator<U>& /*other*/) {}
  T* allocate(size_t count) {
    return static_cast<T*>(::operator new (count * sizeof(T), std::align_val_t{64}));
  }
  void deallocate(T* p, size_t /*count*/) { ::operator delete (p, std::align_val_t{64}); }
  bool operator==(const CacheLineAllocator& /*other*/) const { return true; }
};

dnnl::engine& CpuEngine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One stream per calling thread: oneDNN streams are not meant to be shared between threads, and
// different Linear objects may run on different threads at once.
dnnl::stream& ThreadStream() {
  thread_local dnnl::stream stream(CpuEngine());
  return stream;
}

// oneDNN scratchpad for the matmul running on this thread, grown to the largest asked for. Runs are
// synchronous, so one buffer serves every Linear and every M on a thread; one per primitive would
// grow with the number of distinct M (on AVX-512, brgemm keeps a packed copy of the weights there).
std::byte* ThreadScratchpad(size_t bytes) {
  struct AlignedDelete {
    void operator()(std::byte* p) const { ::operator delete (p, std::align_val_t{64}); }
  };
  thread_local std::unique_ptr<std::byte, AlignedDelete> buffer;
  thread_local size_t capacity = 0;
  if (bytes > capacity) {
    buffer.reset(static_cast<std::byte*>(::operator new (bytes, std::align_val_t{64})));
    capacity = bytes;
  }
  return buffer.get();
}

// ---- small-batch kernel: y[m, n] = sum_k x[m, k] w[n, k] for M <= kMaxSmallRows ----
//
// Dot-product form: each weight is loaded once and multiplied by all M rows, which sit in L1.
// bf16 weights are widened for free with the pair trick: a 32-bit lane holding w[2i] (low half)
// and w[2i+1] (high half) is w[2i+1] as f32 once its low half is masked off, and w[2i] as f32 once
// shifted left by 16. So 16 weights cost one load and two integer ops (no shuffle), and x is laid
// out to match: within each 16-element block, the 8 even-indexed values then the 8 odd-indexed
// ones ("pair-split"); a final partial block stays in natural order.

constexpr int64_t kPairBlock = 16;

inline float WeightToF32(float w) { return w; }
inline float WeightToF32(uint16_t w) { return Bf16ToF32(w); }

MIXATTN_AVX2 inline float HorizontalSum(__m256 v) {
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
  sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
  return _mm_cvtss_f32(sum);
}

// Output columns per tile for MR rows: MR * NR accumulators plus one or two weight vectors must
// fit the 16 ymm registers (row vectors are FMA memory operands), and MR * NR >= 6 independent FMA
// chains keep both FMA pipes busy.
template <int MR>
constexpr int kTileColumns = MR == 1   ? 8
                             : MR == 2 ? 4
                             : MR == 3 ? 3
                                       : 2;

// How far ahead of its loads DotTileAvx2 prefetches each bf16 weight row: 8 KiB, 8 rows of a
// K = 512 matrix. The hardware prefetcher alone leaves the small-batch kernel at about half the
// DRAM bandwidth once the weights no longer fit the caches. ops_bench's BM_LinearColdStack at
// M = 4, 2 threads, three interleaved runs: 12.2-14.0 GB/s without, 18.9-19.8 at 4 KiB ahead,
// 20.2-21.2 at 8 KiB, 16.4-21.2 at 16 KiB; the cache-resident shapes are unchanged.
constexpr int kWeightPrefetchBytes = 8192;

// y[m, n] (row stride ldy) = sums[m][n] plus the products of the K positions [kk, K) that the
// vector loop left (x there in natural order): the end of every DotTile.
template <int MR, int NR, typename Weight>
inline __attribute__((always_inline)) void FinishTile(const float (&sums)[MR][NR], const float* x,
                                                      const Weight* w, int64_t k, int64_t kk,
                                                      float* y, int64_t ldy) {
  for (int m = 0; m < MR; ++m) {
    for (int n = 0; n < NR; ++n) {
      float sum = sums[m][n];
      for (int64_t t = kk; t < k; ++t) sum += x[m * k + t] * WeightToF32(w[n * k + t]);
      y[m * ldy + n] = sum;
    }
  }
}

// Tiles of NR output columns (and single columns for the last N % NR) of x[MR, K] * w[N, K]^T
// into y[MR, N], split across threads once the weights are large enough.
template <int MR, int NR, typename Weight>
void ForEachTile(const float* x, const Weight* w, int64_t n, int64_t k, float* y,
                 void (*tile)(const float*, const Weight*, int64_t, float*, int64_t),
                 void (*column)(const float*, const Weight*, int64_t, float*, int64_t)) {
  const int64_t tiles = (n + NR - 1) / NR;
#pragma omp parallel for schedule(static) if (n * k >= kParallelMinWeights)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t n0 = t * NR;
    if (n0 + NR <= n) {
      tile(x, w + n0 * k, k, y + n0, n);
    } else {
      for (int64_t j = n0; j < n; ++j) column(x, w + j * k, k, y + j, n);
    }
  }
}

// One block of kPairBlock k-positions of DotTileAvx2 for bf16 weights: acc[m][n] += x[m, at..] *
// w[n, at..], x pair-split.
template <int MR, int NR>
MIXATTN_AVX2 inline __attribute__((always_inline)) void DotBlockBf16(const float* x,
                                                                     const uint16_t* w, int64_t k,
                                                                     int64_t at, __m256i high_half,
                                                                     __m256 (&acc)[MR][NR]) {
#pragma GCC unroll 8
  for (int n = 0; n < NR; ++n) {
    const __m256i pairs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + n * k + at));
    const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
    const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(pairs, high_half));
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      acc[m][n] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * k + at), even, acc[m][n]);
      acc[m][n] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * k + at + 8), odd, acc[m][n]);
    }
  }
}

// y[MR, NR] (row stride ldy) = x[MR, K] (row stride K) * w[NR, K]^T, accumulated in f32. For bf16
// weights x is pair-split (see above).
template <int MR, int NR, typename Weight>
MIXATTN_AVX2 void DotTileAvx2(const float* x, const Weight* w, int64_t k, float* y, int64_t ldy) {
  __m256 acc[MR][NR];
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 8
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm256_setzero_ps();
  }
  int64_t kk = 0;
  if constexpr (std::is_same_v<Weight, float>) {
    for (; kk + 8 <= k; kk += 8) {
#pragma GCC unroll 8
      for (int n = 0; n < NR; ++n) {
        const __m256 wv = _mm256_loadu_ps(w + n * k + kk);
#pragma GCC unroll 4
        for (int m = 0; m < MR; ++m)
          acc[m][n] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * k + kk), wv, acc[m][n]);
      }
    }
  } else {
    const __m256i high_half = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
    // Two blocks (one 64-byte line of each weight row) per iteration, with one prefetch per line.
    for (; kk + 2 * kPairBlock <= k; kk += 2 * kPairBlock) {
#pragma GCC unroll 8
      for (int n = 0; n < NR; ++n) {
        _mm_prefetch(reinterpret_cast<const char*>(w + n * k + kk) + kWeightPrefetchBytes,
                     _MM_HINT_T0);
      }
      DotBlockBf16<MR, NR>(x, w, k, kk, high_half, acc);
      DotBlockBf16<MR, NR>(x, w, k, kk + kPairBlock, high_half, acc);
    }
    if (kk + kPairBlock <= k) {
      DotBlockBf16<MR, NR>(x, w, k, kk, high_half, acc);
      kk += kPairBlock;
    }
  }
  float sums[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) sums[m][n] = HorizontalSum(acc[m][n]);
  FinishTile(sums, x, w, k, kk, y, ldy);
}

// ---- the same kernel in AVX-512: 16 lanes, and bf16 x pair-split in blocks of 32 (16
// even-indexed values, then 16 odd), so one 64-byte load of a weight row (a cache line, 32 bf16
// weights) feeds two FMAs per row of x. With 32 vector registers MR * NR = 16 accumulators fit.
// ops_bench BM_LinearColdStack (M = 4, 2 threads, weights from DRAM) and a standalone copy of both
// kernels run in turns: 25.5-29.5 GB/s with AVX2, 33.1-34.1 with this; in ops_bench alone, M = 4:
// 22.2-24.6 -> 27.0-31.5 GB/s, M = 8: 11.1-12.1 -> 15.2-16.7; M = 1: 47-52 -> 44-48.

constexpr int64_t kPairBlock512 = 32;

template <int MR>
constexpr int kTileColumns512 = MR == 1 ? 8 : 4;

MIXATTN_AVX512 inline float HorizontalSum512(__m512 v) {
  const __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  const __m256 sum = _mm256_add_ps(_mm512_castps512_ps256(v), high);
  __m128 quarter = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
  quarter = _mm_add_ps(quarter, _mm_movehl_ps(quarter, quarter));
  quarter = _mm_add_ss(quarter, _mm_movehdup_ps(quarter));
  return _mm_cvtss_f32(quarter);
}

// y[MR, NR] (row stride ldy) = x[MR, K] (row stride K) * w[NR, K]^T, accumulated in f32. For bf16
// weights x is pair-split in blocks of 32 (PairSplitRowsAvx512).
template <int MR, int NR, typename Weight>
MIXATTN_AVX512 void DotTileAvx512(const float* x, const Weight* w, int64_t k, float* y,
                                  int64_t ldy) {
  __m512 acc[MR][NR];
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 8
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_ps();
  }
  int64_t kk = 0;
  if constexpr (std::is_same_v<Weight, float>) {
    for (; kk + 16 <= k; kk += 16) {
#pragma GCC unroll 8
      for (int n = 0; n < NR; ++n) {
        const __m512 wv = _mm512_loadu_ps(w + n * k + kk);
#pragma GCC unroll 4
        for (int m = 0; m < MR; ++m)
          acc[m][n] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * k + kk), wv, acc[m][n]);
      }
    }
  } else {
    const __m512i high_half = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
    for (; kk + kPairBlock512 <= k; kk += kPairBlock512) {
#pragma GCC unroll 8
      for (int n = 0; n < NR; ++n) {
        _mm_prefetch(reinterpret_cast<const char*>(w + n * k + kk) + kWeightPrefetchBytes,
                     _MM_HINT_T0);
        const __m512i pairs = _mm512_loadu_si512(w + n * k + kk);
        const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
        const __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(pairs, high_half));
#pragma GCC unroll 4
        for (int m = 0; m < MR; ++m) {
          acc[m][n] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * k + kk), even, acc[m][n]);
          acc[m][n] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * k + kk + 16), odd, acc[m][n]);
        }
      }
    }
  }
  float sums[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) sums[m][n] = HorizontalSum512(acc[m][n]);
  FinishTile(sums, x, w, k, kk, y, ldy);
}

template <typename Weight>
void SmallRowsPortable(const float* x, int64_t rows, const Weight* w, int64_t n, int64_t k,
                       float* y) {
#pragma omp parallel for schedule(static) if (n * k >= kParallelMinWeights)
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t m = 0; m < rows; ++m) {
      float sum = 0;
      for (int64_t t = 0; t < k; ++t) sum += x[m * k + t] * WeightToF32(w[j * k + t]);
      y[m * n + j] = sum;
    }
  }
}

// Rows per pass of the small-batch kernel; larger batches take several passes, each reading the
// weights again (from L2/L3 at decode sizes).
constexpr int64_t kRowsPerPass = 4;

// One pass of up to kRowsPerPass rows on AVX2 or AVX-512.
template <int MR, typename Weight>
void SmallRowsPass(SimdLevel level, const float* x, const Weight* w, int64_t n, int64_t k,
                   float* y) {
  if (level == SimdLevel::kAvx512) {
    constexpr int kNR = kTileColumns512<MR>;
    return ForEachTile<MR, kNR>(x, w, n, k, y, &DotTileAvx512<MR, kNR, Weight>,
                                &DotTileAvx512<MR, 1, Weight>);
  }
  constexpr int kNR = kTileColumns<MR>;
  ForEachTile<MR, kNR>(x, w, n, k, y, &DotTileAvx2<MR, kNR, Weight>, &DotTileAvx2<MR, 1, Weight>);
}

// x[rows, K] (any rows, in passes of 4; pair-split for bf16 as PairSplitRows(level) leaves it)
// times w[N, K]^T into y[rows, N] with the kernel of `level`.
template <typename Weight>
void SmallRows(SimdLevel level, const float* x, int64_t rows, const Weight* w, int64_t n, int64_t k,
               float* y) {
  if (level == SimdLevel::kScalar) return SmallRowsPortable(x, rows, w, n, k, y);
  for (int64_t m0 = 0; m0 < rows; m0 += kRowsPerPass) {
    const float* x_pass = x + m0 * k;
    float* y_pass = y + m0 * n;
    switch (std::min(kRowsPerPass, rows - m0)) {
      case 1:
        SmallRowsPass<1>(level, x_pass, w, n, k, y_pass);
        break;
      case 2:
        SmallRowsPass<2>(level, x_pass, w, n, k, y_pass);
        break;
      case 3:
        SmallRowsPass<3>(level, x_pass, w, n, k, y_pass);
        break;
      default:
        SmallRowsPass<4>(level, x_pass, w, n, k, y_pass);
        break;
    }
  }
}

// Reorders each row of x[rows, K] in place into the pair-split layout of the AVX2 bf16 kernel.
MIXATTN_AVX2 void PairSplitRowsAvx2(float* x, int64_t rows, int64_t k) {
  for (int64_t m = 0; m < rows; ++m) {
    float* row = x + m * k;
    for (int64_t kk = 0; kk + kPairBlock <= k; kk += kPairBlock) {
      const __m256 a = _mm256_loadu_ps(row + kk), b = _mm256_loadu_ps(row + kk + 8);
      // shuffle_ps works per 128-bit half: (a0 a2 b0 b2 | a4 a6 b4 b6); the 64-bit permute then
      // orders the halves as a0 a2 a4 a6 b0 b2 b4 b6. Likewise for the odd elements.
      const __m256 even = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
      const __m256 odd = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
      _mm256_storeu_pd(reinterpret_cast<double*>(row + kk),
                       _mm256_permute4x64_pd(_mm256_castps_pd(even), _MM_SHUFFLE(3, 1, 2, 0)));
      _mm256_storeu_pd(reinterpret_cast<double*>(row + kk + 8),
                       _mm256_permute4x64_pd(_mm256_castps_pd(odd), _MM_SHUFFLE(3, 1, 2, 0)));
    }
  }
}

// The same for the AVX-512 kernel: blocks of 32 become their 16 even-indexed values, then the odd.
MIXATTN_AVX512 void PairSplitRowsAvx512(float* x, int64_t rows, int64_t k) {
  const __m512i even_index =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd_index = _mm512_add_epi32(even_index, _mm512_set1_epi32(1));
  for (int64_t m = 0; m < rows; ++m) {
    float* row = x + m * k;
    for (int64_t kk = 0; kk + kPairBlock512 <= k; kk += kPairBlock512) {
      // permutex2var picks from the 32 lanes of (a, b): index i < 16 from a, 16 + i from b.
      const __m512 a = _mm512_loadu_ps(row + kk), b = _mm512_loadu_ps(row + kk + 16);
      _mm512_storeu_ps(row + kk, _mm512_permutex2var_ps(a, even_index, b));
      _mm512_storeu_ps(row + kk + 16, _mm512_permutex2var_ps(a, odd_index, b));
    }
  }
}

// Puts x into the layout the small-batch bf16 kernel of `level` reads.
void PairSplitRows(SimdLevel level, float* x, int64_t rows, int64_t k) {
  if (level == SimdLevel::kAvx512) PairSplitRowsAvx512(x, rows, k);
  if (level == SimdLevel::kAvx2) PairSplitRowsAvx2(x, rows, k);
}

// ---- oneDNN ----

// One oneDNN matmul dst[M, cols] (row stride ldd) = src[M, K] * weights[cols, K]^T for every M: M
// is a runtime dimension (DNNL_RUNTIME_DIM_VAL), so one primitive serves every batch size and the
// number of primitives does not grow with the sizes a server meets (issue 5). The memory objects
// hold no data (pointers are swapped in per call); src and dst describe one M, so they are rebuilt
// when M differs from the previous call's: two small allocations inside oneDNN, nothing per call.
struct OneDnnMatmul {
  dnnl::matmul primitive;
  dnnl::memory::data_type type = dnnl::memory::data_type::f32;  // of src and weights; dst is f32
  int64_t cols = 0, k = 0, ldd = 0;
  int64_t rows = 0;  // M that src and dst describe; 0 before the first run
  dnnl::memory src, weights, dst, scratchpad;
  size_t scratchpad_bytes = 0;
  std::string name;  // oneDNN's implementation, e.g. "gemm:jit"

  void Run(int64_t m, const void* src_data, const void* weight_data, float* dst_data) {
    if (m != rows) {
      using tag = dnnl::memory::format_tag;
      src = dnnl::memory({{m, k}, type, tag::ab}, CpuEngine(), DNNL_MEMORY_NONE);
      dst = dnnl::memory({{m, cols}, dnnl::memory::data_type::f32, {ldd, 1}}, CpuEngine(),
                         DNNL_MEMORY_NONE);
      rows = m;
    }
    src.set_data_handle(const_cast<void*>(src_data));
    weights.set_data_handle(const_cast<void*>(weight_data));
    dst.set_data_handle(dst_data);
    if (scratchpad_bytes > 0) scratchpad.set_data_handle(ThreadScratchpad(scratchpad_bytes));
    // The C API takes a plain array; the C++ execute() builds an unordered_map per call.
    const dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, src.get()},
                                    {DNNL_ARG_WEIGHTS, weights.get()},
                                    {DNNL_ARG_DST, dst.get()},
                                    {DNNL_ARG_SCRATCHPAD, scratchpad.get()}};
    dnnl::stream& stream = ThreadStream();
    MIXATTN_CHECK(dnnl_primitive_execute(primitive.get(), stream.get(), 4, args) == dnnl_success);
    MIXATTN_CHECK(dnnl_stream_wait(stream.get()) == dnnl_success);
  }
};

// Null when oneDNN has no implementation for this data type here, or only its reference one (a
// plain loop nest: for bf16, widening to f32 is always the better choice).
//
// Why a runtime M and not one primitive per M, or per bucket of M with padded rows: on AVX2 both
// are oneDNN's gemm:jit, which takes M at run time anyway (the primitive is a thin wrapper around
// its sgemm): timed side by side, they are within the +-2.5% noise at M = 9 .. 4096 (linear.h).
// Buckets would add copies and padded rows: for multiples of 32, 6% of all rows over M = 9 .. 512
// and 12% per call on average (23 of 32 at M = 9). On AVX-512, oneDNN 2.6's brgemm matmul takes
// fixed shapes only, so a native bf16 matmul there is its gemm-based one; that could not be
// measured here.
std::unique_ptr<OneDnnMatmul> MakeOneDnnMatmul(int64_t cols, int64_t k, int64_t ldd,
                                               dnnl::memory::data_type type) {
  using dims = dnnl::memory::dims;
  using tag = dnnl::memory::format_tag;
  dnnl::engine& engine = CpuEngine();
  const dnnl::memory::desc src_desc(dims{DNNL_RUNTIME_DIM_VAL, k}, type, tag::ab);
  const dnnl::memory::desc weight_desc(dims{k, cols}, type, tag::ba);  // W [cols, K] row-major
  const dnnl::memory::desc dst_desc(dims{DNNL_RUNTIME_DIM_VAL, cols}, dnnl::memory::data_type::f32,
                                    dims{ldd, 1});
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // ThreadScratchpad, not per call
  auto matmul = std::make_unique<OneDnnMatmul>();
  matmul->type = type;
  matmul->cols = cols;
  matmul->k = k;
  matmul->ldd = ldd;
  try {
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src_desc, weight_desc, dst_desc), attr,
                                          engine);
    matmul->name = pd.impl_info_str();
    if (type == dnnl::memory::data_type::bf16 && matmul->name.starts_with("ref")) return nullptr;
    matmul->primitive = dnnl::matmul(pd);
    matmul->weights = dnnl::memory(weight_desc, engine, DNNL_MEMORY_NONE);
    matmul->scratchpad = dnnl::memory(pd.scratchpad_desc(), engine, DNNL_MEMORY_NONE);
    matmul->scratchpad_bytes = pd.scratchpad_desc().get_size();
  } catch (const dnnl::error& e) {
    if (type == dnnl::memory::data_type::bf16) return nullptr;
    Fail("oneDNN could not create an f32 matmul [M, ", k, "] x [", k, ", ", cols, "]: ", e.what());
  }
  return matmul;
}

}  // namespace

struct Linear::Impl {
  int64_t n = 0;  // N
  int64_t k = 0;  // K
  DType dtype = DType::kBF16;
  Bf16Matmul bf16_matmul = Bf16Matmul::kAuto;
  LargeBatches large_batches = LargeBatches::kOneDnn;

  // Whether `rows` rows take the small-batch kernel rather than oneDNN.
  bool SmallKernel(int64_t rows) const {
    return rows <= kMaxSmallRows || large_batches == LargeBatches::kRowInvariant;
  }
  std::vector<float, CacheLineAllocator<float>> weight_f32;         // [N, K] when dtype is f32
  std::vector<uint16_t, CacheLineAllocator<uint16_t>> weight_bf16;  // [N, K] when dtype is bf16
  int64_t panel_rows = 0;  // weight rows per widened panel (bf16 only)

  // How Forward runs M > kMaxSmallRows rows: oneDNN primitives taking M at run time, built on the
  // first such call, so at most kMaxCachedPrimitives of them whatever the sequence of M.
  struct Plan {
    std::unique_ptr<OneDnnMatmul> whole;       // the whole product (f32, or native bf16)
    std::unique_ptr<OneDnnMatmul> panel;       // widened bf16: one panel of panel_rows columns
    std::unique_ptr<OneDnnMatmul> last_panel;  // widened bf16: the narrower last panel, if any
  };
  std::unique_ptr<Plan> plan;  // null before the first call with M > kMaxSmallRows

  // Scratch, grown to the largest M seen.
  std::vector<float> x_rounded;  // [M, K] x rounded to bf16 (small kernel, widened path)
  std::vector<uint16_t> x_bf16;  // [M, K] x as bf16 (native bf16 matmul)
  std::vector<float> panel;      // [panel_rows, K] widened weights

  Plan& GetPlan() {
    if (plan) return *plan;
    plan = std::make_unique<Plan>();
    if (dtype == DType::kF32) {
      plan->whole = MakeOneDnnMatmul(n, k, n, dnnl::memory::data_type::f32);
    } else {
      if (bf16_matmul == Bf16Matmul::kAuto)
        plan->whole = MakeOneDnnMatmul(n, k, n, dnnl::memory::data_type::bf16);
      if (!plan->whole) {
        plan->panel = MakeOneDnnMatmul(panel_rows, k, n, dnnl::memory::data_type::f32);
        if (n % panel_rows != 0)
          plan->last_panel = MakeOneDnnMatmul(n % panel_rows, k, n, dnnl::memory::data_type::f32);
        panel.resize(static_cast<size_t>(panel_rows * k));
      }
    }
    return *plan;
  }

  int64_t CachedPrimitives() const {
    if (!plan) return 0;
    return (plan->whole ? 1 : 0) + (plan->panel ? 1 : 0) + (plan->last_panel ? 1 : 0);
  }

  template <typename T>
  static T* Grow(std::vector<T>& buffer, int64_t size) {
    if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(static_cast<size_t>(size));
    return buffer.data();
  }

  void Forward(const float* x, int64_t rows, float* y) {
    // One kernel for every M <= kMaxSmallRows, so a row's result does not depend on how many rows
    // share the call (each row's sum runs in the same order in any tile): a request decodes the
    // same alone as beside up to 7 others. (At M = 1, where DRAM bounds both, the AVX2 kernel
    // measured 5-8% faster, but switching kernels by M would give up that invariance.)
    const SimdLevel level = ActiveSimdLevel();
    if (dtype == DType::kF32) {
      if (SmallKernel(rows)) return SmallRows(level, x, rows, weight_f32.data(), n, k, y);
      return GetPlan().whole->Run(rows, x, weight_f32.data(), y);
    }
    if (SmallKernel(rows)) {
      float* rounded = Grow(x_rounded, rows * k);
      RoundToBf16(x, rows * k, rounded);
      PairSplitRows(level, rounded, rows, k);
      return SmallRows(level, rounded, rows, weight_bf16.data(), n, k, y);
    }
    Plan& matmuls = GetPlan();
    if (matmuls.whole) {
      uint16_t* x_half = Grow(x_bf16, rows * k);
      StoreAs(x, rows * k, DType::kBF16, reinterpret_cast<std::byte*>(x_half));
      return matmuls.whole->Run(rows, x_half, weight_bf16.data(), y);
    }
    float* rounded = Grow(x_rounded, rows * k);
    RoundToBf16(x, rows * k, rounded);
    for (int64_t n0 = 0; n0 < n; n0 += panel_rows) {
      const int64_t cols = std::min(panel_rows, n - n0);
      LoadAs(reinterpret_cast<const std::byte*>(weight_bf16.data() + n0 * k), cols * k,
             DType::kBF16, panel.data());
      OneDnnMatmul& matmul = cols == panel_rows ? *matmuls.panel : *matmuls.last_panel;
      matmul.Run(rows, rounded, panel.data(), y + n0);
    }
  }
};

Linear::Linear(const float* weight, int64_t out_features, int64_t in_features, DType dtype,
               Bf16Matmul bf16_matmul, LargeBatches large_batches)
    : impl_(std::make_unique<Impl>()) {
  if (out_features < 1 || in_features < 1)
    Fail("Linear: out_features and in_features must be >= 1, got ", out_features, " x ",
         in_features);
  MIXATTN_CHECK(weight != nullptr);
  Impl& impl = *impl_;
  impl.n = out_features;
  impl.k = in_features;
  impl.dtype = dtype;
  impl.bf16_matmul = bf16_matmul;
  impl.large_batches = large_batches;
  const int64_t count = out_features * in_features;
  if (dtype == DType::kF32) {
    impl.weight_f32.assign(weight, weight + count);
  } else {
    impl.weight_bf16.resize(static_cast<size_t>(count));
    StoreAs(weight, count, DType::kBF16, reinterpret_cast<std::byte*>(impl.weight_bf16.data()));
    const int64_t rows_per_panel = kWidenPanelBytes / (in_features * int64_t{sizeof(float)});
    impl.panel_rows = std::min(out_features, std::max<int64_t>(16, rows_per_panel / 16 * 16));
  }
}

Linear::~Linear() = default;
Linear::Linear(Linear&&) noexcept = default;
Linear& Linear::operator=(Linear&&) noexcept = default;

void Linear::Forward(const float* x, int64_t rows, float* y) const {
  MIXATTN_CHECK(rows >= 0);
  if (rows == 0) return;
  impl_->Forward(x, rows, y);
}

int64_t Linear::out_features() const { return impl_->n; }
int64_t Linear::in_features() const { return impl_->k; }
DType Linear::dtype() const { return impl_->dtype; }
int64_t Linear::weight_bytes() const { return impl_->n * impl_->k * DTypeSize(impl_->dtype); }

std::string Linear::KernelName(int64_t rows) const {
  if (impl_->SmallKernel(rows)) {
    switch (ActiveSimdLevel()) {
      case SimdLevel::kAvx512:
        return "mixattn:dot_avx512";
      case SimdLevel::kAvx2:
        return "mixattn:dot_avx2";
      case SimdLevel::kScalar:
        break;
    }
    return "mixattn:dot_portable";
  }
  const Impl::Plan& plan = impl_->GetPlan();
  if (plan.whole) return "onednn:" + plan.whole->name;
  return "widen_bf16+onednn:" + plan.panel->name;
}

int64_t Linear::cached_primitives() const { return impl_->CachedPrimitives(); }

}  // namespace mixattn::ops
