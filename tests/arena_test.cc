#include "core/arena.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>

namespace mixattn {
namespace {

uintptr_t Address(const std::byte* p) { return reinterpret_cast<uintptr_t>(p); }

// Whether this kernel has transparent huge pages that madvise can ask for.
bool KernelOffersHugePages() {
  std::ifstream file("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  std::getline(file, modes);
  return file && modes.find("[never]") == std::string::npos;
}

TEST(ArenaTest, SmallBuffersKeepTheAskedAlignmentWithoutHugePages) {
  const Arena arena(1000, 64);
  ASSERT_NE(arena.data(), nullptr);
  EXPECT_EQ(arena.size(), 1000u);
  EXPECT_EQ(Address(arena.data()) % 64, 0u);
  EXPECT_FALSE(arena.huge_pages_advised());
  std::memset(arena.data(), 0x5a, arena.size());  // every byte is writable (ASan checks)
}

TEST(ArenaTest, LargeBuffersStartOnAHugePageAndAskForHugePages) {
  const size_t bytes = 3 * Arena::kHugePageBytes + 123;
  Arena arena(bytes, 64);
  EXPECT_EQ(arena.size(), bytes);
  EXPECT_EQ(Address(arena.data()) % Arena::kHugePageBytes, 0u);
  if (KernelOffersHugePages()) {
    EXPECT_TRUE(arena.huge_pages_advised());
  }
  std::memset(arena.data(), 0x5a, bytes);
  EXPECT_EQ(arena.data()[bytes - 1], std::byte{0x5a});

  // Moving hands the buffer over; the moved-from arena owns nothing.
  std::byte* const data = arena.data();
  Arena moved = std::move(arena);
  EXPECT_EQ(moved.data(), data);
  EXPECT_EQ(moved.size(), bytes);
  EXPECT_EQ(arena.data(), nullptr);  // NOLINT(bugprone-use-after-move): checking the move
}

TEST(ArenaTest, HugePagesCanBeDeclined) {
  const Arena arena(3 * Arena::kHugePageBytes, 64, /*huge_pages=*/false);
  EXPECT_EQ(Address(arena.data()) % 64, 0u);
  EXPECT_FALSE(arena.huge_pages_advised());
}

}  // namespace
}  // namespace mixattn
