// Linear (y[M, N] = x[M, K] W[N, K]^T) against MatMulTransposedScalar over odd shapes, for both
// weight types, both bf16 matmul paths and every instruction set this machine has.
#include "ops/linear.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/random.h"
#include "ops/elementwise.h"
#include "ops/scalar_ops.h"
#include "test_util.h"

namespace mixattn::ops {
namespace {

// Rows on both sides of Linear::kMaxSmallRows (small-batch kernel vs oneDNN); sizes cover each
// of the bf16 kernel's paths over K (two-block steps, one block, a scalar tail).
constexpr int64_t kRows[] = {1, 2, 3, 4, 5, 8, 9, 17, 64};
constexpr int64_t kSizes[] = {1, 7, 64, 100, 120, 257, 512};

// f32 accumulation: a sum of K products carries a relative error of about sqrt(K) * 2^-24 in
// practice (K * 2^-24 in the worst case, 3e-5 at K = 512), measured against sum_k |x_k w_k|.
constexpr double kF32Tolerance = 1e-5;
// bf16 against the unrounded f32 product: each bf16 rounding (8-bit significand, round to nearest)
// moves a value by at most u = 2^-8 relative, so |x~ w~ - x w| <= (2u + u^2) |x w| for every
// product, and the sum adds the f32 accumulation error on top. This is a worst-case bound, not a
// statistical one: it holds for every element and every shape.
constexpr double kBf16Tolerance = 2.0 / 256 + 1.0 / 65536 + kF32Tolerance;

std::vector<float> RandomVector(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> out(static_cast<size_t>(n));
  for (float& x : out) x = static_cast<float>(rng.Normal());
  return out;
}

std::vector<float> RoundedToBf16(const std::vector<float>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = Bf16ToF32(F32ToBf16(x[i]));
  return out;
}

std::vector<float> Abs(const std::vector<float>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = std::fabs(x[i]);
  return out;
}

// Expects |y - want| <= tolerance * scale elementwise, scale[m, n] = sum_k |x[m, k] w[n, k]|: the
// error a dot product can carry, so cancellation in `want` does not make the test flaky.
void ExpectWithin(const std::vector<float>& y, const std::vector<float>& want,
                  const std::vector<float>& scale, double tolerance, const std::string& what) {
  ASSERT_EQ(y.size(), want.size());
  int failures = 0;
  for (size_t i = 0; i < y.size() && failures < 5; ++i) {
    const double bound = tolerance * scale[i] + 1e-30;
    if (!(std::fabs(double{y[i]} - want[i]) <= bound)) {
      ADD_FAILURE() << what << ": element " << i << " is " << y[i] << ", want " << want[i]
                    << " within " << bound;
      ++failures;
    }
  }
}

// Instruction sets this machine has: the portable loops, and AVX2 and AVX-512 where present.
std::vector<SimdLevel> SimdLevels() {
  std::vector<SimdLevel> levels;
  for (SimdLevel level : {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512})
    if (level <= DetectedSimdLevel()) levels.push_back(level);
  return levels;
}

const char* SimdName(SimdLevel level) {
  return level == SimdLevel::kAvx512 ? "avx512" : level == SimdLevel::kAvx2 ? "avx2" : "portable";
}

std::string ShapeName(int64_t rows, int64_t n, int64_t k) {
  return "M=" + std::to_string(rows) + " N=" + std::to_string(n) + " K=" + std::to_string(k);
}

// References for one shape, computed once and checked against every kernel variant.
struct Reference {
  std::vector<float> x;        // [M, K]
  std::vector<float> exact;    // [M, N] x W^T in double
  std::vector<float> rounded;  // [M, N] bf16(x) bf16(W)^T in double
  std::vector<float> scale;    // [M, N] |x| |W|^T
};

Reference MakeReference(const std::vector<float>& w, const std::vector<float>& w_rounded,
                        int64_t rows, int64_t n, int64_t k, uint64_t seed) {
  Reference ref;
  ref.x = RandomVector(rows * k, seed);
  const size_t size = static_cast<size_t>(rows * n);
  ref.exact.resize(size);
  ref.rounded.resize(size);
  ref.scale.resize(size);
  MatMulTransposedScalar(ref.x.data(), w.data(), rows, n, k, ref.exact.data());
  MatMulTransposedScalar(RoundedToBf16(ref.x).data(), w_rounded.data(), rows, n, k,
                         ref.rounded.data());
  MatMulTransposedScalar(Abs(ref.x).data(), Abs(w).data(), rows, n, k, ref.scale.data());
  return ref;
}

// Every shape of the sweep against every kernel variant: f32 weights, bf16 weights on both matmul
// paths (kAuto is oneDNN's native bf16 matmul where the CPU has one, else widening), each with the
// portable loops and with AVX2.
TEST(LinearTest, MatchesScalarOnOddShapes) {
  for (int64_t n : kSizes) {
    for (int64_t k : kSizes) {
      const std::vector<float> w = RandomVector(n * k, 100 + n * 1000 + k);
      const std::vector<float> w_rounded = RoundedToBf16(w);
      const Linear f32(w.data(), n, k, DType::kF32);
      const Linear bf16_auto(w.data(), n, k, DType::kBF16, Bf16Matmul::kAuto);
      const Linear bf16_widened(w.data(), n, k, DType::kBF16, Bf16Matmul::kWidenToF32);
      for (int64_t rows : kRows) {
        const Reference ref = MakeReference(w, w_rounded, rows, n, k, rows * 7 + k);
        for (SimdLevel level : SimdLevels()) {
          SetSimdLevelCap(level);
          std::vector<float> y(ref.exact.size());
          for (const Linear* linear : {&f32, &bf16_auto, &bf16_widened}) {
            std::fill(y.begin(), y.end(), NAN);
            linear->Forward(ref.x.data(), rows, y.data());
            const std::string what = ShapeName(rows, n, k) + " " + SimdName(level) + " " +
                                     std::string(DTypeName(linear->dtype())) + " " +
                                     linear->KernelName(rows);
            if (linear->dtype() == DType::kF32) {
              ExpectWithin(y, ref.exact, ref.scale, kF32Tolerance, what);
            } else {
              ExpectWithin(y, ref.rounded, ref.scale, kF32Tolerance, what + " vs rounded operands");
              ExpectWithin(y, ref.exact, ref.scale, kBf16Tolerance, what + " vs f32 operands");
            }
          }
        }
        SetSimdLevelCap(SimdLevel::kAvx512);  // no cap
      }
    }
  }
}

// One object serves decode batches and prefill chunks: any M in any order, results that depend
// only on the input (the memory descriptors rebuilt per M and the grown scratch must not leak
// between calls).
TEST(LinearTest, SameObjectTakesAnyRowCountInAnyOrder) {
  const int64_t n = 100, k = 257;
  const std::vector<float> w = RandomVector(n * k, 3);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const Linear linear(w.data(), n, k, dtype);
    const std::vector<float> w_used = dtype == DType::kF32 ? w : RoundedToBf16(w);
    std::vector<std::vector<float>> first_result(300);
    for (int64_t rows : {64, 1, 17, 3, 200, 64, 7, 1, 9, 200, 17, 2}) {
      const std::vector<float> x = RandomVector(rows * k, static_cast<uint64_t>(rows));
      std::vector<float> y(static_cast<size_t>(rows * n), NAN), want(y.size()), scale(y.size());
      linear.Forward(x.data(), rows, y.data());
      const std::vector<float> x_used = dtype == DType::kF32 ? x : RoundedToBf16(x);
      MatMulTransposedScalar(x_used.data(), w_used.data(), rows, n, k, want.data());
      MatMulTransposedScalar(Abs(x).data(), Abs(w).data(), rows, n, k, scale.data());
      ExpectWithin(y, want, scale, kF32Tolerance, ShapeName(rows, n, k));
      std::vector<float>& first = first_result[static_cast<size_t>(rows)];
      if (first.empty()) {
        first = y;
      } else {
        EXPECT_EQ(y, first) << "M=" << rows << " is not deterministic across calls";
      }
    }
  }
}

// Batch invariance up to kMaxSmallRows: a row's result is bit for bit the same whether it is
// multiplied alone or beside up to 7 other rows, on every instruction set, so a decoding request's
// logits do not depend on how many others share its step (at small batches). Shapes with a K tail
// (K = 100, 257) and full blocks only (K = 512).
TEST(LinearTest, SmallBatchRowsDoNotDependOnTheirNeighbours) {
  const int64_t n = 37;
  for (int64_t k : {100, 257, 512}) {
    const std::vector<float> w = RandomVector(n * k, 11 + static_cast<uint64_t>(k));
    const std::vector<float> x = RandomVector(Linear::kMaxSmallRows * k, 12);
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      const Linear linear(w.data(), n, k, dtype);
      for (SimdLevel level : SimdLevels()) {
        SetSimdLevelCap(level);
        std::vector<float> alone(static_cast<size_t>(Linear::kMaxSmallRows * n));
        for (int64_t r = 0; r < Linear::kMaxSmallRows; ++r)
          linear.Forward(x.data() + r * k, 1, alone.data() + r * n);
        for (int64_t rows = 2; rows <= Linear::kMaxSmallRows; ++rows) {
          std::vector<float> together(static_cast<size_t>(rows * n));
          linear.Forward(x.data(), rows, together.data());
          EXPECT_TRUE(std::equal(together.begin(), together.end(), alone.begin()))
              << "K=" << k << " " << DTypeName(dtype) << " " << SimdName(level) << ": M=" << rows
              << " differs from the rows alone";
        }
      }
      SetSimdLevelCap(SimdLevel::kAvx512);  // no cap
    }
  }
}

// LargeBatches::kRowInvariant extends that to any M (17 and 64 rows here, where kOneDnn would hand
// the product to oneDNN), and the results still match the reference.
TEST(LinearTest, RowInvariantRowsDoNotDependOnTheirNeighboursAtAnyM) {
  const int64_t n = 37, k = 257;
  const std::vector<float> w = RandomVector(n * k, 21);
  const std::vector<float> x = RandomVector(64 * k, 22);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const Linear linear(w.data(), n, k, dtype, Bf16Matmul::kAuto, LargeBatches::kRowInvariant);
    const std::vector<float> w_used = dtype == DType::kF32 ? w : RoundedToBf16(w);
    const std::vector<float> x_used = dtype == DType::kF32 ? x : RoundedToBf16(x);
    for (SimdLevel level : SimdLevels()) {
      SetSimdLevelCap(level);
      std::vector<float> alone(static_cast<size_t>(64 * n));
      for (int64_t r = 0; r < 64; ++r) linear.Forward(x.data() + r * k, 1, alone.data() + r * n);
      for (int64_t rows : {17, 64}) {
        std::vector<float> together(static_cast<size_t>(rows * n)), want(together.size()),
            scale(together.size());
        linear.Forward(x.data(), rows, together.data());
        EXPECT_TRUE(std::equal(together.begin(), together.end(), alone.begin()))
            << DTypeName(dtype) << " " << SimdName(level) << ": M=" << rows;
        EXPECT_EQ(linear.KernelName(rows), linear.KernelName(1));
        MatMulTransposedScalar(x_used.data(), w_used.data(), rows, n, k, want.data());
        MatMulTransposedScalar(Abs(x).data(), Abs(w).data(), rows, n, k, scale.data());
        ExpectWithin(together, want, scale, kF32Tolerance, ShapeName(rows, n, k));
      }
    }
    SetSimdLevelCap(SimdLevel::kAvx512);  // no cap
  }
}

// A server meets every batch size from 1 to max_batch_tokens (issue 5): one object takes every M
// from kMaxSmallRows + 1 to 600, a few large ones and then small ones again, stays correct, and
// keeps at most Linear::kMaxCachedPrimitives oneDNN primitives throughout, built once. Shape: K =
// 1024 makes the widened bf16 panels 64 rows wide, so N = 72 has a narrower last panel and that
// path runs both of its primitives. Row m of y depends only on row m of x, so every M is checked
// against the first M rows of one reference.
TEST(LinearTest, EveryRowCountKeepsBoundedPrimitives) {
  const int64_t n = 72, k = 1024;
  std::vector<int64_t> row_counts;
  for (int64_t rows = Linear::kMaxSmallRows + 1; rows <= 600; ++rows) row_counts.push_back(rows);
  for (int64_t rows : {1000, 2048, 4097, 17, 17, 9, 600}) row_counts.push_back(rows);
  const int64_t max_rows = 4097;
  const std::vector<float> w = RandomVector(n * k, 7);
  const Reference ref = MakeReference(w, RoundedToBf16(w), max_rows, n, k, 8);
  const auto prefix = [n](const std::vector<float>& v, int64_t rows) {
    return std::vector<float>(v.begin(), v.begin() + rows * n);
  };
  const Linear f32(w.data(), n, k, DType::kF32);
  const Linear bf16_auto(w.data(), n, k, DType::kBF16, Bf16Matmul::kAuto);
  const Linear bf16_widened(w.data(), n, k, DType::kBF16, Bf16Matmul::kWidenToF32);
  for (const Linear* linear : {&f32, &bf16_auto, &bf16_widened}) {
    std::vector<float> small(static_cast<size_t>(Linear::kMaxSmallRows * n));
    linear->Forward(ref.x.data(), Linear::kMaxSmallRows, small.data());
    EXPECT_EQ(linear->cached_primitives(), 0) << "the small-batch kernel needs no primitive";
    int64_t built = -1;
    for (int64_t rows : row_counts) {
      std::vector<float> y(static_cast<size_t>(rows * n), NAN);
      linear->Forward(ref.x.data(), rows, y.data());
      const std::string what = ShapeName(rows, n, k) + " " +
                               std::string(DTypeName(linear->dtype())) + " " +
                               linear->KernelName(rows);
      const std::vector<float> scale = prefix(ref.scale, rows);
      if (linear->dtype() == DType::kF32) {
        ExpectWithin(y, prefix(ref.exact, rows), scale, kF32Tolerance, what);
      } else {
        ExpectWithin(y, prefix(ref.rounded, rows), scale, kF32Tolerance,
                     what + " vs rounded operands");
        ExpectWithin(y, prefix(ref.exact, rows), scale, kBf16Tolerance, what + " vs f32 operands");
      }
      if (built < 0) built = linear->cached_primitives();
      ASSERT_GE(built, 1) << what;
      ASSERT_LE(linear->cached_primitives(), Linear::kMaxCachedPrimitives) << what;
      ASSERT_EQ(linear->cached_primitives(), built) << what << ": primitives were added";
    }
    if (linear == &bf16_widened) {
      EXPECT_EQ(built, 2) << "full panels and the last panel";
    }
  }
}

TEST(LinearTest, ReportsSizesAndKernels) {
  const std::vector<float> w = RandomVector(7 * 5, 4);
  const Linear bf16(w.data(), 7, 5, DType::kBF16);
  EXPECT_EQ(bf16.out_features(), 7);
  EXPECT_EQ(bf16.in_features(), 5);
  EXPECT_EQ(bf16.dtype(), DType::kBF16);
  EXPECT_EQ(bf16.weight_bytes(), 7 * 5 * 2);
  const Linear f32(w.data(), 7, 5, DType::kF32);
  EXPECT_EQ(f32.weight_bytes(), 7 * 5 * 4);
  EXPECT_EQ(f32.KernelName(1).rfind("mixattn:", 0), 0u) << f32.KernelName(1);
  EXPECT_EQ(f32.KernelName(Linear::kMaxSmallRows + 1).rfind("onednn:", 0), 0u);
  const Linear widened(w.data(), 7, 5, DType::kBF16, Bf16Matmul::kWidenToF32);
  EXPECT_EQ(widened.KernelName(64).rfind("widen_bf16+onednn:", 0), 0u);
  // Zero rows is a no-op.
  float untouched = 42;
  f32.Forward(nullptr, 0, &untouched);
  EXPECT_EQ(untouched, 42);
}

TEST(LinearTest, RejectsEmptyShapes) {
  const float w = 1;
  EXPECT_NE(testing::ErrorMessage([&] { Linear(&w, 0, 1, DType::kF32); }).find("out_features"),
            std::string::npos);
  EXPECT_NE(testing::ErrorMessage([&] { Linear(&w, 1, -3, DType::kBF16); }).find("-3"),
            std::string::npos);
}

TEST(LinearTest, MovedObjectKeepsWorking) {
  const std::vector<float> w = RandomVector(64 * 64, 5), x = RandomVector(8 * 64, 6);
  Linear original(w.data(), 64, 64, DType::kF32);
  std::vector<float> before(8 * 64), after(8 * 64);
  original.Forward(x.data(), 8, before.data());
  const Linear moved = std::move(original);
  moved.Forward(x.data(), 8, after.data());
  EXPECT_EQ(before, after);
}

}  // namespace
}  // namespace mixattn::ops
