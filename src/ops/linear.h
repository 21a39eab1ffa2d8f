// A dense layer without bias, y = x W^T, with its weights resident in f32 or bf16: the matmul of
// every projection in the engine (and later the trainer). Scalar reference: MatMulTransposedScalar.
//
// Legend: M = rows (tokens in the batch), K = in_features, N = out_features.
//
// Two paths, chosen per call by M. Timings below: development machine (AMD EPYC Zen 3, AVX2, no
// AVX-512), one thread, N = K = 512, best of 20-40 runs on a shared, busy machine.
//  * M <= kMaxSmallRows (decode batches): mixattn's own kernel loads each weight once per 4 rows
//    and takes its dot products with them (AVX-512 or AVX2 + FMA; portable loops elsewhere; each
//    row's sums run in the same order whatever M, so rows do not depend on their neighbours, and
//    LargeBatches::kRowInvariant keeps it for every M). AVX2 timings: M = 4: 36 us
//    against oneDNN gemm:jit's 50-63 us; M = 8: 71-85 us against 82 (f32) and 102 (widened bf16).
//    M = 1 matches oneDNN's f32 gemv (17-19 us), and bf16 weights take 11 us: decode is bound by
//    the bytes of weights read. From M = 16 oneDNN is faster (122 us against 4 passes of 36).
//  * M > kMaxSmallRows (prefill, training, and the mixed batches of continuous batching), unless
//    kRowInvariant: oneDNN
//    matmul with M as a runtime dimension, created on the first such call and cached in the object:
//    at most kMaxCachedPrimitives primitives per object whatever the sequence of M, so a server's
//    memory stays flat under varied batch sizes (issue 5; one primitive per distinct M grew it by
//    ~60 MiB in 10 s of tests/server/load_test.py, and took 70-160 us to create per new M). On
//    AVX2 it is the same gemm:jit as a fixed-M primitive. Fixed M (one primitive per M) against
//    runtime M, N = K = 512, one thread, best of 16 interleaved runs, f32 (us): M = 9: 81.5/81.4,
//    33: 209/208, 100: 568/566, 257: 1465/1480, 512: 2913/2946, 4096: 23995/24527; widened bf16
//    and N = 1536 or N = K = 64 likewise within +-2.5%, which is the noise here.
//
// bf16 contract: x is rounded to bf16 on each call (F32ToBf16: round to nearest even), multiplied
// by the bf16 weights, and accumulated in f32; y is f32. Where oneDNN has no bf16 matmul for this
// CPU (oneDNN 2.6 needs AVX-512 for one; on AVX2 primitive creation fails) or when asked to
// (Bf16Matmul::kWidenToF32), panels of the weights are widened to f32 (exact) and multiplied by
// oneDNN's f32 matmul: the same products and the same f32 sums, only the order of the additions
// differs. Widening costs ~20 us per 512 x 512 matrix, 5-10% at M = 64.
//
// Weight layout: plain [N, K] row-major (oneDNN's `ba` for its [K, N] weights), one copy for both
// paths: the small kernel needs rows of K, and on AVX2 oneDNN's preferred layout (format_tag::any,
// [K, N] `ab` at every M) is no faster at prefill sizes (M = 512, N = 512: 57 against 87 GFLOP/s
// from `ba`). On AVX-512 machines oneDNN's brgemm may prefer blocked layouts, but oneDNN 2.6's
// brgemm matmul takes no runtime dimensions, so with a runtime M the matmul there (native bf16
// included) is the gemm-based one as on AVX2; that could not be measured here.
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

// How a Linear multiplies batches of more than Linear::kMaxSmallRows rows.
enum class LargeBatches {
  kOneDnn,        // oneDNN's matmul: fast, but a row's sums run in another order than at <= 8 rows
  kRowInvariant,  // the small-batch kernel, 4 rows per pass: a row's result does not depend on the
                  // other rows of the call (batch-invariant decoding), slower on large batches
};

class Linear {
 public:
  // Batches of at most this many rows take the small-batch kernel (see the file comment).
  static constexpr int64_t kMaxSmallRows = 8;

  // weight[N, K] in f32, copied (and rounded when dtype is bf16) into the object. Fails
  // (mixattn::Error) unless both sizes are >= 1.
  Linear(const float* weight, int64_t out_features, int64_t in_features, DType dtype = DType::kBF16,
         Bf16Matmul bf16_matmul = Bf16Matmul::kAuto,
         LargeBatches large_batches = LargeBatches::kOneDnn);
  ~Linear();
  Linear(Linear&&) noexcept;
  Linear& operator=(Linear&&) noexcept;
  Linear(const Linear&) = delete;
  Linear& operator=(const Linear&) = delete;

  // Most oneDNN primitives one object keeps: one for the whole product, or for widened bf16 one per
  // panel width (full panels and a narrower last one). Independent of the row counts it is given.
  static constexpr int64_t kMaxCachedPrimitives = 2;

  // y[M, N] = x[M, K] W^T, y overwritten; x and y must not overlap. Not reentrant: Forward fills
  // scratch buffers and the oneDNN primitives owned by the object, so one object must not run on
  // two threads at once (it uses all OpenMP threads itself). mixattn's code allocates on the first
  // call with M > kMaxSmallRows (the primitives), on a larger M than before (scratch), and inside
  // oneDNN two data-less memory descriptors when M differs from the previous call's; gemm:jit (the
  // AVX2 path) also mallocs its packing buffers on every call (5 per matmul). Any M, in any order,
  // keeps memory bounded by the largest M.
  void Forward(const float* x, int64_t rows, float* y) const;

  int64_t out_features() const;
  int64_t in_features() const;
  DType dtype() const;
  // Bytes of weights one Forward reads: N * K * sizeof(dtype).
  int64_t weight_bytes() const;
  // The kernel Forward uses for `rows`, e.g. "mixattn:dot_avx2" or "onednn:gemm:jit" (for
  // benchmarks and logs). Creates the oneDNN primitives if `rows` needs them and they do not exist.
  std::string KernelName(int64_t rows) const;
  // oneDNN primitives the object holds now: 0 before the first call with M > kMaxSmallRows, then
  // 1 or 2, never more than kMaxCachedPrimitives (tests check the bound).
  int64_t cached_primitives() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mixattn::ops
