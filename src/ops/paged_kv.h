// A read-only view of one owning layer's KV cache for one sequence, stored in fixed-size blocks
// of a shared pool. The kv/ layer builds these views; attention kernels read through them. Ops
// know nothing of sequences, layers or pools beyond this struct.
//
// Legend: B = block_tokens, KVH = kv_heads, D = head_dim.
// Block layout in the pool: block id b starts at pool_base + b * block_bytes and holds
//   K [B, KVH, D] then V [B, KVH, D], each element of `dtype`;  block_bytes = 2 * B * KVH * D *
//   size.
// Token at position p lives in logical block p / B, slot p % B. A sliding owner frees blocks that
// have wholly left its window, so the view lists logical blocks first_block .. first_block +
// num_blocks - 1 only; positions before first_block * B are gone and must not be read.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace mixattn::ops {

struct PagedKvView {
  std::byte* pool_base = nullptr;
  int64_t block_bytes = 0;
  int64_t block_tokens = 0;  // B
  int64_t kv_heads = 0;      // KVH
  int64_t head_dim = 0;      // D
  DType dtype = DType::kBF16;
  const int32_t* block_ids =
      nullptr;  // [num_blocks] pool block ids of logical blocks first_block..
  int64_t first_block = 0;
  int64_t num_blocks = 0;
  int64_t num_tokens = 0;  // positions 0 .. num_tokens-1 have been written

  // Address of the K (or V) vector of `position` for KV head 0: [KVH, D] contiguous elements.
  std::byte* key(int64_t position) const { return slot(position); }
  std::byte* value(int64_t position) const {
    return slot(position) + block_tokens * kv_heads * head_dim * DTypeSize(dtype);
  }

 private:
  std::byte* slot(int64_t position) const {
    const int64_t logical = position / block_tokens;
    const int64_t id = block_ids[logical - first_block];
    return pool_base + id * block_bytes +
           (position % block_tokens) * kv_heads * head_dim * DTypeSize(dtype);
  }
};

}  // namespace mixattn::ops
