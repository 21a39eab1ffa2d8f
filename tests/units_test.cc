#include "core/units.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "test_util.h"

namespace mixattn {
namespace {

TEST(UnitsTest, ParsesByteSizes) {
  EXPECT_EQ(ParseByteSize("8GiB", "--budget"), int64_t{8} << 30);
  EXPECT_EQ(ParseByteSize("512mib", "--budget"), int64_t{512} << 20);
  EXPECT_EQ(ParseByteSize("1.5GB", "--budget"), 1'500'000'000);
  EXPECT_EQ(ParseByteSize("4096", "--budget"), 4096);
  EXPECT_EQ(ParseByteSize("2KB", "--budget"), 2000);
}

TEST(UnitsTest, RejectsBadSizes) {
  for (const char* bad : {"", "GiB", "8 GiB", "8GiBs", "-1GiB", "1.2.3GB", "0", "0.1"}) {
    EXPECT_THAT(testing::ErrorMessage([&] { ParseByteSize(bad, "--budget"); }),
                ::testing::HasSubstr("--budget"))
        << bad;
  }
}

TEST(UnitsTest, FormatsBytes) {
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(int64_t{3} << 29), "1.50 GiB");
  EXPECT_EQ(FormatBytes(int64_t{150} << 20), "150 MiB");
  EXPECT_EQ(FormatBytes(int64_t{86} << 20), "86.0 MiB");
}

}  // namespace
}  // namespace mixattn
