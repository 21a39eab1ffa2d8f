#include "model/presets.h"

#include <algorithm>
#include <array>

#include "core/error.h"

namespace mixattn {
namespace {

// The four global (full-attention) positions spread evenly over the depth:
// G_k = floor(k * (L-1) / 3 + 0.5), k = 0..3; for L = 24: 0, 8, 15, 23.
std::array<int, 4> GlobalPositions(int num_layers) {
  std::array<int, 4> positions{};
  for (int k = 0; k < 4; ++k) positions[k] = (2 * k * (num_layers - 1) + 3) / 6;
  return positions;
}

// Depth of ma-offset's first global layer: floor((L-1)/6 + 0.5).
int OffsetPosition(int num_layers) { return (num_layers + 2) / 6; }

enum class SlidingSharing { kPairs, kWholeSegment };

// Starts from all-sliding layers, marks `globals` as full with the given KV sources, then groups
// each run of consecutive sliding layers ("segment"): the first layer of a group computes its own
// K/V, the rest of the group reads it.
std::vector<LayerSpec> BuildLayers(
    int num_layers, int window,
    const std::vector<std::pair<int, int>>& globals,  // (layer, kv_source)
    SlidingSharing sharing) {
  std::vector<LayerSpec> layers(static_cast<size_t>(num_layers));
  for (auto& layer : layers) layer = {AttentionKind::kSliding, window, 0};
  for (auto [index, source] : globals)
    layers[static_cast<size_t>(index)] = {AttentionKind::kFull, 0, source};
  int group_start = -1;
  for (int i = 0; i < num_layers; ++i) {
    LayerSpec& layer = layers[static_cast<size_t>(i)];
    if (layer.kind == AttentionKind::kFull) {
      group_start = -1;
      continue;
    }
    const bool start_new =
        group_start < 0 || (sharing == SlidingSharing::kPairs && i - group_start >= 2);
    if (start_new) group_start = i;
    layer.kv_source = group_start;
  }
  return layers;
}

void RequireDepth(std::string_view name, int num_layers, int minimum) {
  if (num_layers < minimum) {
    Fail("preset '", name, "' needs at least ", minimum, " layers (got ", num_layers, ")");
  }
}

}  // namespace

const std::vector<PresetInfo>& Presets() {
  static const std::vector<PresetInfo> presets = {
      {"standard", "every layer full attention with its own KV (the baseline)"},
      {"all-sliding", "every layer sliding-window attention with its own KV"},
      {"ma", "4 full layers reading layer 0's KV; sliding layers share KV in pairs"},
      {"ma-endslide", "as ma, but the last layer is sliding"},
      {"ma-offset", "as ma, but the KV-computing full layer sits deeper, at (L-1)/6"},
      {"ma-pairs",
       "two full KV caches (first layer and 2/3 depth), each read by one more full layer"},
      {"ma-offset-slideshare", "ma-offset with each sliding segment sharing one KV"},
      {"ma-pairs-slideshare", "ma-pairs with each sliding segment sharing one KV"},
      {"characterai", "blocks of 6: [F S S>. S S>. S>.], every full layer reads layer 0"},
  };
  return presets;
}

bool IsPreset(std::string_view name) {
  const auto& presets = Presets();
  return std::any_of(presets.begin(), presets.end(),
                     [&](const PresetInfo& p) { return p.name == name; });
}

std::vector<LayerSpec> PresetLayers(std::string_view name, int num_layers, int window) {
  if (!IsPreset(name)) {
    std::string known;
    for (const PresetInfo& preset : Presets()) known += (known.empty() ? "" : ", ") + preset.name;
    Fail("unknown preset '", name, "'; known presets: ", known);
  }
  if (num_layers < 1) Fail("preset '", name, "': the number of layers must be at least 1");
  if (window < 1)
    Fail("preset '", name, "': the sliding window must be at least 1 token (got ", window, ")");

  std::vector<LayerSpec> layers(static_cast<size_t>(num_layers));
  if (name == "standard") {
    for (int i = 0; i < num_layers; ++i)
      layers[static_cast<size_t>(i)] = {AttentionKind::kFull, 0, i};
    return layers;
  }
  if (name == "all-sliding") {
    for (int i = 0; i < num_layers; ++i)
      layers[static_cast<size_t>(i)] = {AttentionKind::kSliding, window, i};
    return layers;
  }
  RequireDepth(name, num_layers, 8);
  const std::array<int, 4> g = GlobalPositions(num_layers);
  if (name == "characterai") {
    // Per block of 6: offset 0 full (reads layer 0), 1 own, 2 reads 1, 3 own, 4 and 5 read 3.
    constexpr std::array<int, 6> kSourceOffset = {0, 1, 1, 3, 3, 3};
    for (int i = 0; i < num_layers; ++i) {
      const int block = i - i % 6, offset = i % 6;
      layers[static_cast<size_t>(i)] =
          offset == 0 ? LayerSpec{AttentionKind::kFull, 0, 0}
                      : LayerSpec{AttentionKind::kSliding, window,
                                  block + kSourceOffset[static_cast<size_t>(offset)]};
    }
    return layers;
  }
  const SlidingSharing sharing =
      name.ends_with("-slideshare") ? SlidingSharing::kWholeSegment : SlidingSharing::kPairs;
  if (name == "ma")
    return BuildLayers(num_layers, window, {{g[0], g[0]}, {g[1], g[0]}, {g[2], g[0]}, {g[3], g[0]}},
                       sharing);
  if (name == "ma-endslide")
    return BuildLayers(num_layers, window, {{g[0], g[0]}, {g[1], g[0]}, {g[2], g[0]}}, sharing);
  if (name.starts_with("ma-offset")) {
    const int off = OffsetPosition(num_layers);
    return BuildLayers(num_layers, window, {{off, off}, {g[1], off}, {g[2], off}, {g[3], off}},
                       sharing);
  }
  MIXATTN_CHECK(name.starts_with("ma-pairs"));
  return BuildLayers(num_layers, window, {{g[0], g[0]}, {g[1], g[0]}, {g[2], g[2]}, {g[3], g[2]}},
                     sharing);
}

ModelConfig MakePresetConfig(std::string_view preset, const ModelShape& shape) {
  ModelConfig config;
  config.hidden_size = shape.hidden;
  config.num_attention_heads = shape.heads;
  config.num_key_value_heads = shape.kv_heads;
  config.head_dim = shape.head_dim;
  config.intermediate_size = shape.ffn;
  config.vocab_size = shape.vocab;
  config.max_position_embeddings = shape.max_position;
  config.rope_theta = shape.rope_theta;
  config.tie_word_embeddings = shape.tied;
  config.layers = PresetLayers(preset, shape.layers, shape.window);
  ValidateConfig(config);
  return config;
}

std::string LayoutString(const std::vector<LayerSpec>& layers) {
  std::string out;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (i) out += ' ';
    out += layers[i].kind == AttentionKind::kFull ? 'F' : 'S';
    if (layers[i].kv_source != static_cast<int>(i))
      out += '>' + std::to_string(layers[i].kv_source);
  }
  return out;
}

}  // namespace mixattn
