// Fast elementwise and row-wise kernels of a transformer block: RMSNorm, RoPE, SwiGLU, the
// residual add, and f32 <-> KV-cache element conversion. Each has a scalar reference in
// scalar_ops.h (or core/dtype.h for bf16) that tests/elementwise_test.cc sweeps odd shapes against.
//
// Legend: T = rows (tokens), H = width, NH = heads, D = head dim, P = positions in a RopeTable.
// All tensors are row-major and contiguous.
//
// Vectorisation: AVX2 + FMA intrinsics, chosen at run time when the CPU has them, else portable
// loops. Why not AVX-512: the development machine (AMD EPYC, family 25 model 1) exposes no
// AVX-512 state (XCR0 = 7), so an AVX-512 path could not be tested here; these kernels are memory-
// or L1-bound and small next to the matmuls, so 256-bit vectors lose little on an AVX-512 CPU.
// Large inputs are split across OpenMP threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace mixattn::ops {

// Instruction sets the kernels here and in linear.cc choose between at run time, in order: each
// level includes the ones before it. The elementwise kernels have AVX2 paths (used at kAvx2 and
// above); linear.cc's small-batch kernel has an AVX-512 one as well.
enum class SimdLevel { kScalar, kAvx2, kAvx512 };

// What this CPU supports: AVX2 and FMA -> kAvx2; AVX-512F as well -> kAvx512.
SimdLevel DetectedSimdLevel();
// What the kernels use now: the detected level, lowered by SetSimdLevelCap.
SimdLevel ActiveSimdLevel();
// Lets tests and benchmarks force a lower level (kScalar: the portable loops) than the machine
// has. Not meant to be changed while kernels run on other threads.
void SetSimdLevelCap(SimdLevel cap);

// Precomputed RoPE rotation angles for positions 0 .. P-1, rotate-half layout (see RopeScalar):
// angle(p, j) = p * theta^(-2j/D) for j < D/2, cos and sin computed in double, stored in f32.
class RopeTable {
 public:
  // Fails (mixattn::Error) unless max_positions >= 1, head_dim is even and >= 2, and theta > 0.
  RopeTable(int64_t max_positions, int64_t head_dim, double theta);

  int64_t max_positions() const { return max_positions_; }
  int64_t head_dim() const { return head_dim_; }
  double theta() const { return theta_; }
  // [D/2] values for one position in [0, P).
  const float* cos(int64_t position) const { return cos_.data() + position * (head_dim_ / 2); }
  const float* sin(int64_t position) const { return sin_.data() + position * (head_dim_ / 2); }

 private:
  int64_t max_positions_;
  int64_t head_dim_;
  double theta_;
  std::vector<float> cos_;  // [P, D/2]
  std::vector<float> sin_;  // [P, D/2]
};

// Rotary position embedding in place on x[T, NH, D]; row t is at absolute position positions[t]
// (rows of different sequences are batched together, so positions need not be consecutive).
// Fails if head_dim differs from the table's or a position is outside [0, table.max_positions()).
void ApplyRope(float* x, const int32_t* positions, int64_t rows, int64_t heads, int64_t head_dim,
               const RopeTable& table);

// out[T, H] = x / sqrt(mean(x^2) + eps) * weight[H]. The sum of squares accumulates in f32 with
// 32 lanes; out may be x.
void RmsNorm(const float* x, const float* weight, int64_t rows, int64_t width, float eps,
             float* out);

// out[F] = silu(gate) * up, silu(a) = a / (1 + e^-a); out may be gate or up. e^-a uses a degree-6
// polynomial (Cephes expf, about 1 ulp) on AVX2.
void SwiGlu(const float* gate, const float* up, int64_t count, float* out);

// x[F] += y[F]   (the residual add)
void AddInPlace(float* x, const float* y, int64_t count);

// Stores f32 values as `dtype` elements (the KV cache's element type) and reads them back. bf16
// rounds to nearest even exactly as F32ToBf16 (NaN stays NaN); dst need not be aligned.
void StoreAs(const float* src, int64_t count, DType dtype, std::byte* dst);
void LoadAs(const std::byte* src, int64_t count, DType dtype, float* dst);

// dst[F] = Bf16ToF32(F32ToBf16(src)): the f32 value a bf16 store would read back. dst may be src.
void RoundToBf16(const float* src, int64_t count, float* dst);

}  // namespace mixattn::ops
