// `mixattn train`: trains a model from scratch on a `mixattn data` directory, or continues a run.
//
// OUT holds a model directory at every moment after the first checkpoint: config.json,
// tokenizer.model (copied from the data), model.safetensors (the weights of the latest checkpoint,
// in --save-dtype), plus
//   OUT/checkpoints/checkpoint-<step>.safetensors   weights, AdamW state, step, options (f32)
//   OUT/train.jsonl    one JSON object per step {"step", "loss", "lr", "grad_norm", "tokens",
//                      "tokens_per_s", "elapsed_s"} and per evaluation {"step", "val_loss"}
// Every file is written atomically, so a run killed at any moment leaves a readable latest
// checkpoint; `--resume` continues from it and, since the run's state is all in the checkpoint,
// reproduces the losses an uninterrupted run would have logged (train.jsonl is cut back to the
// checkpoint's step first). SIGINT / SIGTERM finish the current step, save a checkpoint and exit
// with status 130.
//
// Under `mpirun -np N` every rank trains on its share of each batch (train/trainer.h); rank 0
// alone writes files and prints.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "cli/commands.h"
#include "cli/model_source.h"
#include "cli/stop_signals.h"
#include "core/error.h"
#include "core/units.h"
#include "model/kv_plan.h"
#include "model/model_dir.h"
#include "model/presets.h"
#include "train/checkpoint.h"
#include "train/token_shards.h"
#include "train/trainer.h"

namespace mixattn::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct TrainCommandOptions {
  std::string data;
  std::string out;
  TrainerOptions trainer;
  std::string matmul = "auto";
  int64_t eval_every = 100;
  int64_t eval_batches = 8;
  int64_t save_every = 200;
  int keep = 3;
  std::string save_dtype = "bf16";
  bool resume = false;
  std::string init_from;  // a model directory or checkpoint file to start from
  bool json = false;
};

struct InitialWeights {
  ModelConfig config;
  ModelWeights weights;  // f32
};

// --init-from: a model directory (config.json + model.safetensors) or a checkpoint file.
InitialWeights LoadInitialWeights(const std::string& path) {
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (status.type() == fs::file_type::not_found)
    Fail("--init-from ", path, " does not exist (give a model directory or a checkpoint file)");
  if (fs::is_directory(status)) {
    LoadedModel model = LoadModelDir(path);
    return {std::move(model.config), std::move(model.weights)};
  }
  Checkpoint checkpoint = LoadCheckpoint(path);
  return {std::move(checkpoint.config), std::move(checkpoint.params)};
}

ModelShape TrainDefaults() {
  ModelShape shape;  // the reference model: about 8M parameters at vocab 8192
  shape.layers = 8;
  shape.hidden = 256;
  shape.heads = 4;
  shape.kv_heads = 1;
  shape.head_dim = 64;
  shape.ffn = 768;
  shape.vocab = 8192;
  shape.window = 128;
  shape.max_position = 4096;
  return shape;
}

std::string Duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char text[32];
  if (s >= 3600) {
    std::snprintf(text, sizeof text, "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60));
  } else {
    std::snprintf(text, sizeof text, "%lldm%02llds", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  }
  return text;
}

// "step 120/1000 [######......] loss 5.432 val 5.610 | 2,345 tok/s | ETA 12m03s": rewritten in
// place on a terminal; in a log, a line every 10 seconds and at every evaluation.
class TrainProgress {
 public:
  TrainProgress(int64_t total_steps, int64_t first_step)
      : total_(total_steps), first_step_(first_step), tty_(::isatty(2) == 1) {}

  void Step(const StepResult& step, double tokens_per_s, double eta_s, bool force) {
    const Clock::time_point now = Clock::now();
    if (!force && std::chrono::duration<double>(now - last_).count() < (tty_ ? 0.2 : 10.0)) return;
    last_ = now;
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(kWidth * step.step / total_);
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(kWidth, '.');
    char val[32] = "";
    if (val_loss_ >= 0) std::snprintf(val, sizeof val, " val %.3f", val_loss_);
    std::fprintf(stderr, "%sstep %lld/%lld [%s] loss %.3f%s | lr %.2e | %.0f tok/s | ETA %s%s%s",
                 tty_ ? "\r" : "", static_cast<long long>(step.step),
                 static_cast<long long>(total_), bar.c_str(), step.loss, val, step.lr, tokens_per_s,
                 Duration(eta_s).c_str(), step.skipped ? " (skipped: non-finite)" : "",
                 tty_ ? "\x1b[K" : "\n");
    std::fflush(stderr);
  }
  void Validation(double loss) { val_loss_ = loss; }
  void Message(const std::string& text) {
    std::fprintf(stderr, "%s%s\n", tty_ ? "\r\x1b[K" : "", text.c_str());
  }
  void Finish() {
    if (tty_) std::fputc('\n', stderr);
  }

 private:
  int64_t total_;
  int64_t first_step_;
  bool tty_;
  double val_loss_ = -1;
  Clock::time_point last_{};
};

// Appends lines to OUT/train.jsonl; on resume first drops the records after the checkpoint.
class JsonlLog {
 public:
  JsonlLog(const std::string& path, int64_t keep_through_step) : path_(path) {
    std::string kept;
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      try {
        if (nlohmann::json::parse(line).at("step").get<int64_t>() <= keep_through_step)
          kept += line + "\n";
      } catch (const nlohmann::json::exception&) {
        // a line torn by a kill mid-write: dropped
      }
    }
    WriteBytesAtomically(path, kept);
    out_.open(path, std::ios::app);
    if (!out_) Fail(path, ": cannot open for appending");
  }
  void Write(const nlohmann::ordered_json& record) {
    out_ << record.dump() << "\n";
    out_.flush();
  }

 private:
  std::string path_;
  std::ofstream out_;
};

void CopyFileAtomically(const fs::path& from, const fs::path& to) {
  std::ifstream in(from, std::ios::binary);
  if (!in) Fail(from.string(), ": cannot read");
  std::ostringstream bytes;
  bytes << in.rdbuf();
  WriteBytesAtomically(to.string(), bytes.str());
}

void RunTrain(const ModelSource& source, TrainCommandOptions options, CLI::App& command,
              const StopSignals& stop_signals) {
  Distributed& world = Distributed::Get();
  const bool root = world.is_root();
  const fs::path out(options.out);
  const fs::path checkpoints = out / "checkpoints";
  options.trainer.precision = options.matmul == "auto"   ? DefaultMatmulPrecision()
                              : options.matmul == "bf16" ? MatmulPrecision::kBf16
                                                         : MatmulPrecision::kF32;
  if (options.eval_every < 0) Fail("--eval-every ", options.eval_every, " must be >= 0");
  if (options.eval_batches < 1) Fail("--eval-batches ", options.eval_batches, " must be >= 1");
  if (options.save_every < 0) Fail("--save-every ", options.save_every, " must be >= 0");
  if (options.keep < 1) Fail("--keep ", options.keep, " must be >= 1");

  const std::optional<std::string> latest = LatestCheckpoint(checkpoints.string());
  if (latest && !options.resume)
    Fail("--out ", options.out, " already holds a training run (", *latest,
         "); pass --resume to continue it, or choose another --out");
  if (!latest && options.resume)
    Fail("--resume: no checkpoint in ", checkpoints.string(), " (start the run without --resume)");

  std::optional<Checkpoint> resumed_from;
  ModelConfig config;
  if (latest) {
    // The run's own options stand in for the flags not given; a flag that contradicts them is
    // an error (Trainer::Resume names it).
    resumed_from = LoadCheckpoint(*latest);
    config = resumed_from->config;
    if (source.has_preset() || source.has_config()) {
      // The command that started the run may be repeated with --resume: the model must match.
      ModelConfig given = source.Resolve();
      if (source.has_preset() && !source.shape_flags().given("--vocab"))
        given.vocab_size = config.vocab_size;
      if (ConfigToJson(given) != ConfigToJson(config))
        Fail("the model given by --", source.has_preset() ? "preset" : "config", " ",
             source.label(), " differs from the one in ", *latest,
             "; leave out --preset / --config to continue that run");
    }
    const TrainerOptions saved = TrainerOptionsFromJson(
        nlohmann::json::parse(resumed_from->trainer_state_json).at("options").get<std::string>());
    const auto given = [&](const char* flag) { return command.count(flag) > 0; };
    TrainerOptions& o = options.trainer;
    if (!given("--steps")) o.steps = saved.steps;
    if (!given("--batch")) o.batch = saved.batch;
    if (!given("--seq")) o.seq = saved.seq;
    if (!given("--accumulation")) o.accumulation = saved.accumulation;
    if (!given("--lr")) o.lr = saved.lr;
    if (!given("--min-lr-ratio")) o.min_lr_ratio = saved.min_lr_ratio;
    if (!given("--warmup")) o.warmup = saved.warmup;
    if (!given("--weight-decay")) o.adamw.weight_decay = saved.adamw.weight_decay;
    if (!given("--beta1")) o.adamw.beta1 = saved.adamw.beta1;
    if (!given("--beta2")) o.adamw.beta2 = saved.adamw.beta2;
    if (!given("--clip")) o.clip = saved.clip;
    if (!given("--seed")) o.seed = saved.seed;
    if (!given("--matmul")) o.precision = saved.precision;
    if (!given("--long-range-mix")) o.long_range_fraction = saved.long_range_fraction;
    const nlohmann::json run = nlohmann::json::parse(resumed_from->trainer_state_json).at("run");
    if (!given("--eval-every")) options.eval_every = run.value("eval_every", options.eval_every);
    if (!given("--eval-batches"))
      options.eval_batches = run.value("eval_batches", options.eval_batches);
    if (!given("--save-every")) options.save_every = run.value("save_every", options.save_every);
    if (!given("--keep")) options.keep = run.value("keep", options.keep);
    if (!given("--save-dtype")) options.save_dtype = run.value("save_dtype", options.save_dtype);
  } else {
    if (!source.has_preset() && !source.has_config())
      Fail("give the model: --preset NAME (with shape flags) or --config FILE");
    config = source.Resolve();
  }

  const TokenShard probe = TokenShard::Open((fs::path(options.data) / "train.bin").string());
  if (!latest && source.has_preset() && !source.shape_flags().given("--vocab")) {
    config.vocab_size = probe.vocab_size();  // the preset takes the data's vocabulary
    ValidateConfig(config);
  }
  TrainingData data = TrainingData::Open(options.data, config.vocab_size);
  if (options.trainer.long_range_fraction >= 0)
    data.set_long_range_fraction(options.trainer.long_range_fraction);

  std::optional<Trainer> trainer;
  if (latest) {
    resumed_from.reset();  // free its memory; Resume reads the file again
    trainer.emplace(Trainer::Resume(*latest, options.trainer, data, world));
  } else if (!options.init_from.empty()) {
    auto [from_config, weights] = LoadInitialWeights(options.init_from);
    if (ConfigToJson(from_config) != ConfigToJson(config)) {
      Fail("--init-from ", options.init_from, ": its model (", from_config.num_layers(),
           " layers, ", LayoutString(from_config.layers), ", hidden ", from_config.hidden_size,
           ", vocab ", from_config.vocab_size, ") differs from the one this run trains (",
           config.num_layers(), " layers, ", LayoutString(config.layers), ", hidden ",
           config.hidden_size, ", vocab ", config.vocab_size,
           "); give the same --preset and shape flags, or leave them out with --config ",
           options.init_from, fs::is_directory(options.init_from) ? "/config.json" : "");
    }
    trainer.emplace(config, std::move(weights), options.trainer, data, world);
  } else {
    trainer.emplace(config, options.trainer, data, world);
  }

  trainer->set_run_json(nlohmann::json{
      {"eval_every", options.eval_every},
      {"eval_batches", options.eval_batches},
      {"save_every", options.save_every},
      {"keep", options.keep},
      {"save_dtype", options.save_dtype},
      {"init_from",
       options.init_from}}.dump());

  std::optional<JsonlLog> log;
  if (root) {
    fs::create_directories(checkpoints);
    WriteBytesAtomically((out / "config.json").string(), ConfigToJson(config));
    const fs::path tokenizer = fs::path(options.data) / "tokenizer.model";
    if (fs::exists(tokenizer)) CopyFileAtomically(tokenizer, out / "tokenizer.model");
    log.emplace((out / "train.jsonl").string(), trainer->step());
  }
  world.Barrier();

  const KvPlan plan(config);
  TrainProgress progress(options.trainer.steps, trainer->step());
  if (root) {
    std::ostringstream head;
    head << (latest ? "resuming " + *latest + " at step " + std::to_string(trainer->step())
                    : std::string("training"))
         << ": " << ParameterCount(config) << " parameters, " << config.num_layers()
         << " layers, vocab " << config.vocab_size << "; " << world.size() << " rank(s) x "
         << options.trainer.accumulation << " x " << options.trainer.batch << " x "
         << options.trainer.seq << " = " << trainer->tokens_per_step() << " tokens/step; matmuls "
         << MatmulPrecisionName(options.trainer.precision) << "; long-range mix "
         << data.long_range_fraction();
    progress.Message(head.str());
  }

  const DType save_dtype = options.save_dtype == "f32" ? DType::kF32 : DType::kBF16;
  auto save = [&](bool final_save) {
    const std::string path = CheckpointPath(checkpoints.string(), trainer->step());
    trainer->SaveCheckpointTo(path);
    if (!root) return;
    SaveWeights((out / "model.safetensors").string(), trainer->weights(), save_dtype);
    PruneCheckpoints(checkpoints.string(), options.keep);
    if (final_save) progress.Message("saved " + path);
  };
  auto evaluate = [&]() {
    const double loss = trainer->ValidationLoss(options.eval_batches);
    if (root) {
      progress.Validation(loss);
      nlohmann::ordered_json record;
      record["step"] = trainer->step();
      record["val_loss"] = loss;
      log->Write(record);
    }
    return loss;
  };

  // Every rank stops after the same step (mpirun forwards a signal to each rank, not all at once).
  auto stop_requested = [&]() {
    double requested = stop_signals.Pending() ? 1.0 : 0.0;
    world.SumInPlace(&requested, 1);
    return requested > 0;
  };
  const Clock::time_point start = Clock::now();
  const int64_t first_step = trainer->step();
  StepResult last;
  if (trainer->step() == 0 && options.eval_every > 0) evaluate();
  while (!trainer->done()) {
    last = trainer->Step();
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    const double tokens_per_s =
        static_cast<double>((last.step - first_step) * trainer->tokens_per_step()) / elapsed;
    const bool eval_now =
        options.eval_every > 0 && (last.step % options.eval_every == 0 || trainer->done());
    if (eval_now) evaluate();
    if (root) {
      nlohmann::ordered_json record;
      record["step"] = last.step;
      record["loss"] = last.loss;
      record["lr"] = last.lr;
      record["grad_norm"] = last.grad_norm;
      record["tokens"] = last.tokens;
      record["tokens_per_s"] = tokens_per_s;
      record["elapsed_s"] = elapsed;
      if (last.skipped) record["skipped"] = true;
      log->Write(record);
      const double eta = static_cast<double>(options.trainer.steps - last.step) * elapsed /
                         static_cast<double>(last.step - first_step);
      progress.Step(last, tokens_per_s, eta, eval_now || trainer->done());
    }
    const bool stop = stop_requested();
    if (trainer->done() || stop ||
        (options.save_every > 0 && last.step % options.save_every == 0)) {
      save(trainer->done() || stop);
    }
    if (stop && !trainer->done()) {
      if (root) {
        progress.Finish();
        progress.Message("interrupted at step " + std::to_string(last.step) +
                         "; continue with the same command and --resume");
      }
      std::exit(130);
    }
  }
  if (trainer->step() == first_step) save(true);  // resumed a finished run: nothing to do
  if (root) {
    progress.Finish();
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    nlohmann::ordered_json summary;
    summary["out"] = options.out;
    summary["steps"] = trainer->step();
    summary["final_loss"] = last.loss;
    summary["parameters"] = ParameterCount(config);
    summary["tokens_per_step"] = trainer->tokens_per_step();
    summary["seconds"] = elapsed;
    summary["tokens_per_s"] =
        elapsed > 0
            ? static_cast<double>((trainer->step() - first_step) * trainer->tokens_per_step()) /
                  elapsed
            : 0.0;
    summary["matmul"] = MatmulPrecisionName(options.trainer.precision);
    if (options.json) {
      std::printf("%s\n", summary.dump(2).c_str());
    } else {
      std::printf("trained %lld steps in %s (%.0f tokens/s); model in %s\n",
                  static_cast<long long>(trainer->step()), Duration(elapsed).c_str(),
                  summary["tokens_per_s"].get<double>(), options.out.c_str());
    }
  }
}

}  // namespace

void RegisterTrainCommand(CLI::App& app) {
  CLI::App* command = app.add_subcommand(
      "train",
      "train a model on a `mixattn data` directory (or continue a run with --resume)\n"
      "Runs data-parallel under `mpirun -np N`; checkpoints resume exactly.");
  auto source = std::make_shared<ModelSource>(TrainDefaults());
  source->Register(*command);
  auto options = std::make_shared<TrainCommandOptions>();
  TrainerOptions& t = options->trainer;
  command->add_option("--data", options->data, "data directory made by `mixattn data`")->required();
  command->add_option("--out", options->out, "run directory: model, checkpoints, train.jsonl")
      ->required();
  command->add_flag("--resume", options->resume,
                    "continue the run in --out from its latest checkpoint");
  command->add_option("--init-from", options->init_from,
                      "start from these weights instead of random ones: a model directory "
                      "(bf16 weights are widened to f32) or another run's checkpoint file; its "
                      "model must be the one this run trains. Optimizer state, step and schedule "
                      "start afresh. Used when the run starts; --resume continues from the "
                      "run's own checkpoint");
  auto* run = command->add_option_group("Run");
  run->add_option("--steps", t.steps, "optimizer steps of the whole run")->capture_default_str();
  run->add_option("--batch", t.batch, "sequences per micro-batch on each rank")
      ->capture_default_str();
  run->add_option("--seq", t.seq, "tokens per sequence")->capture_default_str();
  run->add_option("--accumulation", t.accumulation, "micro-batches per optimizer step")
      ->capture_default_str();
  run->add_option("--seed", t.seed, "seed of the initial weights and of the data order")
      ->capture_default_str();
  run->add_option(
         "--init-residual-scale", t.init_residual_scale,
         "scale of the random o_proj and down_proj weights; 0.01 (layers start adding almost "
         "nothing to the residual stream) let a 12-layer model learn to copy at lr 1e-3, where 1 "
         "did not within 10,000 steps (docs/results.md)")
      ->capture_default_str();
  run->add_option("--long-range-mix", t.long_range_fraction,
                  "fraction of sequences from train_longrange.bin (default: its token share)");
  run->add_option("--matmul", options->matmul,
                  "matmul precision: auto (bf16 where the CPU has native bf16), bf16, f32")
      ->check(CLI::IsMember({"auto", "bf16", "f32"}))
      ->capture_default_str();
  auto* optimizer = command->add_option_group("Optimizer (AdamW, warm-up then cosine)");
  optimizer->add_option("--lr", t.lr, "peak learning rate")->capture_default_str();
  optimizer->add_option("--min-lr-ratio", t.min_lr_ratio, "final lr as a fraction of the peak")
      ->capture_default_str();
  optimizer->add_option("--warmup", t.warmup, "warm-up steps (default: 5% of --steps)");
  optimizer
      ->add_option("--weight-decay", t.adamw.weight_decay,
                   "decoupled weight decay (not on norms and embeddings)")
      ->capture_default_str();
  optimizer->add_option("--beta1", t.adamw.beta1)->capture_default_str();
  optimizer->add_option("--beta2", t.adamw.beta2)->capture_default_str();
  optimizer->add_option("--clip", t.clip, "max global gradient norm (0 = off)")
      ->capture_default_str();
  auto* output = command->add_option_group("Output");
  output->add_option("--eval-every", options->eval_every, "validation every N steps (0 = never)")
      ->capture_default_str();
  output->add_option("--eval-batches", options->eval_batches, "validation batches")
      ->capture_default_str();
  output
      ->add_option("--save-every", options->save_every,
                   "checkpoint every N steps (0 = only at the end)")
      ->capture_default_str();
  output->add_option("--keep", options->keep, "checkpoints kept")->capture_default_str();
  output->add_option("--save-dtype", options->save_dtype, "dtype of OUT/model.safetensors")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  output->add_flag("--json", options->json, "print a JSON summary at the end");
  command->callback([source, options, command]() {
    const StopSignals stop_signals;  // before Distributed starts MPI's threads
    Distributed& world = Distributed::Get();
    try {
      RunTrain(*source, *options, *command, stop_signals);
    } catch (const Error& e) {
      if (world.size() == 1) throw;
      std::fprintf(stderr, "error (rank %d): %s\n", world.rank(), e.what());
      world.Abort(1);
    }
  });
}

}  // namespace mixattn::cli
