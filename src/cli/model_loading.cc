#include "cli/model_loading.h"

#include <filesystem>

#include "core/error.h"

namespace mixattn::cli {

InferenceModel LoadInferenceModel(const std::string& dir) {
  if (!std::filesystem::exists(dir)) {
    Fail("no model at '", dir, "'", dir == kDefaultModelDir ? " (the default model)" : "",
         "; pass --model DIR with config.json, model.safetensors and tokenizer.model");
  }
  InferenceModel loaded{LoadModelDir(dir), nullptr,
                        (std::filesystem::path(dir) / "tokenizer.model").string()};
  if (std::filesystem::exists(loaded.tokenizer_path)) {
    loaded.tokenizer = std::make_unique<Tokenizer>(Tokenizer::Load(loaded.tokenizer_path));
  }
  return loaded;
}

}  // namespace mixattn::cli
