// The block pool: one arena of equal KV blocks shared by every owning layer of every sequence.
//
// Legend: B = block_tokens, KVH = kv_heads, D = head_dim.
// A block holds B tokens of one owning layer: per KV head, its K (transposed in 32-bit words) then
// its V [B, D], the layout ops::PagedKvView documents and reads, so block_bytes = 2 * B * KVH * D *
// sizeof(dtype); D * sizeof(dtype) must be a multiple of 4 (D even for bf16). Full and sliding
// owners draw from this one pool: there is no full/sliding split for a user to tune (the static
// per-pool ratio of SGLang's SWAKVPool and TensorRT-LLM's per-window pools).
//
// The arena is allocated once, 64-byte aligned, in the constructor; Allocate/Free only move ids
// between the free stack and the caller, so the serving loop never touches the heap for KV.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/arena.h"
#include "core/dtype.h"

namespace mixattn {

class KvBlockPool {
 public:
  // The arena starts on a cache line; so does every block when block_bytes is a multiple of 64
  // (any B * KVH * D that is a multiple of 16 elements, i.e. every realistic shape). Pools of
  // 2 MiB or more sit on transparent huge pages where the kernel grants them (core/arena.h).
  static constexpr size_t kAlignment = 64;

  // num_blocks >= 1 (and < 2^31, ids are int32); the other sizes >= 1.
  KvBlockPool(int64_t num_blocks, int64_t block_tokens, int64_t kv_heads, int64_t head_dim,
              DType dtype);
  KvBlockPool(const KvBlockPool&) = delete;
  KvBlockPool& operator=(const KvBlockPool&) = delete;

  // 2 * B * KVH * D * sizeof(dtype): K and V of B tokens of one owner.
  static int64_t BlockBytes(int64_t block_tokens, int64_t kv_heads, int64_t head_dim, DType dtype);

  // A free block id in [0, num_blocks), or -1 when none is free (running out is the scheduler's
  // normal signal to wait or preempt, not an error). Ids come out lowest first on a fresh pool.
  int32_t Allocate();
  // Returns `block` to the pool. MIXATTN_CHECK: a valid id that is currently allocated.
  void Free(int32_t block);
  bool is_allocated(int32_t block) const;

  int64_t num_blocks() const { return num_blocks_; }
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }
  int64_t num_used() const { return num_blocks_ - num_free(); }
  int64_t block_bytes() const { return block_bytes_; }
  int64_t block_tokens() const { return block_tokens_; }  // B
  int64_t kv_heads() const { return kv_heads_; }          // KVH
  int64_t head_dim() const { return head_dim_; }          // D
  DType dtype() const { return dtype_; }
  int64_t arena_bytes() const { return num_blocks_ * block_bytes_; }

  // Start of the arena: block b lives at base() + b * block_bytes().
  std::byte* base() { return arena_.data(); }
  const std::byte* base() const { return arena_.data(); }

 private:
  int64_t num_blocks_;
  int64_t block_tokens_;
  int64_t kv_heads_;
  int64_t head_dim_;
  DType dtype_;
  int64_t block_bytes_;
  Arena arena_;                     // [num_blocks, block_bytes]
  std::vector<int32_t> free_;       // stack of free ids; back() is next
  std::vector<uint8_t> allocated_;  // [num_blocks] 1 while handed out
};

}  // namespace mixattn
