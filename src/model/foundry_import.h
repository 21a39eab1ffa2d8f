// Import of an LLM Foundry (MPT) model config's `block_overrides` into mixattn's layer plan.
//
// LLM Foundry (github.com/mosaicml/llm-foundry, PR #1299) describes a MixAttention model as a base
// MPT config plus per-block overrides of two attention keys (research/paper.md section 6.1):
//
//   model:                                  # or the same keys at the top level (HF config.json)
//     d_model: 2048, n_heads: 16, n_layers: 13, ...
//     attn_config: {sliding_window_size: -1, ...}       # base: every layer without an override
//     block_overrides:
//       order:                              # expands to exactly n_layers names
//         - name: default                   #   "default" = the base config, no override
//         - order: [{name: a}, {name: b, repeat: 2}]     # nested list, repeated as a whole
//           repeat: 2
//       repeat: 1                           # optional: repeats the whole order
//       overrides:
//         a: {attn_config: {sliding_window_size: 1024}}
//         b: {attn_config: {sliding_window_size: 1024, reuse_kv_layer_idx: -1}}
//
// reuse_kv_layer_idx is relative and negative: layer b reads the K/V of layer b + idx, and a chain
// of readers collapses to the layer that computes the K/V (the "root producer").
//
// Window semantics differ by one: LLM Foundry passes sliding_window_size w to flash-attn as
// window_size=(w, w) with causal=True, so the query at position i sees keys i-w .. i, which is
// w + 1 tokens including itself. LayerSpec::window counts tokens including the query itself, so
// the import maps w -> window = w + 1 (and w = -1, LLM Foundry's "off", to a full layer).
//
// The import checks only what LLM Foundry's own config rules say; the mixattn plan rules (a full
// layer may not read a sliding cache, window sizes of readers, ...) are checked by ValidateConfig,
// which callers run on the ModelConfig they build from the result. The paper-era LLM Foundry rule
// "a reusing layer must match its parent's config" (removed upstream in 2025) is not enforced.
#pragma once

#include <string>
#include <vector>

#include "model/config.h"

namespace mixattn {

// Model shape fields as the file gives them; 0 means "not given in the file".
struct FoundryShape {
  int d_model = 0;     // hidden size H
  int n_heads = 0;     // query heads
  int kv_n_heads = 0;  // K/V heads: n_heads for multihead_attention (LLM Foundry's default, which
                       // ignores attn_config.kv_n_heads), 1 for multiquery_attention,
                       // attn_config.kv_n_heads (default n_heads) for grouped_query_attention
  int n_layers = 0;    // the layer count used for the import (== layers.size())
  int ffn_hidden_size = 0;  // ffn_config.ffn_hidden_size, else expansion_ratio * d_model
  int vocab_size = 0;
  int max_seq_len = 0;
  double rope_theta = 0;  // attn_config.rope_theta
};

struct FoundryImport {
  FoundryShape shape;
  std::vector<LayerSpec> layers;  // [n_layers]: kind, window, absolute kv_source (chains collapsed)
  std::vector<std::string> layer_override_names;  // [n_layers]: override name, "default" if none
};

// Parses YAML (or JSON, which parses as YAML) text. The keys are read from `model:` when the top
// level has a `model:` map with block_overrides, else from the top level. `n_layers` > 0 overrides
// (or supplies, when the file has none) the layer count. OmegaConf interpolations that are a whole
// value, such as `max_seq_len: ${variables.max_seq_len}`, are resolved against the file's top
// level. Every failure is a mixattn::Error prefixed with `source_name` that names the YAML path of
// the bad item (e.g. `block_overrides.order[1].order[4].repeat`) or the layer, and what was
// expected; YAML syntax errors carry their line and column.
FoundryImport ImportFoundryConfig(const std::string& text, const std::string& source_name,
                                  int n_layers = 0);

// Reads the file at `path` and imports it; errors are prefixed with the path.
FoundryImport LoadFoundryConfigFile(const std::string& path, int n_layers = 0);

// True if the text parses and has a non-null block_overrides key at the top level or under
// `model:`. Never throws.
bool LooksLikeFoundryConfig(const std::string& text);

}  // namespace mixattn
