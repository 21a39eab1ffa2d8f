#include "cli/model_source.h"

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "model/foundry_import.h"
#include "model/presets.h"

namespace mixattn::cli {
namespace {

std::string ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail(path, ": cannot open: ", std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string PresetList() {
  std::string list;
  for (const PresetInfo& preset : Presets()) list += "\n  " + preset.name + ": " + preset.summary;
  return list;
}

}  // namespace

void ModelSource::Register(CLI::App& command) {
  command.add_option("--preset", preset_, "layer-plan preset:" + PresetList())->group("Model");
  command
      .add_option("--config", config_path_,
                  "config.json, or an LLM Foundry YAML/JSON with block_overrides (shape flags "
                  "fill what it leaves out)")
      ->group("Model");
  shape_flags_.Register(command);
}

ModelConfig ModelSource::Resolve() const {
  if (has_preset() == has_config()) Fail("give exactly one of --preset NAME or --config FILE");
  if (has_preset()) return MakePresetConfig(preset_, shape_flags_.shape());

  const std::string text = ReadTextFile(config_path_);
  if (!LooksLikeFoundryConfig(text)) {
    const std::vector<std::string> given = shape_flags_.GivenFlags();
    if (!given.empty()) {
      Fail(config_path_, " fixes the model shape; ", given.front(),
           " only applies to --preset or an LLM Foundry config");
    }
    return ParseConfigJson(text, config_path_);
  }
  // LLM Foundry: the file's shape fields win over defaults, the user's flags over both.
  const ShapeFlags& flags = shape_flags_;
  const FoundryImport imported =
      ImportFoundryConfig(text, config_path_, flags.given("--layers") ? flags.shape().layers : 0);
  ModelShape shape = flags.shape();
  const auto pick = [&](const char* flag, int from_file, int& field) {
    if (!flags.given(flag) && from_file > 0) field = from_file;
  };
  pick("--hidden", imported.shape.d_model, shape.hidden);
  pick("--heads", imported.shape.n_heads, shape.heads);
  pick("--kv-heads", imported.shape.kv_n_heads, shape.kv_heads);
  pick("--ffn", imported.shape.ffn_hidden_size, shape.ffn);
  pick("--vocab", imported.shape.vocab_size, shape.vocab);
  if (!flags.given("--head-dim") && imported.shape.d_model > 0 && imported.shape.n_heads > 0) {
    shape.head_dim = imported.shape.d_model / imported.shape.n_heads;
  }
  if (imported.shape.max_seq_len > 0) shape.max_position = imported.shape.max_seq_len;
  if (imported.shape.rope_theta > 0) shape.rope_theta = imported.shape.rope_theta;

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
  config.layers = imported.layers;
  try {
    ValidateConfig(config);
  } catch (const Error& e) {
    Fail(config_path_, ": ", e.what());
  }
  return config;
}

}  // namespace mixattn::cli
