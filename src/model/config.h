// The model configuration: shape plus the layer plan (one spec per layer).
//
// config.json uses Hugging Face field names (hidden_size, num_hidden_layers, ...), plus
//   layer_types:      ["full_attention" | "sliding_attention", ...]   one per layer
//   sliding_window:   one int for every sliding layer, or a list with one entry per layer
//                     (entries of full layers are ignored and written as null)
//   kv_source_layers: [int, ...] one per layer: the layer whose K/V this layer attends over;
//                     its own index means the layer computes (and caches) its own K/V.
//
// Window semantics: a sliding layer with window W lets the query at position p attend to the keys
// at positions p-W+1 .. p (W tokens, itself included), so its cache never needs more than W tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mixattn {

enum class AttentionKind { kFull, kSliding };

struct LayerSpec {
  AttentionKind kind = AttentionKind::kFull;
  int window = 0;     // sliding only: tokens a query sees, itself included; 0 for full layers
  int kv_source = 0;  // layer whose K/V this layer reads; its own index = computes its own
};

struct ModelConfig {
  int hidden_size = 0;          // H
  int num_attention_heads = 0;  // query heads
  int num_key_value_heads = 0;  // KV heads (1 = multi-query)
  int head_dim = 0;             // D
  int intermediate_size = 0;    // F, SwiGLU hidden size
  int vocab_size = 0;           // V
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-5;
  int max_position_embeddings = 0;
  bool tie_word_embeddings = true;
  std::vector<LayerSpec> layers;  // [num_hidden_layers]

  int num_layers() const { return static_cast<int>(layers.size()); }
};

const char* AttentionKindName(AttentionKind kind);  // "full" / "sliding"

// Checks every rule and collapses kv_source chains to the producing layer (in place).
// Throws mixattn::Error naming the field or layer and the rule broken:
//   - sizes positive; num_attention_heads divisible by num_key_value_heads;
//   - sliding windows >= 1; kv_source in [0, i];
//   - a full layer may not read a sliding layer's cache (its old tokens are gone);
//   - a sliding layer reading a sliding cache needs window <= the source's window.
void ValidateConfig(ModelConfig& config);

// Parses config.json text. Missing or unknown fields, wrong types and rule violations are errors
// that name the field (source_name, usually the file path, prefixes every message).
ModelConfig ParseConfigJson(const std::string& text, const std::string& source_name);
ModelConfig LoadConfigFile(const std::string& path);

// Serialises to config.json text (parses back to an equal config).
std::string ConfigToJson(const ModelConfig& config);

}  // namespace mixattn
