// A dense layer without bias, y = x W^T, with its weights resident in f32 or bf16: the matmul of
// every projection in the engine (and later the trainer). Scalar reference: MatMulTransposedScalar.
//
// Legend: M = rows (tokens in the batch), K = in_features, N = out_features.
//
// Two paths, chosen per call by M:
//  * M <= kMaxSmallRows (decode): mixattn's own kernel reads each weight once and takes its dot
//    products with all M rows (AVX2 + FMA, portable loops elsewhere). Decode is bound by the bytes
//    of weights read, so bf16 weights halve its time; oneDNN's gemm on this path packs the
//    operands first and was 2-3x slower at M = 1..4 on the development machine.
//  * M > kMaxSmallRows (prefill, training): oneDNN matmul, one primitive per distinct M, created on
//    the first call with that M and cached in the object.
//
// bf16 contract: x is rounded to bf16 on each call (F32ToBf16: round to nearest even), multiplied
// by the bf16 weights, and accumulated in f32; y is f32. Where oneDNN has no bf16 matmul for this
// CPU (it needs AVX-512; AVX2 machines have none) or when asked to (Bf16Matmul::kWidenToF32),
// panels of the weights are widened to f32 (exact) and multiplied by oneDNN's f32 matmul: the same
// products and the same f32 sums, only the order of the additions differs.
//
// Weight layout: plain [N, K] row-major (oneDNN's `ba` for its [K, N] weights). On the AVX2
// machine oneDNN's preferred layout (format_tag::any) is [K, N] `ab` at every M measured; the small
// kernel needs rows of K, and gemm:jit runs as fast from `ba`, so one plain copy serves both paths.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/dtype.h"

namespace mixattn::ops {

// How a bf16 Linear multiplies batches of more than Linear::kMaxSmallRows rows.
enum class Bf16Matmul {
  kAuto,        // oneDNN's bf16 matmul where this CPU has one, else kWidenToF32
  kWidenToF32,  // widen weight panels to f32, oneDNN f32 matmul (so tests cover it everywhere)
};

class Linear {
 public:
  // Batches of at most this many rows take the small-batch kernel (see the file comment).
  static constexpr int64_t kMaxSmallRows = 4;

  // weight[N, K] in f32, copied (and rounded when dtype is bf16) into the object. Fails
  // (mixattn::Error) unless both sizes are >= 1.
  Linear(const float* weight, int64_t out_features, int64_t in_features, DType dtype = DType::kBF16,
         Bf16Matmul bf16_matmul = Bf16Matmul::kAuto);
  ~Linear();
  Linear(Linear&&) noexcept;
  Linear& operator=(Linear&&) noexcept;
  Linear(const Linear&) = delete;
  Linear& operator=(const Linear&) = delete;

  // y[M, N] = x[M, K] W^T, y overwritten; x and y must not overlap. Not reentrant: Forward fills
  // scratch buffers and a per-M cache of oneDNN primitives owned by the object, so one object must
  // not run on two threads at once (it uses all OpenMP threads itself). It allocates only on the
  // first call with a given M (a primitive) or a larger M than before (scratch).
  void Forward(const float* x, int64_t rows, float* y) const;

  int64_t out_features() const;
  int64_t in_features() const;
  DType dtype() const;
  // Bytes of weights one Forward reads: N * K * sizeof(dtype).
  int64_t weight_bytes() const;
  // The kernel Forward uses for `rows`, e.g. "mixattn:dot_avx2" or "onednn:gemm:jit" (for
  // benchmarks and logs). Creates the primitive for `rows` if it does not exist yet.
  std::string KernelName(int64_t rows) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mixattn::ops
