// Layer-plan presets: this project's reconstruction of the MixAttention paper's variants
// (Rajput et al. 2024 publish diagrams, not layer indices; see ../shared/PRESETS.md for the rule
// and the reasoning). A preset only produces data — a list of LayerSpecs — and nothing downstream
// ever switches on a preset's name.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "model/config.h"

namespace mixattn {

struct PresetInfo {
  std::string name;
  std::string summary;  // one line for --help and tables
};

// In the order PRESETS.md lists them; "standard" first (the baseline of every comparison).
const std::vector<PresetInfo>& Presets();
bool IsPreset(std::string_view name);

// Per-layer specs (kv_source already pointing at the producing layer) for `num_layers` layers and
// sliding window `window`. "standard" and "all-sliding" accept any depth >= 1, the MixAttention
// presets need >= 8. Throws mixattn::Error for an unknown name (listing the known ones) or depth.
std::vector<LayerSpec> PresetLayers(std::string_view name, int num_layers, int window);

// The shape of a model built from a preset: what the shared shape flags set.
// Defaults are the paper-scale layout of PRESETS.md (24 layers, window 1024) with a
// 1B-parameter-class width; every subcommand may choose its own defaults.
struct ModelShape {
  int layers = 24;
  int hidden = 2048;
  int heads = 16;
  int kv_heads = 4;
  int head_dim = 128;
  int ffn = 5632;
  int vocab = 32000;
  int window = 1024;
  int max_position = 32768;
  double rope_theta = 10000.0;
  bool tied = true;
};

// A validated config for `preset` at `shape`.
ModelConfig MakePresetConfig(std::string_view preset, const ModelShape& shape);

// Compact one-line layout as PRESETS.md writes it: "F S S>1 S F>0 ...".
std::string LayoutString(const std::vector<LayerSpec>& layers);

}  // namespace mixattn
