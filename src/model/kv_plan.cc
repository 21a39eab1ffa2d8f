#include "model/kv_plan.h"

#include <algorithm>

#include "core/error.h"

namespace mixattn {

KvPlan::KvPlan(const ModelConfig& config)
    : layers_(config.layers),
      readers_(config.layers.size()),
      kv_heads_(config.num_key_value_heads),
      head_dim_(config.head_dim) {
  for (int i = 0; i < num_layers(); ++i) {
    const int owner = layers_[static_cast<size_t>(i)].kv_source;
    MIXATTN_CHECK(owner >= 0 && owner <= i &&
                  layers_[static_cast<size_t>(owner)].kv_source == owner);
    if (owner == i) owners_.push_back(i);
    readers_[static_cast<size_t>(owner)].push_back(i);
  }
}

int64_t KvPlan::kv_tokens_held(int owner, int64_t context) const {
  MIXATTN_CHECK(owns_kv(owner));
  const LayerSpec& spec = layer(owner);
  return spec.kind == AttentionKind::kSliding ? std::min<int64_t>(context, spec.window) : context;
}

int64_t KvPlan::kv_token_layers(int64_t context) const {
  int64_t total = 0;
  for (int owner : owners_) total += kv_tokens_held(owner, context);
  return total;
}

int64_t KvPlan::kv_bytes_per_token_slot(DType dtype) const {
  return 2 * kv_heads_ * head_dim_ * DTypeSize(dtype);
}

int64_t KvPlan::kv_bytes_per_token(DType dtype) const {
  return static_cast<int64_t>(owners_.size()) * kv_bytes_per_token_slot(dtype);
}

int64_t KvPlan::kv_bytes_per_sequence(int64_t context, DType dtype) const {
  return kv_token_layers(context) * kv_bytes_per_token_slot(dtype);
}

int64_t KvPlan::max_sequences(int64_t budget_bytes, int64_t context, DType dtype) const {
  const int64_t per_sequence = kv_bytes_per_sequence(context, dtype);
  return per_sequence > 0 ? budget_bytes / per_sequence : 0;
}

int64_t KvPlan::kv_blocks_held(int owner, int64_t context, int64_t block_tokens,
                               int64_t chunk) const {
  MIXATTN_CHECK(owns_kv(owner) && block_tokens > 0 && chunk > 0);
  const auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  const int64_t whole_sequence = ceil_div(context, block_tokens);
  const LayerSpec& spec = layer(owner);
  if (spec.kind == AttentionKind::kFull) return whole_sequence;
  const int64_t span = spec.window + std::min(chunk, context) - 1;  // tokens held while writing
  return std::min(whole_sequence, ceil_div(span - 1, block_tokens) + 1);
}

int64_t KvPlan::kv_blocks_per_sequence(int64_t context, int64_t block_tokens, int64_t chunk) const {
  int64_t total = 0;
  for (int owner : owners_) total += kv_blocks_held(owner, context, block_tokens, chunk);
  return total;
}

int64_t KvPlan::max_sequences_in_blocks(int64_t num_blocks, int64_t context, int64_t block_tokens,
                                        int64_t chunk) const {
  const int64_t per_sequence = kv_blocks_per_sequence(context, block_tokens, chunk);
  return per_sequence > 0 ? num_blocks / per_sequence : 0;
}

int64_t KvPlan::kv_bytes_read_per_decode_token(int64_t context, DType dtype) const {
  int64_t tokens = 0;
  for (const LayerSpec& spec : layers_) {
    tokens +=
        spec.kind == AttentionKind::kSliding ? std::min<int64_t>(context, spec.window) : context;
  }
  return tokens * kv_bytes_per_token_slot(dtype);
}

}  // namespace mixattn
