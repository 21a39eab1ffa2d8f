#include "cli/shape_flags.h"

#include <CLI/CLI.hpp>

namespace mixattn::cli {

void ShapeFlags::Register(CLI::App& command) {
  const auto add = [&](const char* flag, int& field, const char* help) {
    options_.push_back(command.add_option(flag, field, help)
                           ->check(CLI::Range(1, 1 << 24))
                           ->capture_default_str()
                           ->group("Model shape (with --preset)"));
  };
  add("--layers", shape_.layers, "number of layers L (MixAttention presets need L >= 8)");
  add("--hidden", shape_.hidden, "model width H (hidden_size)");
  add("--heads", shape_.heads, "query heads (num_attention_heads)");
  add("--kv-heads", shape_.kv_heads, "KV heads (num_key_value_heads; 1 = multi-query)");
  add("--head-dim", shape_.head_dim, "dimensions per head (head_dim)");
  add("--ffn", shape_.ffn, "SwiGLU hidden size (intermediate_size)");
  add("--vocab", shape_.vocab, "vocabulary size");
  add("--window", shape_.window, "sliding window W in tokens, the query's own included");
}

std::vector<std::string> ShapeFlags::GivenFlags() const {
  std::vector<std::string> given_flags;
  for (const CLI::Option* option : options_) {
    if (option->count() > 0) given_flags.push_back(option->get_name());
  }
  return given_flags;
}

bool ShapeFlags::given(const std::string& flag) const {
  for (const CLI::Option* option : options_) {
    if (option->get_name() == flag) return option->count() > 0;
  }
  return false;
}

}  // namespace mixattn::cli
