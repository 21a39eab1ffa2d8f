// Loading a model directory for inference: what `generate` and `serve` share.
//
// A model directory holds config.json, model.safetensors and, for models with a text interface,
// tokenizer.model (README, "The model format"). Commands that run the engine load all three the
// same way and fail with the same messages, so the loading lives here once.
#pragma once

#include <memory>
#include <string>

#include "engine/engine.h"
#include "model/model_dir.h"
#include "tokenizer/tokenizer.h"

namespace CLI {
class App;
}

namespace mixattn::cli {

// Where commands look for a model when --model is not given: the one shipped in models/, relative
// to the working directory, else to the directory above the binary's (build/mixattn).
inline constexpr const char* kDefaultModelDir = "models/default";

struct InferenceModel {
  LoadedModel model;
  std::unique_ptr<Tokenizer> tokenizer;  // null when tokenizer_path does not exist
  std::string tokenizer_path;            // DIR/tokenizer.model, for messages
};

// Loads config.json, model.safetensors and (when present) tokenizer.model from `dir`. Throws
// Error naming the directory when it does not exist (saying so when it is the default one), or
// naming the file that fails to load.
InferenceModel LoadInferenceModel(const std::string& dir);

// The engine flags of `generate` and `eval`: --kv-memory, --weights-dtype, --kv-dtype.
struct EngineFlags {
  std::string kv_memory = "1GiB";
  std::string weights_dtype = "bf16";
  std::string kv_dtype = "bf16";
  bool batch_invariant = false;
};
// Help text of --batch-invariant (EngineOptions::batch_invariant), for every command that has it.
inline constexpr const char* kBatchInvariantHelp =
    "every matmul row through the row-invariant kernel, so a request's output is bit for bit the "
    "same alone and in any batch (bf16 too); prefill runs slower";
// Adds the flags as an "Engine" option group of `command`, bound to `flags`.
void AddEngineFlags(CLI::App& command, EngineFlags& flags);
// Engine options from the flags (the rest at their defaults); throws Error for a bad size.
EngineOptions ToEngineOptions(const EngineFlags& flags);

}  // namespace mixattn::cli
