// mixattn eval: perplexity and RULER-style long-context tasks (eval/tasks.h) for a model
// directory, through the engine, with a table, JSON and a heat map of accuracy by length and
// needle depth.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/model_loading.h"
#include "core/error.h"
#include "core/units.h"
#include "eval/evaluator.h"
#include "eval/tasks.h"
#include "model/kv_plan.h"
#include "model/presets.h"
#include "plot/png_chart.h"
#include "train/token_shards.h"

namespace mixattn::cli {
namespace {

using Json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

struct EvalOptions {
  std::string model = kDefaultModelDir;
  std::string data;  // default: the model directory
  std::vector<std::string> tasks = {
      "ppl", "niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt",
      "cwe", "fwe",         "copy"};
  std::vector<int64_t> lengths = {512, 1024, 2048};
  std::vector<double> depths = {0.0, 0.25, 0.5, 0.75, 1.0};
  int64_t samples = 20;
  int64_t ppl_windows = 16;
  uint64_t seed = 1;
  std::string json_path;
  std::string plot_path;
  std::string outputs_path;
  EngineFlags engine;
};

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// "eval: samples 120/420 (28%) 35s, ETA 1m30s": rewritten in place on a terminal, a line every
// 10 seconds in a log.
class EvalProgress {
 public:
  explicit EvalProgress(std::string what)
      : what_(std::move(what)), tty_(::isatty(2) == 1), start_(Clock::now()) {}
  void operator()(int64_t done, int64_t total) {
    const Clock::time_point now = Clock::now();
    if (done < total && std::chrono::duration<double>(now - last_).count() < (tty_ ? 0.2 : 10.0))
      return;
    last_ = now;
    const double elapsed = SecondsSince(start_);
    const double eta = done > 0 ? elapsed * static_cast<double>(total - done) / done : 0;
    std::fprintf(stderr, "%seval: %s %lld/%lld (%d%%) %.0fs, ETA %.0fs%s", tty_ ? "\r" : "",
                 what_.c_str(), static_cast<long long>(done), static_cast<long long>(total),
                 total > 0 ? static_cast<int>(100 * done / total) : 100, elapsed, eta,
                 tty_ ? (done >= total ? "\x1b[K\n" : "\x1b[K") : "\n");
    std::fflush(stderr);
  }

 private:
  std::string what_;
  bool tty_;
  Clock::time_point start_, last_{};
};

uint64_t SampleSeed(uint64_t seed, eval::Task task, int64_t length, int64_t index) {
  uint64_t h = seed * 0x9e3779b97f4a7c15ull;
  for (uint64_t part : {static_cast<uint64_t>(task) + 1, static_cast<uint64_t>(length),
                        static_cast<uint64_t>(index)}) {
    h ^= part + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  }
  return h;
}

std::string Cell(double value, eval::Interval interval) {
  char text[48];
  std::snprintf(text, sizeof text, "%.2f [%.2f,%.2f]", value, interval.low, interval.high);
  return text;
}

void Validate(const EvalOptions& options) {
  if (options.lengths.empty()) Fail("--lengths is empty");
  for (int64_t length : options.lengths) {
    if (length < 16) Fail("--lengths: ", length, " is too short (at least 16 tokens)");
  }
  for (double depth : options.depths) {
    if (!(depth >= 0 && depth <= 1)) Fail("--depths: ", depth, " is not in [0, 1]");
  }
  if (options.depths.empty()) Fail("--depths is empty");
  if (!options.plot_path.empty() && !options.plot_path.ends_with(".png"))
    Fail("--plot ", options.plot_path, ": the file name must end in .png");
  for (const std::string& task : options.tasks) {
    if (task != "ppl") eval::ParseTask(task);
  }
}

void RunEval(const EvalOptions& options) {
  Validate(options);
  const Clock::time_point start = Clock::now();
  const InferenceModel loaded = LoadInferenceModel(options.model);
  const ModelConfig& config = loaded.model.config;
  if (!loaded.tokenizer)
    Fail(loaded.tokenizer_path, " does not exist: the tasks need the model's tokenizer");
  const Tokenizer& tokenizer = *loaded.tokenizer;
  const std::string data = options.data.empty() ? options.model : options.data;
  const std::string val_path = (std::filesystem::path(data) / "val.bin").string();
  if (!std::filesystem::exists(val_path)) {
    Fail(val_path,
         " does not exist: give --data DIR, a `mixattn data` directory made with this "
         "model's tokenizer (its val.bin is the held-out text)");
  }
  const TokenShard val =
      TokenShard::Open(val_path, config.vocab_size, Sha256FileHex(loaded.tokenizer_path));
  std::vector<int> stream(static_cast<size_t>(val.size()));
  val.Read(0, stream);

  bool want_ppl = false;
  std::vector<eval::Task> tasks;
  for (const std::string& name : options.tasks) {
    if (name == "ppl") {
      want_ppl = true;
    } else {
      tasks.push_back(eval::ParseTask(name));
    }
  }
  EngineOptions engine_options = ToEngineOptions(options.engine);
  engine_options.max_batch_tokens = 1024;

  // Samples first: every error (a length too short for a task, too long for the model) comes
  // before any compute.
  const int64_t longest = *std::max_element(options.lengths.begin(), options.lengths.end());
  std::vector<eval::Sample> samples;
  if (!tasks.empty()) {
    const eval::Haystack haystack(tokenizer, stream, longest);
    for (eval::Task task : tasks) {
      for (int64_t length : options.lengths) {
        for (int64_t i = 0; i < options.samples; ++i) {
          const double depth = options.depths[static_cast<size_t>(i) % options.depths.size()];
          samples.push_back(eval::MakeSample(tokenizer, haystack, task, length, depth,
                                             SampleSeed(options.seed, task, length, i)));
          const eval::Sample& sample = samples.back();
          if (length + sample.max_tokens > config.max_position_embeddings) {
            Fail("--lengths: ", length, " plus the answer of ", eval::TaskName(task), " (",
                 sample.max_tokens, " tokens) exceeds the model's context of ",
                 config.max_position_embeddings, " tokens");
          }
        }
      }
    }
  }
  for (int64_t length : options.lengths) {
    if (want_ppl && length > config.max_position_embeddings) {
      Fail("--lengths: ", length, " exceeds the model's context of ",
           config.max_position_embeddings, " tokens");
    }
  }

  std::vector<eval::PerplexityResult> perplexity;
  if (want_ppl) {
    for (int64_t length : options.lengths) {
      EvalProgress progress("perplexity at " + std::to_string(length) + ", windows");
      perplexity.push_back(eval::Perplexity(config, loaded.model.weights, stream, length,
                                            options.ppl_windows, engine_options,
                                            std::ref(progress)));
    }
  }
  std::vector<eval::SampleOutcome> outcomes;
  if (!samples.empty()) {
    EvalProgress progress("task samples");
    outcomes = eval::RunSamples(config, loaded.model.weights, tokenizer, samples, engine_options,
                                std::ref(progress));
  }
  if (!options.outputs_path.empty()) {
    std::ofstream file(options.outputs_path);
    if (!file) Fail("cannot write --outputs ", options.outputs_path);
    for (size_t i = 0; i < samples.size(); ++i) {
      const eval::Sample& sample = samples[i];
      Json line = {{"task", eval::TaskName(sample.task)}, {"length", sample.length}};
      if (sample.depth) line["depth"] = *sample.depth;
      line.update({{"distance", sample.distance},
                   {"answers", sample.answers},
                   {"output", outcomes[i].output},
                   {"score", outcomes[i].score}});
      if (outcomes[i].nll) line["nll"] = *outcomes[i].nll;
      file << line.dump(-1, ' ', false, Json::error_handler_t::replace) << "\n";
    }
  }
  const std::vector<eval::TaskScore> by_length = eval::Summarize(samples, outcomes, false);
  const std::vector<eval::TaskScore> by_depth = eval::Summarize(samples, outcomes, true);
  const double seconds = SecondsSince(start);

  // Table: rows are tasks, columns lengths.
  std::printf("%-16s", "task");
  for (int64_t length : options.lengths) std::printf("  %-22lld", static_cast<long long>(length));
  std::printf("\n");
  if (want_ppl) {
    std::printf("%-16s", "ppl");
    for (const eval::PerplexityResult& p : perplexity) {
      char text[48];
      std::snprintf(text, sizeof text, "%.2f [%.2f,%.2f]", p.perplexity(),
                    std::exp(p.nll_interval.low), std::exp(p.nll_interval.high));
      std::printf("  %-22s", text);
    }
    std::printf("\n");
  }
  for (eval::Task task : tasks) {
    std::printf("%-16s", std::string(eval::TaskName(task)).c_str());
    for (const eval::TaskScore& score : by_length) {
      if (score.task == task) std::printf("  %-22s", Cell(score.accuracy, score.interval).c_str());
    }
    std::printf("\n");
    if (task != eval::Task::kCopy) continue;
    std::printf("%-16s", "copy nll");
    for (const eval::TaskScore& score : by_length) {
      if (score.task != task || !score.nll) continue;
      char text[48];
      std::snprintf(text, sizeof text, "%.2f [%.2f,%.2f]", *score.nll, score.nll_interval.low,
                    score.nll_interval.high);
      std::printf("  %-22s", text);
    }
    std::printf("\n");
  }
  std::printf(
      "(ppl: perplexity of %lld windows per length; tasks: accuracy of %lld samples per "
      "length, 95%% interval%s; %.0f s)\n",
      static_cast<long long>(options.ppl_windows), static_cast<long long>(options.samples),
      std::find(tasks.begin(), tasks.end(), eval::Task::kCopy) != tasks.end()
          ? "; copy nll: mean loss (nats) on the repeated tokens, about ln V without copying"
          : "",
      seconds);

  if (!options.json_path.empty()) {
    const KvPlan plan(config);
    Json out;
    out["model"] = options.model;
    out["data"] = val_path;
    out["layout"] = LayoutString(config.layers);
    out["seed"] = options.seed;
    out["samples"] = options.samples;
    out["lengths"] = options.lengths;
    out["depths"] = options.depths;
    Json kv = Json::object();
    for (int64_t length : options.lengths)
      kv[std::to_string(length)] = plan.kv_bytes_per_sequence(length, engine_options.kv_dtype);
    out["kv_bytes_per_sequence"] = kv;
    Json ppl = Json::array();
    for (const eval::PerplexityResult& p : perplexity) {
      ppl.push_back({{"length", p.length},
                     {"windows", p.windows},
                     {"tokens", p.tokens},
                     {"nll", p.nll},
                     {"nll_low", p.nll_interval.low},
                     {"nll_high", p.nll_interval.high},
                     {"ppl", p.perplexity()},
                     {"ppl_low", std::exp(p.nll_interval.low)},
                     {"ppl_high", std::exp(p.nll_interval.high)}});
    }
    out["perplexity"] = ppl;
    auto scores_json = [](const std::vector<eval::TaskScore>& scores) {
      Json rows = Json::array();
      for (const eval::TaskScore& s : scores) {
        Json row = {{"task", eval::TaskName(s.task)}, {"length", s.length}};
        if (s.depth) row["depth"] = *s.depth;
        row.update({{"samples", s.samples},
                    {"accuracy", s.accuracy},
                    {"ci_low", s.interval.low},
                    {"ci_high", s.interval.high},
                    {"mean_distance", s.mean_distance}});
        if (s.nll) {
          row.update({{"nll", *s.nll},
                      {"nll_low", s.nll_interval.low},
                      {"nll_high", s.nll_interval.high}});
        }
        rows.push_back(row);
      }
      return rows;
    };
    out["tasks"] = scores_json(by_length);
    out["by_depth"] = scores_json(by_depth);
    out["seconds"] = seconds;
    std::ofstream file(options.json_path);
    if (!file) Fail("cannot write --json ", options.json_path);
    file << out.dump(2) << "\n";
  }

  if (!options.plot_path.empty() && !tasks.empty()) {
    std::vector<plot::HeatMap> panels;
    for (eval::Task task : tasks) {
      plot::HeatMap panel;
      panel.title = std::string(eval::TaskName(task));
      panel.x_label = "context length (tokens)";
      for (int64_t length : options.lengths) panel.x_ticks.push_back(std::to_string(length));
      const std::vector<double> depths =
          eval::TaskHasDepth(task) ? options.depths : std::vector<double>{};
      panel.y_label = depths.empty() ? "" : "needle depth";
      for (double depth : depths) {
        char text[16];
        std::snprintf(text, sizeof text, "%.2f", depth);
        panel.y_ticks.push_back(text);
      }
      if (depths.empty()) panel.y_ticks.push_back("all");
      panel.values.assign(panel.y_ticks.size(),
                          std::vector<double>(options.lengths.size(), std::nan("")));
      for (const eval::TaskScore& s : depths.empty() ? by_length : by_depth) {
        if (s.task != task) continue;
        const size_t column = static_cast<size_t>(
            std::find(options.lengths.begin(), options.lengths.end(), s.length) -
            options.lengths.begin());
        const size_t row =
            depths.empty() ? 0
                           : static_cast<size_t>(std::find(depths.begin(), depths.end(), *s.depth) -
                                                 depths.begin());
        panel.values[row][column] = s.accuracy;
      }
      panels.push_back(std::move(panel));
    }
    plot::WriteHeatMapsPng(panels, "accuracy by context length and needle depth: " + options.model,
                           options.plot_path);
  }
}

}  // namespace

void RegisterEvalCommand(CLI::App& app) {
  auto options = std::make_shared<EvalOptions>();
  CLI::App* command = app.add_subcommand(
      "eval",
      "evaluate a model: perplexity on held-out text and RULER-style long-context tasks "
      "(needle in a haystack, variable tracking, word aggregation) by context length and needle "
      "depth, through the engine");
  command
      ->add_option("--model", options->model,
                   "model directory (config.json, model.safetensors, tokenizer.model)")
      ->capture_default_str();
  command->add_option("--data", options->data,
                      "a `mixattn data` directory made with the model's tokenizer; its val.bin is "
                      "the held-out text (default: the model directory)");
  command
      ->add_option("--tasks", options->tasks,
                   "comma-separated: ppl, niah_single, niah_multikey, niah_multivalue, "
                   "niah_multiquery, vt, cwe, fwe, copy (the share of a repeated span of random "
                   "tokens predicted from its first copy)")
      ->delimiter(',')
      ->capture_default_str();
  command->add_option("--lengths", options->lengths, "context lengths in tokens, comma-separated")
      ->delimiter(',')
      ->capture_default_str();
  command
      ->add_option("--depths", options->depths,
                   "needle depths in [0, 1] (0 = first in the context), comma-separated; "
                   "samples cycle through them")
      ->delimiter(',')
      ->capture_default_str();
  command->add_option("--samples", options->samples, "samples per task and length")
      ->check(CLI::Range(int64_t{1}, int64_t{100000}))
      ->capture_default_str();
  command
      ->add_option("--ppl-windows", options->ppl_windows,
                   "perplexity windows per length, evenly spaced over the held-out text")
      ->check(CLI::Range(int64_t{1}, int64_t{100000}))
      ->capture_default_str();
  command->add_option("--seed", options->seed, "seed of the task samples")->capture_default_str();
  command->add_option("--json", options->json_path, "write the results as JSON to this file");
  command->add_option("--plot", options->plot_path,
                      "write a PNG heat map of accuracy by length and depth, one panel per task");
  command->add_option("--outputs", options->outputs_path,
                      "write every sample's answers, generated text and score as JSON lines");
  AddEngineFlags(*command, options->engine);
  command->callback([options] { RunEval(*options); });
}

}  // namespace mixattn::cli
