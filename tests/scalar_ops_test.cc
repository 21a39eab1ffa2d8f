#include "ops/scalar_ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/random.h"

namespace mixattn::ops {
namespace {

std::vector<float> RandomVector(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> out(n);
  for (float& x : out) x = static_cast<float>(rng.Normal());
  return out;
}

TEST(ScalarOpsTest, MatMulTransposedSmallExample) {
  const std::vector<float> x = {1, 2, 3, 4, 5, 6};   // [2, 3]
  const std::vector<float> w = {1, 0, -1, 2, 1, 0};  // [2, 3]
  std::vector<float> y(4);
  MatMulTransposedScalar(x.data(), w.data(), 2, 2, 3, y.data());
  EXPECT_EQ(y, (std::vector<float>{-2, 4, -2, 13}));
}

TEST(ScalarOpsTest, RmsNormHasUnitRms) {
  const std::vector<float> x = RandomVector(3 * 10, 1);
  const std::vector<float> ones(10, 1.0f);
  std::vector<float> out(30);
  RmsNormScalar(x.data(), ones.data(), 3, 10, 0.0, out.data());
  for (int t = 0; t < 3; ++t) {
    double sum = 0;
    for (int c = 0; c < 10; ++c) sum += out[t * 10 + c] * out[t * 10 + c];
    EXPECT_NEAR(sum / 10, 1.0, 1e-6);
    EXPECT_NEAR(out[t * 10] / x[t * 10], out[t * 10 + 1] / x[t * 10 + 1], 1e-5);
  }
}

TEST(ScalarOpsTest, RopeRotatesPairsAndKeepsNorms) {
  const int64_t tokens = 5, heads = 2, dim = 8;
  std::vector<float> x = RandomVector(tokens * heads * dim, 2);
  const std::vector<float> original = x;
  RopeScalar(x.data(), tokens, heads, dim, 0, 10000.0);
  for (int64_t i = 0; i < heads * dim; ++i)
    EXPECT_FLOAT_EQ(x[i], original[i]) << "position 0 is the identity";
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t j = 0; j < dim / 2; ++j) {
        const float* a = &original[(t * heads + h) * dim];
        const float* b = &x[(t * heads + h) * dim];
        EXPECT_NEAR(a[j] * a[j] + a[j + 4] * a[j + 4], b[j] * b[j] + b[j + 4] * b[j + 4], 1e-5);
      }
    }
  }
  // Pair 0 rotates by angle p (theta^0 = 1): check position 3 against the formula.
  const float* a = &original[3 * heads * dim];
  const float* b = &x[3 * heads * dim];
  EXPECT_NEAR(b[0], a[0] * std::cos(3.0) - a[4] * std::sin(3.0), 1e-5);
  EXPECT_NEAR(b[4], a[4] * std::cos(3.0) + a[0] * std::sin(3.0), 1e-5);
}

TEST(ScalarOpsTest, RopeRelativePositionInvariance) {
  // q(p) . k(j) after RoPE depends only on p - j.
  const int64_t dim = 16;
  const std::vector<float> q = RandomVector(dim, 3), k = RandomVector(dim, 4);
  auto rotated_dot = [&](int64_t p, int64_t j) {
    std::vector<float> qr = q, kr = k;
    RopeScalar(qr.data(), 1, 1, dim, p, 500.0);
    RopeScalar(kr.data(), 1, 1, dim, j, 500.0);
    double dot = 0;
    for (int64_t d = 0; d < dim; ++d) dot += qr[d] * kr[d];
    return dot;
  };
  EXPECT_NEAR(rotated_dot(7, 3), rotated_dot(104, 100), 1e-4);
}

TEST(ScalarOpsTest, SwiGlu) {
  const std::vector<float> gate = {0.0f, 1.0f, -2.0f}, up = {3.0f, 2.0f, 1.0f};
  std::vector<float> out(3);
  SwiGluScalar(gate.data(), up.data(), 3, out.data());
  EXPECT_FLOAT_EQ(out[0], 0.0f);
  EXPECT_NEAR(out[1], 2.0 / (1.0 + std::exp(-1.0)), 1e-6);
  EXPECT_NEAR(out[2], -2.0 / (1.0 + std::exp(2.0)), 1e-6);
}

TEST(ScalarOpsTest, AttentionWithZeroQueryAveragesTheWindow) {
  // q = 0 gives equal scores, so the output is the mean of the visible values.
  const int64_t tokens = 6, heads = 2, kv_heads = 1, dim = 4, window = 3;
  const std::vector<float> q(tokens * heads * dim, 0.0f);
  const std::vector<float> k = RandomVector(tokens * kv_heads * dim, 5);
  const std::vector<float> v = RandomVector(tokens * kv_heads * dim, 6);
  std::vector<float> out(tokens * heads * dim);
  CausalAttentionScalar(q.data(), k.data(), v.data(), tokens, heads, kv_heads, dim, window,
                        out.data());
  for (int64_t p = 0; p < tokens; ++p) {
    const int64_t first = std::max<int64_t>(0, p - window + 1);
    for (int64_t d = 0; d < dim; ++d) {
      double mean = 0;
      for (int64_t j = first; j <= p; ++j) mean += v[j * dim + d];
      mean /= static_cast<double>(p - first + 1);
      EXPECT_NEAR(out[(p * heads + 0) * dim + d], mean, 1e-6);
      EXPECT_NEAR(out[(p * heads + 1) * dim + d], mean, 1e-6);
    }
  }
}

TEST(ScalarOpsTest, AttentionGroupsQueryHeadsOntoKvHeads) {
  // 4 query heads, 2 KV heads: heads 0,1 read KV head 0 and heads 2,3 read KV head 1. With one
  // token, the output is that token's value of the right KV head.
  const int64_t heads = 4, kv_heads = 2, dim = 3;
  const std::vector<float> q = RandomVector(heads * dim, 7);
  const std::vector<float> k = RandomVector(kv_heads * dim, 8);
  const std::vector<float> v = {1, 2, 3, 10, 20, 30};
  std::vector<float> out(heads * dim);
  CausalAttentionScalar(q.data(), k.data(), v.data(), 1, heads, kv_heads, dim, 0, out.data());
  EXPECT_EQ(out, (std::vector<float>{1, 2, 3, 1, 2, 3, 10, 20, 30, 10, 20, 30}));
}

}  // namespace
}  // namespace mixattn::ops
