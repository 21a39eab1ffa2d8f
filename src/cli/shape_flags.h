// The shape flags every subcommand that builds a model from a preset shares:
//   --layers L --hidden H --heads N --kv-heads K --head-dim D --ffn F --vocab V --window W
#pragma once

#include <string>
#include <vector>

#include "model/presets.h"

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace mixattn::cli {

class ShapeFlags {
 public:
  // `defaults` are what the subcommand uses for flags the user leaves out.
  explicit ShapeFlags(const ModelShape& defaults) : shape_(defaults) {}

  void Register(CLI::App& command);

  const ModelShape& shape() const { return shape_; }
  // Names of the shape flags the user gave ("--layers", ...), for conflict errors.
  std::vector<std::string> GivenFlags() const;
  bool given(const std::string& flag) const;

 private:
  ModelShape shape_;
  std::vector<CLI::Option*> options_;
};

}  // namespace mixattn::cli
