#include "cli/model_loading.h"

#include <CLI/CLI.hpp>
#include <filesystem>

#include "core/error.h"
#include "core/units.h"

namespace mixattn::cli {

namespace {

// The default model seen from the binary: build/mixattn (or any BUILD_DIR/mixattn) finds the
// repository's models/default from any working directory.
std::string ResolveDefault(const std::string& dir) {
  if (dir != kDefaultModelDir || std::filesystem::exists(dir)) return dir;
  std::error_code error;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error) return dir;
  const std::filesystem::path beside_build = exe.parent_path().parent_path() / kDefaultModelDir;
  return std::filesystem::exists(beside_build) ? beside_build.string() : dir;
}

}  // namespace

InferenceModel LoadInferenceModel(const std::string& requested_dir) {
  const std::string dir = ResolveDefault(requested_dir);
  if (!std::filesystem::exists(dir)) {
    Fail("no model at '", dir, "'",
         dir == kDefaultModelDir ? " (the default model, shipped in the repository's models/)" : "",
         "; pass --model DIR with config.json, model.safetensors and tokenizer.model");
  }
  InferenceModel loaded{LoadModelDir(dir), nullptr,
                        (std::filesystem::path(dir) / "tokenizer.model").string()};
  if (std::filesystem::exists(loaded.tokenizer_path)) {
    loaded.tokenizer = std::make_unique<Tokenizer>(Tokenizer::Load(loaded.tokenizer_path));
  }
  return loaded;
}

void AddEngineFlags(CLI::App& command, EngineFlags& flags) {
  auto* engine = command.add_option_group("Engine");
  engine->add_option("--kv-memory", flags.kv_memory, "KV cache memory, e.g. 1GiB")
      ->capture_default_str();
  engine->add_option("--weights-dtype", flags.weights_dtype, "bf16 or f32")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  engine->add_option("--kv-dtype", flags.kv_dtype, "bf16 or f32")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  engine->add_flag("--batch-invariant", flags.batch_invariant, kBatchInvariantHelp);
}

EngineOptions ToEngineOptions(const EngineFlags& flags) {
  EngineOptions options;
  options.kv_memory_bytes = ParseByteSize(flags.kv_memory, "--kv-memory");
  options.weights_dtype = flags.weights_dtype == "f32" ? DType::kF32 : DType::kBF16;
  options.kv_dtype = flags.kv_dtype == "f32" ? DType::kF32 : DType::kBF16;
  options.batch_invariant = flags.batch_invariant;
  return options;
}

}  // namespace mixattn::cli
