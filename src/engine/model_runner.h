// The fast forward pass over a batch of sequence chunks, reading and writing the paged KV cache.
//
// One call runs every layer once for all rows of the batch: rows of different sequences share
// the dense matmuls (one Linear call per projection per layer), and attention runs per sequence
// over that sequence's blocks. A batch item is a decode step (1 token) or a prefill chunk.
//
// Legend: R = rows in the batch (sum of item token counts), H = hidden, NH = query heads,
// KVH = KV heads, D = head_dim, F = ffn, V = vocab.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "core/dtype.h"
#include "kv/kv_cache.h"
#include "model/config.h"
#include "model/kv_plan.h"
#include "model/weights.h"
#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/paged_attention.h"

namespace mixattn {

struct BatchItem {
  SequenceId sequence = 0;
  std::span<const int> tokens;   // the chunk's tokens, at positions start .. start + size - 1
  int64_t start = 0;             // == the sequence's length before KvCache::Append(sequence, size)
  bool want_logits = false;      // logits of the chunk's last token
  bool want_all_logits = false;  // logits of every token of the chunk (tests, perplexity)
};

class ModelRunner {
 public:
  // Converts the f32 weights into the compute dtype once. `max_positions` bounds RoPE's table.
  // kRowInvariant makes every row's logits independent of the other items of the batch (see
  // EngineOptions::batch_invariant).
  ModelRunner(const ModelConfig& config, const ModelWeights& weights, DType weights_dtype,
              ops::LargeBatches large_batches = ops::LargeBatches::kOneDnn);

  const ModelConfig& config() const { return config_; }
  const KvPlan& plan() const { return plan_; }
  // Bytes of weights one forward reads (every matmul weight once; embeddings: only used rows).
  int64_t weight_bytes_per_step() const;

  // Runs the batch. Before the call, the caller has done cache.Append(item.sequence,
  // item.tokens.size()) for every item; the call writes those positions' K/V for every owner.
  // Returns logits [rows wanted, V] in item order: one row per want_logits item, or one per
  // token for want_all_logits items.
  const std::vector<float>& Forward(std::span<const BatchItem> items, KvCache& cache);

 private:
  struct Layer {
    std::vector<float> input_norm;           // [H]
    ops::Linear q_proj;                      // [NH*D, H]
    std::optional<ops::Linear> k_proj;       // [KVH*D, H], owners only
    std::optional<ops::Linear> v_proj;       // [KVH*D, H], owners only
    ops::Linear o_proj;                      // [H, NH*D]
    std::vector<float> post_attention_norm;  // [H]
    ops::Linear gate_proj, up_proj;          // [F, H]
    ops::Linear down_proj;                   // [H, F]
  };

  void EnsureScratch(int64_t rows);

  ModelConfig config_;
  KvPlan plan_;
  std::vector<float> embed_tokens_;  // [V, H] f32: rows are gathered, not multiplied
  std::vector<Layer> layers_;
  std::vector<float> final_norm_;  // [H]
  ops::Linear output_;             // [V, H]
  ops::RopeTable rope_;

  // Scratch, grown to the largest batch seen; no allocation once warm.
  std::vector<int32_t> positions_;                                                 // [R]
  std::vector<float> x_, normed_, q_, k_, v_, attention_, projected_, gate_, up_;  // [R, ...]
  std::vector<ops::AttentionJob> jobs_;                                            // [items]
  std::vector<std::byte> kv_vector_;  // one position's K or V [KVH, D] in the cache's dtype
  std::vector<float> final_rows_;     // [rows wanted, H]
  std::vector<float> logits_;         // [rows wanted, V]
};

}  // namespace mixattn
