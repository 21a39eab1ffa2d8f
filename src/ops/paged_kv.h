// A read-only view of one owning layer's KV cache for one sequence, stored in fixed-size blocks
// of a shared pool. The kv/ layer builds these views; attention kernels read through them. Ops
// know nothing of sequences, layers or pools beyond this struct.
//
// Legend: B = block_tokens, KVH = kv_heads, D = head_dim, P = elements per 32-bit word (2 for
// bf16, 1 for f32).
// Block layout in the pool: block id b starts at pool_base + b * block_bytes and holds one part per
// KV head h, part h at h * 2 * B * D elements, each element of `dtype`:
//   K as 32-bit words [D / P, B]: word i of the token in slot s at word i * B + s, where word i
//     holds elements i * P .. i * P + P - 1 of the token's K vector of head h;
//   then V [B, D].                                     block_bytes = 2 * B * KVH * D * size.
// K is transposed so that an attention kernel loads the same dimensions of B consecutive keys in
// one vector and gets the scores of all of them in its lanes without a reduction across lanes (a
// bf16 word splits into two f32 lanes with one shift or one mask); V stays token-major because
// the value update multiplies whole V rows. A head's part is contiguous because the kernel walks
// one head at a time and DRAM streams long runs faster than scattered ones. D * size must be a
// multiple of 4 bytes (D even for bf16; every model's D is even, RoPE rotates pairs).
// Token at position p lives in logical block p / B, slot p % B. A sliding owner frees blocks that
// have wholly left its window, so the view lists logical blocks first_block .. first_block +
// num_blocks - 1 only; positions before first_block * B are gone and must not be read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

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

  // Start of the block holding `position` (its K words, then its V).
  std::byte* block(int64_t position) const {
    return pool_base + block_ids[position / block_tokens - first_block] * block_bytes;
  }
  int64_t head_part_bytes() const { return 2 * block_tokens * head_dim * DTypeSize(dtype); }
  // Address of element d of KV head `head`'s K vector of `position`.
  std::byte* key_element(int64_t position, int64_t head, int64_t d) const {
    const int64_t per_word = 4 / DTypeSize(dtype);  // P
    return block(position) + head * head_part_bytes() +
           ((d / per_word) * block_tokens + position % block_tokens) * 4 +
           (d % per_word) * DTypeSize(dtype);
  }
  // Copies the K vector [KVH, D] of `position` (elements of `dtype`) into / out of its words.
  void WriteKey(int64_t position, const std::byte* k) const {
    for (int64_t h = 0; h < kv_heads; ++h) {
      std::byte* first = key_element(position, h, 0);
      for (int64_t i = 0; i < head_words(); ++i)
        std::memcpy(first + i * block_tokens * 4, k + (h * head_words() + i) * 4, 4);
    }
  }
  void ReadKey(int64_t position, std::byte* k) const {
    for (int64_t h = 0; h < kv_heads; ++h) {
      const std::byte* first = key_element(position, h, 0);
      for (int64_t i = 0; i < head_words(); ++i)
        std::memcpy(k + (h * head_words() + i) * 4, first + i * block_tokens * 4, 4);
    }
  }
  // Copies the V vector [KVH, D] of `position` into / out of its rows.
  void WriteValue(int64_t position, const std::byte* v) const {
    const int64_t row_bytes = head_dim * DTypeSize(dtype);
    for (int64_t h = 0; h < kv_heads; ++h)
      std::memcpy(value(position, h), v + h * row_bytes, static_cast<size_t>(row_bytes));
  }
  void ReadValue(int64_t position, std::byte* v) const {
    const int64_t row_bytes = head_dim * DTypeSize(dtype);
    for (int64_t h = 0; h < kv_heads; ++h)
      std::memcpy(v + h * row_bytes, value(position, h), static_cast<size_t>(row_bytes));
  }
  // Address of KV head `head`'s V vector of `position`: D contiguous elements.
  std::byte* value(int64_t position, int64_t head) const {
    const int64_t row_bytes = head_dim * DTypeSize(dtype);
    return block(position) + head * head_part_bytes() + block_tokens * row_bytes +
           (position % block_tokens) * row_bytes;
  }

 private:
  int64_t head_words() const { return head_dim * DTypeSize(dtype) / 4; }  // D / P
};

}  // namespace mixattn::ops
