// mixattn init: writes a model directory (config.json + model.safetensors) with random weights,
// for tests, benchmarks and as the starting point of training.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "cli/model_source.h"
#include "core/error.h"
#include "core/units.h"
#include "model/model_dir.h"
#include "model/presets.h"
#include "model/weights.h"

namespace mixattn::cli {
namespace {

struct InitOptions {
  std::string out;
  uint64_t seed = 1;
  std::string dtype = "f32";
  bool untied = false;
  int max_position = 0;
  double norm_jitter = 0.0;
};

// Small by default: the trainer's reference model (about 8M parameters).
ModelShape InitDefaultShape() {
  ModelShape shape;
  shape.layers = 8;
  shape.hidden = 256;
  shape.heads = 4;
  shape.kv_heads = 1;
  shape.head_dim = 64;
  shape.ffn = 768;
  shape.vocab = 8192;
  shape.window = 256;
  shape.max_position = 4096;
  return shape;
}

void RunInit(const ModelSource& source, const InitOptions& options) {
  ModelConfig config = source.Resolve();
  if (options.untied || options.max_position > 0) {
    if (source.has_config())
      Fail("--untied and --max-position apply to --preset; edit the config file instead");
    if (options.untied) config.tie_word_embeddings = false;
    if (options.max_position > 0) config.max_position_embeddings = options.max_position;
    ValidateConfig(config);
  }
  const DType dtype = options.dtype == "bf16" ? DType::kBF16 : DType::kF32;
  const int64_t bytes = ParameterCount(config) * DTypeSize(dtype);
  std::fprintf(stderr, "writing %s: %lld parameters (%s as %s), seed %llu\n", options.out.c_str(),
               static_cast<long long>(ParameterCount(config)), FormatBytes(bytes).c_str(),
               options.dtype.c_str(), static_cast<unsigned long long>(options.seed));
  const ModelWeights weights = RandomWeights(config, options.seed, options.norm_jitter);
  SaveModelDir(options.out, config, weights, dtype);
}

}  // namespace

void RegisterInitCommand(CLI::App& app) {
  CLI::App* command = app.add_subcommand(
      "init", "write a model directory (config.json + model.safetensors) with random weights");
  auto options = std::make_shared<InitOptions>();
  auto source = std::make_shared<ModelSource>(InitDefaultShape());
  source->Register(*command);
  command->add_option("--out", options->out, "model directory to create or overwrite")->required();
  command->add_option("--seed", options->seed, "random seed (same seed, same weights)")
      ->capture_default_str();
  command->add_option("--dtype", options->dtype, "element type of the stored weights")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  command->add_flag("--untied", options->untied,
                    "separate output projection (lm_head) instead of tied embeddings");
  command
      ->add_option("--max-position", options->max_position,
                   "max_position_embeddings (default 4096)")
      ->check(CLI::Range(1, 1 << 24));
  command
      ->add_option(
          "--norm-jitter", options->norm_jitter,
          "standard deviation of random noise on the norm weights (0 = all ones; tests use it "
          "so that norm weights matter)")
      ->check(CLI::Range(0.0, 1.0));
  command->callback([options, source]() { RunInit(*source, *options); });
}

}  // namespace mixattn::cli
