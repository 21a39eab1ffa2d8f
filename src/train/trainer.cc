#include "train/trainer.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "train/checkpoint.h"

namespace mixattn {
namespace {

using nlohmann::json;

int64_t CountScored(const TrainingBatch& batch) {
  return std::count_if(batch.targets.begin(), batch.targets.end(),
                       [](int32_t t) { return t >= 0; });
}

// What must agree between a checkpoint and the data it resumes on.
json DataFingerprint(const TrainingData& data) {
  return {{"tokenizer_sha256", data.train().tokenizer_sha256()},
          {"train_tokens", data.train().size()},
          {"val_tokens", data.validation().size()},
          {"long_range_tokens", data.long_range() ? data.long_range()->size() : 0}};
}

}  // namespace

int64_t TrainerOptions::warmup_steps() const {
  return warmup >= 0 ? warmup : std::max<int64_t>(1, steps / 20);
}

void TrainerOptions::Validate() const {
  if (steps < 1) Fail("--steps ", steps, " must be at least 1");
  if (batch < 1) Fail("--batch ", batch, " must be at least 1");
  if (seq < 1) Fail("--seq ", seq, " must be at least 1");
  if (accumulation < 1) Fail("--accumulation ", accumulation, " must be at least 1");
  if (!(lr > 0.0 && std::isfinite(lr))) Fail("--lr ", lr, " must be a positive number");
  if (!(init_residual_scale > 0.0 && std::isfinite(init_residual_scale)))
    Fail("--init-residual-scale ", init_residual_scale, " must be a positive number");
  if (warmup > steps) Fail("--warmup ", warmup, " exceeds --steps ", steps);
  if (!std::isfinite(clip)) Fail("--clip must be a finite number");
  if (long_range_fraction != -1.0 && !(long_range_fraction >= 0.0 && long_range_fraction <= 1.0))
    Fail("--long-range-mix ", long_range_fraction, " is outside [0, 1]");
  LrSchedule{lr, warmup_steps(), steps, min_lr_ratio}.Validate();
}

std::string TrainerOptionsJson(const TrainerOptions& o) {
  return json{{"steps", o.steps},
              {"batch", o.batch},
              {"seq", o.seq},
              {"accumulation", o.accumulation},
              {"lr", o.lr},
              {"min_lr_ratio", o.min_lr_ratio},
              {"warmup", o.warmup_steps()},
              {"beta1", o.adamw.beta1},
              {"beta2", o.adamw.beta2},
              {"epsilon", o.adamw.epsilon},
              {"weight_decay", o.adamw.weight_decay},
              {"clip", o.clip},
              {"seed", o.seed},
              {"init_residual_scale", o.init_residual_scale},
              {"matmul", MatmulPrecisionName(o.precision)},
              {"long_range_mix", o.long_range_fraction}}
      .dump();
}

TrainerOptions TrainerOptionsFromJson(const std::string& text) {
  TrainerOptions o;
  try {
    const json j = json::parse(text);
    o.steps = j.at("steps");
    o.batch = j.at("batch");
    o.seq = j.at("seq");
    o.accumulation = j.at("accumulation");
    o.lr = j.at("lr");
    o.min_lr_ratio = j.at("min_lr_ratio");
    o.warmup = j.at("warmup");
    o.adamw.beta1 = j.at("beta1");
    o.adamw.beta2 = j.at("beta2");
    o.adamw.epsilon = j.at("epsilon");
    o.adamw.weight_decay = j.at("weight_decay");
    o.clip = j.at("clip");
    o.seed = j.at("seed");
    // Runs written before the option existed were initialised with GPT-2's 1/sqrt(2L); the value
    // matters only to a run's first step, never to a resumed one.
    o.init_residual_scale = j.value("init_residual_scale", 1.0);
    o.precision = j.at("matmul") == "bf16" ? MatmulPrecision::kBf16 : MatmulPrecision::kF32;
    o.long_range_fraction = j.at("long_range_mix");
  } catch (const json::exception& e) {
    Fail("training options: ", e.what());
  }
  return o;
}

Trainer::Trainer(const ModelConfig& config, const TrainerOptions& options, const TrainingData& data,
                 const Distributed& world)
    : Trainer(config,
              RandomWeights(config, options.seed, /*norm_jitter=*/0.0, options.init_residual_scale),
              options, data, world) {}

Trainer::Trainer(const ModelConfig& config, ModelWeights params, const TrainerOptions& options,
                 const TrainingData& data, const Distributed& world)
    : config_(config),
      options_(options),
      data_(data),
      world_(world),
      model_(config, options.precision),
      params_(std::move(params)),
      grads_(ZerosLike(params_)),
      optimizer_(params_, options.adamw),
      schedule_{options.lr, options.warmup_steps(), options.steps, options.min_lr_ratio} {
  options_.Validate();
  if (config_.vocab_size != data.train().vocab_size())
    Fail("the model's vocabulary (", config_.vocab_size, ") differs from the data's (",
         data.train().vocab_size(), ", ", data.dir(), ")");
  if (options_.seq > config_.max_position_embeddings)
    Fail("--seq ", options_.seq, " exceeds the model's max_position_embeddings (",
         config_.max_position_embeddings, ")");
  data.CheckSequenceLength(options_.seq);
}

Trainer Trainer::Resume(const std::string& checkpoint_path, const TrainerOptions& options,
                        const TrainingData& data, const Distributed& world) {
  Checkpoint checkpoint = LoadCheckpoint(checkpoint_path);
  json state;
  try {
    state = json::parse(checkpoint.trainer_state_json);
  } catch (const json::exception& e) {
    Fail(checkpoint_path, ": trainer state: ", e.what());
  }
  if (!state.contains("options") || !state.contains("data") || !state.contains("step"))
    Fail(checkpoint_path, ": trainer state lacks options, data or step");
  const json saved = json::parse(state["options"].get<std::string>());
  const json wanted = json::parse(TrainerOptionsJson(options));
  for (const auto& [key, value] : wanted.items()) {
    if (saved.value(key, json()) != value)
      Fail("--", key, " ", value.dump(), " differs from the run being resumed (", saved[key].dump(),
           " in ", checkpoint_path, "); a resumed run keeps its options");
  }
  if (state["data"] != DataFingerprint(data))
    Fail(checkpoint_path, " was trained on other data than ", data.dir(), " (",
         state["data"].dump(), ")");
  Trainer trainer(checkpoint.config, std::move(checkpoint.params), options, data, world);
  trainer.optimizer_.Restore(std::move(checkpoint.adam_m), std::move(checkpoint.adam_v),
                             checkpoint.optimizer_step);
  trainer.step_ = state["step"].get<int64_t>();
  return trainer;
}

int64_t Trainer::tokens_per_step() const {
  return world_.size() * options_.accumulation * options_.batch * options_.seq;
}

StepResult Trainer::Step() {
  MIXATTN_CHECK(!done());
  const int64_t k = options_.accumulation, b = options_.batch, ranks = world_.size();
  std::vector<TrainingBatch> micro(static_cast<size_t>(k));
  double scored[2] = {0.0, 0.0};  // [0]: tokens scored on all ranks; [1]: sum of losses
  std::vector<int64_t> scored_in(static_cast<size_t>(k));
  for (int64_t m = 0; m < k; ++m) {
    TrainingBatch& batch = micro[static_cast<size_t>(m)];
    batch = {b, options_.seq, std::vector<int32_t>(static_cast<size_t>(b * options_.seq)),
             std::vector<int32_t>(static_cast<size_t>(b * options_.seq))};
    const int64_t first = ((step_ * k + m) * ranks + world_.rank()) * b;
    for (int64_t j = 0; j < b; ++j) data_.FillSample(options_.seed, first + j, batch, j);
    scored_in[static_cast<size_t>(m)] = CountScored(batch);
    scored[0] += static_cast<double>(scored_in[static_cast<size_t>(m)]);
  }
  world_.SumInPlace(scored, 1);

  ZeroGradients(grads_);
  for (int64_t m = 0; m < k; ++m) {
    const double share =
        scored[0] > 0 ? static_cast<double>(scored_in[static_cast<size_t>(m)]) / scored[0] : 0.0;
    const double loss =
        model_.ForwardBackward(params_, micro[static_cast<size_t>(m)], share, grads_);
    scored[1] += loss * share;
  }
  world_.SumInPlace(&scored[1], 1);
  world_.SumInPlace(grads_);

  StepResult result;
  result.loss = scored[1];
  result.lr = schedule_.LearningRate(step_);
  result.tokens = tokens_per_step();
  result.grad_norm = ClipGradNorm(grads_, options_.clip);
  result.skipped = !std::isfinite(result.grad_norm) || !std::isfinite(result.loss);
  if (!result.skipped) optimizer_.Step(params_, grads_, result.lr);
  result.step = ++step_;
  return result;
}

double Trainer::ValidationLoss(int64_t batches) {
  double sums[2] = {0.0, 0.0};  // loss x tokens, tokens
  // The same windows for any split of the global batch over ranks: batch i holds windows
  // [i N B, (i + 1) N B), rank r the r-th B of them.
  const int64_t b = options_.batch, ranks = world_.size();
  for (int64_t i = 0; i < batches; ++i) {
    const TrainingBatch batch = data_.ValidationBatch((i * ranks + world_.rank()) * b, b,
                                                      batches * ranks * b, options_.seq);
    const TrainingModel::LossResult loss = model_.Loss(params_, batch);
    sums[0] += loss.mean_loss * static_cast<double>(loss.scored_rows);
    sums[1] += static_cast<double>(loss.scored_rows);
  }
  world_.SumInPlace(sums, 2);
  return sums[1] > 0 ? sums[0] / sums[1] : 0.0;
}

std::string Trainer::StateJson() const {
  return json{{"step", step_},
              {"samples_seen", step_ * world_.size() * options_.accumulation * options_.batch},
              {"tokens_seen", step_ * tokens_per_step()},
              {"world_size", world_.size()},
              {"options", TrainerOptionsJson(options_)},
              {"data", DataFingerprint(data_)},
              {"run", json::parse(run_json_)}}
      .dump();
}

void Trainer::SaveCheckpointTo(const std::string& path) const {
  if (world_.is_root()) SaveCheckpoint(path, config_, params_, optimizer_, StateJson());
  world_.Barrier();
}

}  // namespace mixattn
