// Large uninitialised buffers for the KV cache, backed by transparent huge pages where Linux
// offers them.
//
// A KV pool of gigabytes on 4 KiB pages costs one TLB entry per 4 KiB, and decode walks it block
// by block in pool order that has nothing to do with address order, so nearly every block is a
// TLB miss and a page walk. On 2 MiB pages one entry covers 512 times as much. Debian's default
// (transparent_hugepage=madvise) gives huge pages only to memory that asks with
// madvise(MADV_HUGEPAGE), which is what this does for buffers of 2 MiB or more.
#ifndef MIXATTN_CORE_ARENA_H_
#define MIXATTN_CORE_ARENA_H_

#include <cstddef>
#include <memory>

namespace mixattn {

// Frees an Arena's buffer with the alignment it was allocated with.
struct ArenaFree {
  size_t alignment = 1;
  void operator()(std::byte* p) const;
};

class Arena {
 public:
  static constexpr size_t kHugePageBytes = size_t{2} << 20;

  Arena() = default;
  // `bytes` uninitialised bytes, aligned to `alignment` (a power of two) and, when `huge_pages`
  // and bytes >= kHugePageBytes, to kHugePageBytes and advised to use huge pages (a hint the
  // kernel may ignore; the memory is correct either way). Throws std::bad_alloc when out of
  // memory.
  Arena(size_t bytes, size_t alignment, bool huge_pages = true);

  std::byte* data() const { return data_.get(); }
  size_t size() const { return size_; }
  // Whether the huge-page advice was given (not whether the kernel followed it).
  bool huge_pages_advised() const { return advised_; }

 private:
  std::unique_ptr<std::byte, ArenaFree> data_;
  size_t size_ = 0;
  bool advised_ = false;
};

}  // namespace mixattn

#endif  // MIXATTN_CORE_ARENA_H_
