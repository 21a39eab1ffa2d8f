#include "ops/elementwise.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "ops/parallel_chunks.h"

// Each kernel has an AVX2 body (target attribute, so the rest of the project keeps its baseline
// -march) and a portable body; the public function picks one per call. Legend as in the header.
#define MIXATTN_AVX2 __attribute__((target("avx2,fma")))

namespace mixattn::ops {
namespace {

std::atomic<int> g_simd_cap{static_cast<int>(SimdLevel::kAvx512)};

bool UseAvx2() { return ActiveSimdLevel() >= SimdLevel::kAvx2; }

// ---- AVX2 building blocks ----

// Lanes [0, n) set, for n in [0, 8]: the mask of a partial final vector.
MIXATTN_AVX2 inline __m256i TailMask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

MIXATTN_AVX2 inline float HorizontalSum(__m256 v) {
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
  sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
  return _mm_cvtss_f32(sum);
}

// e^x for 8 lanes, Cephes expf: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two parts so n ln2
// is exact), e^r = 1 + r + r^2 P(r) with a degree-5 P, then scale by 2^n built in the exponent
// bits. The input is clamped to [-87, 88] so 2^n stays a normal float; callers only need e^x to
// saturate there (1 + e^x is then 1 or ~1e38).
MIXATTN_AVX2 inline __m256 ExpAvx2(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i exponent =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(exponent));
}

// f32 bit patterns -> bf16 bit patterns in the low half of each 32-bit lane, exactly F32ToBf16:
// round to nearest even by adding 0x7fff + lsb, NaN kept quiet.
MIXATTN_AVX2 inline __m256i Bf16Bits(__m256i bits) {
  const __m256i magnitude = _mm256_and_si256(bits, _mm256_set1_epi32(0x7fffffff));
  const __m256i is_nan = _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7f800000));
  const __m256i high = _mm256_srli_epi32(bits, 16);
  const __m256i rounding =
      _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(high, _mm256_set1_epi32(1)));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, rounding), 16);
  const __m256i quiet_nan = _mm256_or_si256(high, _mm256_set1_epi32(0x40));
  return _mm256_blendv_epi8(rounded, quiet_nan, is_nan);
}

// ---- RmsNorm ----

MIXATTN_AVX2 void RmsNormRowAvx2(const float* x, const float* weight, int64_t width, float eps,
                                 float* out) {
  // Four accumulators hide the FMA latency (4 cycles, 2 pipes would want 8; the loads bind first).
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 32 <= width; c += 32) {
    const __m256 v0 = _mm256_loadu_ps(x + c), v1 = _mm256_loadu_ps(x + c + 8);
    const __m256 v2 = _mm256_loadu_ps(x + c + 16), v3 = _mm256_loadu_ps(x + c + 24);
    acc0 = _mm256_fmadd_ps(v0, v0, acc0);
    acc1 = _mm256_fmadd_ps(v1, v1, acc1);
    acc2 = _mm256_fmadd_ps(v2, v2, acc2);
    acc3 = _mm256_fmadd_ps(v3, v3, acc3);
  }
  for (; c + 8 <= width; c += 8) {
    const __m256 v = _mm256_loadu_ps(x + c);
    acc0 = _mm256_fmadd_ps(v, v, acc0);
  }
  if (c < width) {
    const __m256 v = _mm256_maskload_ps(x + c, TailMask(width - c));
    acc1 = _mm256_fmadd_ps(v, v, acc1);
  }
  const float sum =
      HorizontalSum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
  const __m256 scale = _mm256_set1_ps(
      static_cast<float>(1.0 / std::sqrt(double{sum} / static_cast<double>(width) + eps)));
  c = 0;
  for (; c + 8 <= width; c += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + c), scale);
    _mm256_storeu_ps(out + c, _mm256_mul_ps(v, _mm256_loadu_ps(weight + c)));
  }
  if (c < width) {
    const __m256i mask = TailMask(width - c);
    const __m256 v = _mm256_mul_ps(_mm256_maskload_ps(x + c, mask), scale);
    _mm256_maskstore_ps(out + c, mask, _mm256_mul_ps(v, _mm256_maskload_ps(weight + c, mask)));
  }
}

void RmsNormRowPortable(const float* x, const float* weight, int64_t width, float eps, float* out) {
  double sum = 0;
  for (int64_t c = 0; c < width; ++c) sum += double{x[c]} * x[c];
  const float scale = static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(width) + eps));
  for (int64_t c = 0; c < width; ++c) out[c] = x[c] * scale * weight[c];
}

// ---- RoPE ----

// One token's heads: vec[h] = x + h * D, rotated by (cos, sin)[D/2].
MIXATTN_AVX2 void RopeTokenAvx2(float* x, int64_t heads, int64_t head_dim, const float* cos,
                                const float* sin) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* first = x + h * head_dim;  // [D/2] rotated against second[D/2]
    float* second = first + half;
    int64_t j = 0;
    for (; j + 8 <= half; j += 8) {
      const __m256 a = _mm256_loadu_ps(first + j), b = _mm256_loadu_ps(second + j);
      const __m256 c = _mm256_loadu_ps(cos + j), s = _mm256_loadu_ps(sin + j);
      _mm256_storeu_ps(first + j, _mm256_fmsub_ps(a, c, _mm256_mul_ps(b, s)));
      _mm256_storeu_ps(second + j, _mm256_fmadd_ps(b, c, _mm256_mul_ps(a, s)));
    }
    if (j < half) {
      const __m256i mask = TailMask(half - j);
      const __m256 a = _mm256_maskload_ps(first + j, mask);
      const __m256 b = _mm256_maskload_ps(second + j, mask);
      const __m256 c = _mm256_maskload_ps(cos + j, mask), s = _mm256_maskload_ps(sin + j, mask);
      _mm256_maskstore_ps(first + j, mask, _mm256_fmsub_ps(a, c, _mm256_mul_ps(b, s)));
      _mm256_maskstore_ps(second + j, mask, _mm256_fmadd_ps(b, c, _mm256_mul_ps(a, s)));
    }
  }
}

void RopeTokenPortable(float* x, int64_t heads, int64_t head_dim, const float* cos,
                       const float* sin) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* first = x + h * head_dim;
    float* second = first + half;
    for (int64_t j = 0; j < half; ++j) {
      const float a = first[j], b = second[j];
      first[j] = a * cos[j] - b * sin[j];
      second[j] = b * cos[j] + a * sin[j];
    }
  }
}

// ---- SwiGLU, residual add ----

MIXATTN_AVX2 void SwiGluAvx2(const float* gate, const float* up, int64_t count, float* out) {
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = ExpAvx2(_mm256_xor_ps(g, sign));  // e^-g
    const __m256 gu = _mm256_mul_ps(g, _mm256_loadu_ps(up + i));
    _mm256_storeu_ps(out + i, _mm256_div_ps(gu, _mm256_add_ps(one, e)));
  }
  if (i < count) {
    const __m256i mask = TailMask(count - i);
    const __m256 g = _mm256_maskload_ps(gate + i, mask);
    const __m256 e = ExpAvx2(_mm256_xor_ps(g, sign));
    const __m256 gu = _mm256_mul_ps(g, _mm256_maskload_ps(up + i, mask));
    _mm256_maskstore_ps(out + i, mask, _mm256_div_ps(gu, _mm256_add_ps(one, e)));
  }
}

void SwiGluPortable(const float* gate, const float* up, int64_t count, float* out) {
  for (int64_t i = 0; i < count; ++i) out[i] = gate[i] * up[i] / (1.0f + std::exp(-gate[i]));
}

MIXATTN_AVX2 void AddAvx2(float* x, const float* y, int64_t count) {
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    _mm256_storeu_ps(x + i + 8,
                     _mm256_add_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8)));
  }
  for (; i < count; ++i) x[i] += y[i];
}

// ---- bf16 conversion ----

// src[F] f32 -> dst[F] bf16 bit patterns (dst unaligned).
MIXATTN_AVX2 void ToBf16Avx2(const float* src, int64_t count, std::byte* dst) {
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m256i low = Bf16Bits(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
    const __m256i high =
        Bf16Bits(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 8)));
    // packus interleaves 128-bit halves (low0-3 high0-3 | low4-7 high4-7); the permute restores
    // order. Values are < 2^16, so the unsigned saturation never triggers.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(low, high), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 2 * i), packed);
  }
  for (; i < count; ++i) {
    const uint16_t value = F32ToBf16(src[i]);
    std::memcpy(dst + 2 * i, &value, 2);
  }
}

void ToBf16Portable(const float* src, int64_t count, std::byte* dst) {
  for (int64_t i = 0; i < count; ++i) {
    const uint16_t value = F32ToBf16(src[i]);
    std::memcpy(dst + 2 * i, &value, 2);
  }
}

MIXATTN_AVX2 void FromBf16Avx2(const std::byte* src, int64_t count, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m128i halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    const __m256i bits = _mm256_slli_epi32(_mm256_cvtepu16_epi32(halves), 16);
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(bits));
  }
  for (; i < count; ++i) {
    uint16_t value;
    std::memcpy(&value, src + 2 * i, 2);
    dst[i] = Bf16ToF32(value);
  }
}

void FromBf16Portable(const std::byte* src, int64_t count, float* dst) {
  for (int64_t i = 0; i < count; ++i) {
    uint16_t value;
    std::memcpy(&value, src + 2 * i, 2);
    dst[i] = Bf16ToF32(value);
  }
}

MIXATTN_AVX2 void RoundToBf16Avx2(const float* src, int64_t count, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256i bits = Bf16Bits(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(bits, 16)));
  }
  for (; i < count; ++i) dst[i] = Bf16ToF32(F32ToBf16(src[i]));
}

}  // namespace

SimdLevel DetectedSimdLevel() {
  // libgcc's check also confirms the OS saves YMM state (XCR0), not only the CPUID bits.
  static const SimdLevel detected = [] {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
      return SimdLevel::kScalar;
    return __builtin_cpu_supports("avx512f") ? SimdLevel::kAvx512 : SimdLevel::kAvx2;
  }();
  return detected;
}

SimdLevel ActiveSimdLevel() {
  return std::min(DetectedSimdLevel(),
                  static_cast<SimdLevel>(g_simd_cap.load(std::memory_order_relaxed)));
}

void SetSimdLevelCap(SimdLevel cap) {
  g_simd_cap.store(static_cast<int>(cap), std::memory_order_relaxed);
}

RopeTable::RopeTable(int64_t max_positions, int64_t head_dim, double theta)
    : max_positions_(max_positions), head_dim_(head_dim), theta_(theta) {
  if (max_positions < 1) Fail("RoPE table: max_positions must be >= 1, got ", max_positions);
  if (head_dim < 2 || head_dim % 2 != 0)
    Fail("RoPE table: head_dim must be even and >= 2, got ", head_dim);
  if (!(theta > 0)) Fail("RoPE table: rope_theta must be > 0, got ", theta);
  const int64_t half = head_dim / 2;
  cos_.resize(static_cast<size_t>(max_positions * half));
  sin_.resize(static_cast<size_t>(max_positions * half));
  for (int64_t j = 0; j < half; ++j) {
    // Same expression as RopeScalar, so the table differs from it only by the final f32 rounding.
    const double inv_freq =
        std::pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(head_dim));
    for (int64_t p = 0; p < max_positions; ++p) {
      const double angle = static_cast<double>(p) * inv_freq;
      cos_[static_cast<size_t>(p * half + j)] = static_cast<float>(std::cos(angle));
      sin_[static_cast<size_t>(p * half + j)] = static_cast<float>(std::sin(angle));
    }
  }
}

void ApplyRope(float* x, const int32_t* positions, int64_t rows, int64_t heads, int64_t head_dim,
               const RopeTable& table) {
  if (head_dim != table.head_dim())
    Fail("RoPE: head_dim ", head_dim, " does not match the table's ", table.head_dim());
  for (int64_t t = 0; t < rows; ++t) {
    if (positions[t] < 0 || positions[t] >= table.max_positions())
      Fail("RoPE: row ", t, " is at position ", positions[t], ", outside the table's [0, ",
           table.max_positions(), ")");
  }
  const bool avx2 = UseAvx2();
  const int64_t row_size = heads * head_dim;
#pragma omp parallel for schedule(static) if (rows * row_size >= kParallelMinElements)
  for (int64_t t = 0; t < rows; ++t) {
    const float* cos = table.cos(positions[t]);
    const float* sin = table.sin(positions[t]);
    if (avx2) {
      RopeTokenAvx2(x + t * row_size, heads, head_dim, cos, sin);
    } else {
      RopeTokenPortable(x + t * row_size, heads, head_dim, cos, sin);
    }
  }
}

void RmsNorm(const float* x, const float* weight, int64_t rows, int64_t width, float eps,
             float* out) {
  const bool avx2 = UseAvx2();
#pragma omp parallel for schedule(static) if (rows * width >= kParallelMinElements)
  for (int64_t t = 0; t < rows; ++t) {
    if (avx2) {
      RmsNormRowAvx2(x + t * width, weight, width, eps, out + t * width);
    } else {
      RmsNormRowPortable(x + t * width, weight, width, eps, out + t * width);
    }
  }
}

void SwiGlu(const float* gate, const float* up, int64_t count, float* out) {
  const bool avx2 = UseAvx2();
  ForChunks(count, [&](int64_t begin, int64_t n) {
    if (avx2) {
      SwiGluAvx2(gate + begin, up + begin, n, out + begin);
    } else {
      SwiGluPortable(gate + begin, up + begin, n, out + begin);
    }
  });
}

void AddInPlace(float* x, const float* y, int64_t count) {
  const bool avx2 = UseAvx2();
  ForChunks(count, [&](int64_t begin, int64_t n) {
    if (avx2) {
      AddAvx2(x + begin, y + begin, n);
    } else {
      for (int64_t i = begin; i < begin + n; ++i) x[i] += y[i];
    }
  });
}

void StoreAs(const float* src, int64_t count, DType dtype, std::byte* dst) {
  if (count <= 0) return;
  if (dtype == DType::kF32) {
    std::memcpy(dst, src, static_cast<size_t>(count) * sizeof(float));
    return;
  }
  const bool avx2 = UseAvx2();
  ForChunks(count, [&](int64_t begin, int64_t n) {
    if (avx2) {
      ToBf16Avx2(src + begin, n, dst + 2 * begin);
    } else {
      ToBf16Portable(src + begin, n, dst + 2 * begin);
    }
  });
}

void LoadAs(const std::byte* src, int64_t count, DType dtype, float* dst) {
  if (count <= 0) return;
  if (dtype == DType::kF32) {
    std::memcpy(dst, src, static_cast<size_t>(count) * sizeof(float));
    return;
  }
  const bool avx2 = UseAvx2();
  ForChunks(count, [&](int64_t begin, int64_t n) {
    if (avx2) {
      FromBf16Avx2(src + 2 * begin, n, dst + begin);
    } else {
      FromBf16Portable(src + 2 * begin, n, dst + begin);
    }
  });
}

void RoundToBf16(const float* src, int64_t count, float* dst) {
  const bool avx2 = UseAvx2();
  ForChunks(count, [&](int64_t begin, int64_t n) {
    if (avx2) {
      RoundToBf16Avx2(src + begin, n, dst + begin);
    } else {
      for (int64_t i = begin; i < begin + n; ++i) dst[i] = Bf16ToF32(F32ToBf16(src[i]));
    }
  });
}

}  // namespace mixattn::ops
