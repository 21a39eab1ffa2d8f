// Where a subcommand's model plan comes from: --preset NAME with the shape flags, or --config FILE
// (a mixattn/Hugging Face config.json, or an LLM Foundry YAML/JSON with block_overrides).
#pragma once

#include <string>

#include "cli/shape_flags.h"
#include "model/config.h"

namespace mixattn::cli {

class ModelSource {
 public:
  explicit ModelSource(const ModelShape& defaults) : shape_flags_(defaults) {}

  void Register(CLI::App& command);

  bool has_preset() const { return !preset_.empty(); }
  bool has_config() const { return !config_path_.empty(); }
  // Builds and validates the config; errors name the flag or file at fault.
  ModelConfig Resolve() const;
  // "ma-pairs" or the config path, for tables and JSON.
  std::string label() const { return has_preset() ? preset_ : config_path_; }
  const ShapeFlags& shape_flags() const { return shape_flags_; }

 private:
  std::string preset_;
  std::string config_path_;
  ShapeFlags shape_flags_;
};

}  // namespace mixattn::cli
