// The KV plan: everything derived from the per-layer specs that later components need.
//
// Built once from a validated ModelConfig; the planner, the reference forward, the trainer, the
// engine and the KV manager all ask this object, and none of them re-derives layout rules.
//
// Legend: T = context length (tokens of one sequence), W = a sliding layer's window,
// KVH = num_key_value_heads, D = head_dim.
#pragma once

#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "model/config.h"

namespace mixattn {

class KvPlan {
 public:
  explicit KvPlan(const ModelConfig& config);  // config must have passed ValidateConfig

  int num_layers() const { return static_cast<int>(layers_.size()); }
  const LayerSpec& layer(int i) const { return layers_[static_cast<size_t>(i)]; }

  // A layer owns a cache iff it computes its own K/V; only owners have k_proj/v_proj weights.
  bool owns_kv(int i) const { return layer(i).kv_source == i; }
  int kv_owner(int i) const { return layer(i).kv_source; }
  const std::vector<int>& kv_owners() const { return owners_; }
  // Layers that attend over `owner`'s cache, the owner itself first.
  const std::vector<int>& kv_readers(int owner) const {
    return readers_[static_cast<size_t>(owner)];
  }

  // Tokens an owner keeps for one sequence of length T: T for full owners, min(T, W) for sliding.
  int64_t kv_tokens_held(int owner, int64_t context) const;
  // Sum of kv_tokens_held over owners: PRESETS.md's "kv_token_layers".
  int64_t kv_token_layers(int64_t context) const;

  // Bytes of K plus V for one token in one owner: 2 * KVH * D * sizeof(dtype).
  int64_t kv_bytes_per_token_slot(DType dtype) const;
  // Bytes if every owner held one more token.
  int64_t kv_bytes_per_token(DType dtype) const;
  int64_t kv_bytes_per_sequence(int64_t context, DType dtype) const;
  // How many T-token sequences fit in `budget_bytes`.
  int64_t max_sequences(int64_t budget_bytes, int64_t context, DType dtype) const;

  // ---- Paged form: what the engine's block pool reserves (a block = B tokens of one owner) ----
  //
  // Blocks an owner needs for one sequence of `context` tokens written in chunks of at most
  // `chunk` tokens. A full owner keeps every token: ceil(T / B). A sliding owner frees each block
  // that has wholly left the window before a chunk is written, so while it writes the chunk
  // [s, s+n) it holds the W + n - 1 tokens s-W+1 .. s+n-1, which touch at most
  // ceil((W + C - 2) / B) + 1 blocks (an interval of X tokens spans at most ceil((X-1)/B) + 1);
  // never more than the whole sequence needs.
  int64_t kv_blocks_held(int owner, int64_t context, int64_t block_tokens, int64_t chunk) const;
  int64_t kv_blocks_per_sequence(int64_t context, int64_t block_tokens, int64_t chunk) const;
  // Sequences admitted by a pool of `num_blocks` blocks, each reserving kv_blocks_per_sequence.
  int64_t max_sequences_in_blocks(int64_t num_blocks, int64_t context, int64_t block_tokens,
                                  int64_t chunk) const;

  // Bytes of K/V a decode step at position T reads for one sequence: every layer reads the tokens
  // its window covers from its owner's cache (a reader re-reads its owner's blocks).
  int64_t kv_bytes_read_per_decode_token(int64_t context, DType dtype) const;

 private:
  std::vector<LayerSpec> layers_;
  std::vector<int> owners_;
  std::vector<std::vector<int>> readers_;  // [num_layers]; empty for non-owners
  int64_t kv_heads_ = 0;
  int64_t head_dim_ = 0;
};

}  // namespace mixattn
