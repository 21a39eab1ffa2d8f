#include "kv/block_pool.h"

#include <limits>

#include "core/error.h"

namespace mixattn {

int64_t KvBlockPool::BlockBytes(int64_t block_tokens, int64_t kv_heads, int64_t head_dim,
                                DType dtype) {
  return 2 * block_tokens * kv_heads * head_dim * DTypeSize(dtype);
}

KvBlockPool::KvBlockPool(int64_t num_blocks, int64_t block_tokens, int64_t kv_heads,
                         int64_t head_dim, DType dtype)
    : num_blocks_(num_blocks),
      block_tokens_(block_tokens),
      kv_heads_(kv_heads),
      head_dim_(head_dim),
      dtype_(dtype),
      block_bytes_(0) {
  // Sizes come from flags and the memory budget, so a bad one is reported, not asserted.
  if (num_blocks < 1 || num_blocks > std::numeric_limits<int32_t>::max()) {
    Fail("KV block pool: num_blocks must be in [1, 2^31 - 1] (got ", num_blocks, ")");
  }
  if (block_tokens < 1 || kv_heads < 1 || head_dim < 1) {
    Fail("KV block pool: block_tokens, kv_heads and head_dim must be >= 1 (got ", block_tokens,
         ", ", kv_heads, ", ", head_dim, ")");
  }
  if (head_dim * DTypeSize(dtype) % 4 != 0) {  // K is stored in 32-bit words (ops/paged_kv.h)
    Fail("KV block pool: head_dim must be even for a ", DTypeName(dtype), " cache (got ", head_dim,
         ")");
  }
  block_bytes_ = BlockBytes(block_tokens, kv_heads, head_dim, dtype);
  if (block_bytes_ > std::numeric_limits<int64_t>::max() / num_blocks) {
    Fail("KV block pool: ", num_blocks, " blocks of ", block_bytes_, " bytes overflow");
  }
  const auto bytes = static_cast<size_t>(num_blocks * block_bytes_);
  arena_ = Arena(bytes, kAlignment);
  free_.resize(static_cast<size_t>(num_blocks));
  // Highest id at the bottom of the stack, so a fresh pool hands out 0, 1, 2, ...
  for (int64_t i = 0; i < num_blocks; ++i) {
    free_[static_cast<size_t>(i)] = static_cast<int32_t>(num_blocks - 1 - i);
  }
  allocated_.assign(static_cast<size_t>(num_blocks), 0);
}

int32_t KvBlockPool::Allocate() {
  if (free_.empty()) return -1;
  const int32_t block = free_.back();
  free_.pop_back();
  allocated_[static_cast<size_t>(block)] = 1;
  return block;
}

void KvBlockPool::Free(int32_t block) {
  MIXATTN_CHECK(block >= 0 && block < num_blocks_);
  MIXATTN_CHECK(allocated_[static_cast<size_t>(block)]);  // double free
  allocated_[static_cast<size_t>(block)] = 0;
  free_.push_back(block);  // capacity is num_blocks: never reallocates
}

bool KvBlockPool::is_allocated(int32_t block) const {
  MIXATTN_CHECK(block >= 0 && block < num_blocks_);
  return allocated_[static_cast<size_t>(block)] != 0;
}

}  // namespace mixattn
