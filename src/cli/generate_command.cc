// mixattn generate: streams a completion of a prompt from a model directory.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/model_loading.h"
#include "core/error.h"
#include "core/units.h"
#include "engine/engine.h"

namespace mixattn::cli {
namespace {

struct GenerateOptions {
  std::string model = kDefaultModelDir;
  std::string prompt;
  std::vector<int> prompt_tokens;
  int64_t max_tokens = 128;
  SamplingParams sampling;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  EngineFlags engine;
  bool json = false;
};

void RunGenerate(const GenerateOptions& options) {
  if (options.prompt.empty() == options.prompt_tokens.empty()) {
    Fail("give exactly one of --prompt TEXT or --prompt-tokens IDS");
  }
  const auto load_start = std::chrono::steady_clock::now();
  const InferenceModel loaded = LoadInferenceModel(options.model);
  const LoadedModel& model = loaded.model;
  const Tokenizer* tokenizer = loaded.tokenizer.get();
  if (!tokenizer && !options.prompt.empty()) {
    Fail(loaded.tokenizer_path,
         " does not exist: a text prompt needs the model's tokenizer (or use --prompt-tokens)");
  }

  EngineOptions engine_options = ToEngineOptions(options.engine);
  Engine engine(model.config, model.weights, engine_options, tokenizer);

  GenerationRequest request;
  request.prompt =
      options.prompt.empty() ? options.prompt_tokens : tokenizer->Encode(options.prompt);
  if (tokenizer && !options.prompt.empty())
    request.prompt.insert(request.prompt.begin(), tokenizer->bos_id());
  request.sampling = options.sampling;
  request.max_tokens = options.max_tokens;
  request.stop = options.stop;
  request.stop_at_eos = !options.ignore_eos;
  engine.Submit(request);
  const double load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

  const auto start = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point first_token;
  std::string text;
  std::vector<int> tokens;
  FinishReason finish = FinishReason::kNone;
  while (!engine.idle()) {
    for (const EngineEvent& event : engine.Step()) {
      if (tokens.empty() && !event.tokens.empty()) first_token = std::chrono::steady_clock::now();
      tokens.insert(tokens.end(), event.tokens.begin(), event.tokens.end());
      text += event.text;
      if (!options.json) {
        if (tokenizer) {
          std::fwrite(event.text.data(), 1, event.text.size(), stdout);
        } else {
          for (int token : event.tokens) std::printf("%d ", token);
        }
        std::fflush(stdout);
      }
      if (event.finish != FinishReason::kNone) finish = event.finish;
    }
  }
  const auto end = std::chrono::steady_clock::now();
  const double total = std::chrono::duration<double>(end - start).count();
  const double prefill = std::chrono::duration<double>(first_token - start).count();
  const double decode = total - prefill;
  const double decode_rate =
      tokens.size() > 1 && decode > 0 ? static_cast<double>(tokens.size() - 1) / decode : 0;
  if (options.json) {
    nlohmann::ordered_json out;
    out["model"] = options.model;
    out["text"] = text;
    out["tokens"] = tokens;
    out["finish_reason"] = FinishReasonName(finish);
    out["usage"] = {{"prompt_tokens", request.prompt.size()}, {"completion_tokens", tokens.size()}};
    out["timing"] = {{"load_s", load_seconds},
                     {"time_to_first_token_s", prefill},
                     {"total_s", total},
                     {"decode_tokens_per_s", decode_rate}};
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    std::printf("\n");
    std::fprintf(stderr,
                 "[%zu prompt tokens, %zu generated, finish: %s; first token after %.3f s, then "
                 "%.1f tokens/s]\n",
                 request.prompt.size(), tokens.size(), FinishReasonName(finish), prefill,
                 decode_rate);
  }
}

}  // namespace

void RegisterGenerateCommand(CLI::App& app) {
  CLI::App* command =
      app.add_subcommand("generate", "generate text from a prompt, streaming it as it is produced");
  auto options = std::make_shared<GenerateOptions>();
  command
      ->add_option("--model", options->model,
                   "model directory (config.json, model.safetensors, tokenizer.model)")
      ->capture_default_str();
  command->add_option("--prompt", options->prompt, "prompt text");
  command
      ->add_option("--prompt-tokens", options->prompt_tokens,
                   "prompt as token ids (no tokenizer needed)")
      ->delimiter(',');
  command->add_option("--max-tokens", options->max_tokens, "tokens to generate at most")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24))
      ->capture_default_str();
  auto* sampling = command->add_option_group("Sampling");
  sampling->add_option("--temperature", options->sampling.temperature, "0 = greedy")
      ->capture_default_str();
  sampling->add_option("--top-k", options->sampling.top_k,
                       "keep the k most likely tokens (0 = off)");
  sampling->add_option("--top-p", options->sampling.top_p,
                       "nucleus: keep the smallest set with this mass (1 = off)");
  sampling->add_option("--min-p", options->sampling.min_p,
                       "drop tokens below min_p x the top probability (0 = off)");
  sampling->add_option("--repetition-penalty", options->sampling.repetition_penalty,
                       "> 1 discourages repeats");
  sampling->add_option("--seed", options->sampling.seed, "random seed (same seed, same output)");
  sampling->add_option("--stop", options->stop,
                       "stop string (repeatable); not included in the output");
  sampling->add_flag("--ignore-eos", options->ignore_eos,
                     "keep generating past the end-of-sequence token");
  AddEngineFlags(*command, options->engine);
  command->add_flag("--json", options->json,
                    "print one JSON object at the end instead of streaming");
  command->callback([options]() { RunGenerate(*options); });
}

}  // namespace mixattn::cli
