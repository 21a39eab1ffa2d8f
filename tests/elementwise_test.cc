// The fast elementwise kernels against their scalar references (scalar_ops.h, core/dtype.h) over
// odd widths and head dims, on every instruction set this machine has.
#include "ops/elementwise.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/random.h"
#include "ops/scalar_ops.h"
#include "test_util.h"

namespace mixattn::ops {
namespace {

// Widths around the 8-lane vectors and the 32-lane unrolled loop; 70000 crosses the threshold
// above which the kernels split work across OpenMP threads.
constexpr int64_t kWidths[] = {1, 3, 16, 17, 100, 1000};
constexpr int64_t kCounts[] = {1, 3, 15, 16, 17, 100, 1000, 70000};
constexpr int64_t kHeadDims[] = {2, 8, 64, 128};

std::vector<float> RandomVector(int64_t n, uint64_t seed, double stddev = 1.0) {
  Rng rng(seed);
  std::vector<float> out(static_cast<size_t>(n));
  for (float& x : out) x = static_cast<float>(stddev * rng.Normal());
  return out;
}

// Expects |actual - want| <= relative * |want| + absolute elementwise.
void ExpectClose(const std::vector<float>& actual, const std::vector<float>& want, double relative,
                 double absolute, const std::string& what) {
  ASSERT_EQ(actual.size(), want.size()) << what;
  int failures = 0;
  for (size_t i = 0; i < actual.size() && failures < 5; ++i) {
    const double bound = relative * std::fabs(want[i]) + absolute;
    if (!(std::fabs(double{actual[i]} - want[i]) <= bound)) {
      ADD_FAILURE() << what << ": element " << i << " is " << actual[i] << ", want " << want[i];
      ++failures;
    }
  }
}

uint32_t Bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  return bits;
}

float FromBits(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, 4);
  return x;
}

// Runs body once per instruction set this machine has: the portable loops, then AVX2.
template <typename Body>
void ForEachSimdLevel(const Body& body) {
  for (SimdLevel level : {SimdLevel::kScalar, SimdLevel::kAvx2}) {
    if (level > DetectedSimdLevel()) continue;
    SetSimdLevelCap(level);
    SCOPED_TRACE(level == SimdLevel::kAvx2 ? "simd avx2" : "simd portable");
    body();
  }
  SetSimdLevelCap(SimdLevel::kAvx512);  // no cap
}

TEST(ElementwiseTest, RmsNormMatchesScalar) {
  ForEachSimdLevel([] {
    for (int64_t width : kWidths) {
      for (int64_t rows : {1, 3, 70}) {
        const std::vector<float> x = RandomVector(rows * width, 1 + width, 2.0);
        const std::vector<float> weight = RandomVector(width, 2 + width);
        std::vector<float> out(x.size()), want(x.size());
        RmsNorm(x.data(), weight.data(), rows, width, 1e-5f, out.data());
        RmsNormScalar(x.data(), weight.data(), rows, width, double{1e-5f}, want.data());
        // f32 sum of squares over <= 1000 terms and three f32 roundings after it.
        const std::string what = "width " + std::to_string(width) + " rows " + std::to_string(rows);
        ExpectClose(out, want, 2e-6, 1e-7, what);
        std::vector<float> in_place = x;
        RmsNorm(in_place.data(), weight.data(), rows, width, 1e-5f, in_place.data());
        EXPECT_EQ(in_place, out) << what << ": out = x must give the same result";
      }
    }
  });
}

TEST(ElementwiseTest, RopeAtConsecutivePositionsMatchesScalar) {
  ForEachSimdLevel([] {
    for (int64_t head_dim : kHeadDims) {
      for (int64_t heads : {1, 3}) {
        const int64_t rows = 37, first_position = 5;
        const RopeTable table(4096, head_dim, 10000.0);
        std::vector<float> x = RandomVector(rows * heads * head_dim, 3 + head_dim);
        std::vector<float> want = x;
        std::vector<int32_t> positions(rows);
        for (int64_t t = 0; t < rows; ++t) positions[t] = static_cast<int32_t>(first_position + t);
        ApplyRope(x.data(), positions.data(), rows, heads, head_dim, table);
        RopeScalar(want.data(), rows, heads, head_dim, first_position, 10000.0);
        // cos and sin rounded to f32 (2^-24 relative) and two f32 roundings per output.
        ExpectClose(x, want, 1e-6, 1e-6, "head_dim " + std::to_string(head_dim));
      }
    }
  });
}

// Rows of different sequences are batched: row t is at any position, in any order.
TEST(ElementwiseTest, RopeAtArbitraryPositionsMatchesScalarRowByRow) {
  ForEachSimdLevel([] {
    for (int64_t head_dim : kHeadDims) {
      const int64_t rows = 300, heads = 4, max_positions = 40000;  // 300 * 4 * 128 > 65536
      const RopeTable table(max_positions, head_dim, 500000.0);
      Rng rng(7 + head_dim);
      std::vector<int32_t> positions(rows);
      for (int32_t& p : positions) p = static_cast<int32_t>(rng.Below(max_positions));
      positions[0] = 0;
      positions[1] = max_positions - 1;
      std::vector<float> x = RandomVector(rows * heads * head_dim, 8 + head_dim);
      std::vector<float> want = x;
      ApplyRope(x.data(), positions.data(), rows, heads, head_dim, table);
      for (int64_t t = 0; t < rows; ++t)
        RopeScalar(want.data() + t * heads * head_dim, 1, heads, head_dim, positions[t], 500000.0);
      ExpectClose(x, want, 1e-6, 1e-6, "head_dim " + std::to_string(head_dim));
    }
  });
}

TEST(ElementwiseTest, RopeRejectsBadTablesAndPositions) {
  EXPECT_NE(testing::ErrorMessage([] { RopeTable(16, 7, 10000.0); }).find("even"),
            std::string::npos);
  EXPECT_NE(testing::ErrorMessage([] { RopeTable(0, 8, 10000.0); }).find("max_positions"),
            std::string::npos);
  EXPECT_NE(testing::ErrorMessage([] { RopeTable(16, 8, 0.0); }).find("theta"), std::string::npos);
  const RopeTable table(16, 8, 10000.0);
  std::vector<float> x(2 * 8);
  const int32_t beyond[] = {3, 16};
  EXPECT_NE(testing::ErrorMessage([&] {
              ApplyRope(x.data(), beyond, 2, 1, 8, table);
            }).find("row 1 is at position 16"),
            std::string::npos);
  const int32_t negative[] = {-1};
  EXPECT_NE(testing::ErrorMessage([&] {
              ApplyRope(x.data(), negative, 1, 1, 8, table);
            }).find("position -1"),
            std::string::npos);
  const int32_t fine[] = {0};
  EXPECT_NE(
      testing::ErrorMessage([&] { ApplyRope(x.data(), fine, 1, 2, 4, table); }).find("head_dim 4"),
      std::string::npos);
}

TEST(ElementwiseTest, SwiGluMatchesScalar) {
  ForEachSimdLevel([] {
    for (int64_t count : kCounts) {
      std::vector<float> gate = RandomVector(count, 9 + count, 4.0);
      const std::vector<float> up = RandomVector(count, 10 + count);
      // Saturated tails of the exponential: e^-a overflows or vanishes.
      const float extremes[] = {0.0f, -0.0f, 20.0f, -20.0f, 87.5f, -87.5f, 100.0f, -100.0f, 1e30f};
      for (size_t i = 0; i < std::size(extremes) && i < gate.size(); ++i)
        gate[gate.size() - 1 - i] = extremes[i];
      std::vector<float> out(static_cast<size_t>(count)), want(out.size());
      SwiGlu(gate.data(), up.data(), count, out.data());
      SwiGluScalar(gate.data(), up.data(), count, want.data());
      // ~1 ulp exp, a division and two products; the absolute term covers silu(-100) ~ 4e-42,
      // which the kernel returns as ~1e-36 (e^100 saturates at e^87).
      ExpectClose(out, want, 1e-6, 1e-30, "count " + std::to_string(count));
      std::vector<float> in_place = gate;
      SwiGlu(in_place.data(), up.data(), count, in_place.data());
      EXPECT_EQ(in_place, out) << "out = gate must give the same result";
    }
  });
}

TEST(ElementwiseTest, SwiGluPropagatesNan) {
  ForEachSimdLevel([] {
    std::vector<float> gate(9, 1.0f), up(9, 1.0f), out(9);
    gate[2] = std::numeric_limits<float>::quiet_NaN();
    up[8] = std::numeric_limits<float>::quiet_NaN();
    SwiGlu(gate.data(), up.data(), 9, out.data());
    EXPECT_TRUE(std::isnan(out[2]));
    EXPECT_TRUE(std::isnan(out[8]));
    EXPECT_FALSE(std::isnan(out[0]));
  });
}

TEST(ElementwiseTest, AddInPlaceMatchesScalar) {
  ForEachSimdLevel([] {
    for (int64_t count : kCounts) {
      std::vector<float> x = RandomVector(count, 11 + count);
      const std::vector<float> y = RandomVector(count, 12 + count);
      std::vector<float> want = x;
      for (size_t i = 0; i < want.size(); ++i) want[i] += y[i];
      AddInPlace(x.data(), y.data(), count);
      EXPECT_EQ(x, want) << "count " << count;
    }
  });
}

// Inputs that exercise every branch of F32ToBf16: ties to even in both directions, overflow to
// infinity, NaNs of both signs, denormals, zeros, then random bit patterns.
std::vector<float> Bf16EdgeCases(int64_t count, uint64_t seed) {
  const uint32_t edges[] = {
      0x3f808000u,               // 1.00390625: tie, even below -> rounds down
      0x3f818000u,               // tie, odd below -> rounds up
      0x3f808001u,               // just above a tie -> up
      0x7f7fffffu,               // largest finite -> rounds to +inf
      0xff7fffffu,               // -> -inf
      0x7f800000u, 0xff800000u,  // +-inf
      0x7fc00000u, 0xffc00001u,  // quiet NaNs
      0x7f800001u,               // signalling NaN -> must stay NaN
      0x00000001u, 0x807fffffu,  // denormals
      0x00000000u, 0x80000000u,  // +-0
  };
  Rng rng(seed);
  std::vector<float> out(static_cast<size_t>(count));
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = FromBits(i < std::size(edges) ? edges[i] : static_cast<uint32_t>(rng.NextU64()));
  // Spread the edge cases over vector positions too (not only the first vector).
  if (count > 40) std::swap(out[3], out[static_cast<size_t>(count - 1)]);
  return out;
}

TEST(ElementwiseTest, StoreAsBf16RoundsExactlyLikeF32ToBf16) {
  ForEachSimdLevel([] {
    for (int64_t count : kCounts) {
      const std::vector<float> src = Bf16EdgeCases(count, 13 + count);
      // One byte of offset: the KV cache gives no alignment guarantee.
      std::vector<std::byte> buffer(static_cast<size_t>(2 * count + 1));
      StoreAs(src.data(), count, DType::kBF16, buffer.data() + 1);
      std::vector<float> back(src.size());
      LoadAs(buffer.data() + 1, count, DType::kBF16, back.data());
      std::vector<float> rounded(src.size());
      RoundToBf16(src.data(), count, rounded.data());
      for (int64_t i = 0; i < count; ++i) {
        uint16_t stored;
        std::memcpy(&stored, buffer.data() + 1 + 2 * i, 2);
        const uint16_t want = F32ToBf16(src[i]);
        ASSERT_EQ(stored, want) << "count " << count << " element " << i << " bits " << std::hex
                                << Bits(src[i]);
        ASSERT_EQ(Bits(back[i]), Bits(Bf16ToF32(want))) << "count " << count << " element " << i;
        ASSERT_EQ(Bits(rounded[i]), Bits(Bf16ToF32(want))) << "count " << count << " element " << i;
      }
    }
  });
}

TEST(ElementwiseTest, StoreAsF32RoundTripsExactly) {
  for (int64_t count : kCounts) {
    const std::vector<float> src = Bf16EdgeCases(count, 14 + count);
    std::vector<std::byte> buffer(static_cast<size_t>(4 * count + 3));
    StoreAs(src.data(), count, DType::kF32, buffer.data() + 3);
    std::vector<float> back(src.size());
    LoadAs(buffer.data() + 3, count, DType::kF32, back.data());
    EXPECT_EQ(std::memcmp(back.data(), src.data(), src.size() * 4), 0) << "count " << count;
  }
}

TEST(ElementwiseTest, RoundToBf16WorksInPlace) {
  ForEachSimdLevel([] {
    std::vector<float> x = RandomVector(37, 15);
    std::vector<float> want(x.size());
    for (size_t i = 0; i < x.size(); ++i) want[i] = Bf16ToF32(F32ToBf16(x[i]));
    RoundToBf16(x.data(), 37, x.data());
    EXPECT_EQ(x, want);
  });
}

TEST(ElementwiseTest, SimdLevelCapLowersTheActiveLevel) {
  SetSimdLevelCap(SimdLevel::kScalar);
  EXPECT_EQ(ActiveSimdLevel(), SimdLevel::kScalar);
  SetSimdLevelCap(SimdLevel::kAvx512);  // no cap
  EXPECT_EQ(ActiveSimdLevel(), DetectedSimdLevel());
}

}  // namespace
}  // namespace mixattn::ops
