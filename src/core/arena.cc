#include "core/arena.h"

#include <algorithm>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace mixattn {

void ArenaFree::operator()(std::byte* p) const {
  ::operator delete (p, std::align_val_t{alignment});
}

Arena::Arena(size_t bytes, size_t alignment, bool huge_pages) : size_(bytes) {
  const bool huge = huge_pages && bytes >= kHugePageBytes;
  if (huge) alignment = std::max(alignment, kHugePageBytes);
  data_ = std::unique_ptr<std::byte, ArenaFree>(
      static_cast<std::byte*>(
          ::operator new (std::max<size_t>(bytes, 1), std::align_val_t{alignment})),
      ArenaFree{alignment});
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // Whole huge pages inside the buffer; a failure (no THP support) leaves 4 KiB pages.
  if (huge) {
    const size_t whole = bytes / kHugePageBytes * kHugePageBytes;
    advised_ = madvise(data_.get(), whole, MADV_HUGEPAGE) == 0;
  }
#endif
}

}  // namespace mixattn
