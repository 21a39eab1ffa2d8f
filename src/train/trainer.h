// The training loop: batches from TrainingData, forward/backward (TrainingModel), gradient
// all-reduce over ranks (Distributed), clipping, AdamW with the warm-up + cosine schedule, and
// checkpoints that resume a run exactly.
//
// One optimizer step on a world of N ranks with batch B and accumulation K: every rank runs K
// micro-batches of B sequences; micro-batch m of rank r at step s holds the run's samples
//   ((s K + m) N + r) B + j,  j = 0..B-1   (TrainingData::FillSample)
// so N ranks x batch B draw exactly the samples 1 rank x batch N B would. The loss of the step is
// the mean over every scored token of all N K B sequences: the ranks first sum how many tokens
// each scores, and each micro-batch's gradient is weighted by its share. The gradients are then
// summed over ranks, clipped by global norm and applied; every rank holds the same weights.
//
// Exact resume: the state of a run is the weights, AdamW's moments and step count, and the step
// number (sampling is a pure function of (seed, sample index), and nothing else draws random
// numbers), all stored bit-exact in the checkpoint. So a resumed run computes the same losses, to
// the bit, as an uninterrupted one on the same machine and thread count.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "core/dtype.h"
#include "model/config.h"
#include "model/weights.h"
#include "train/distributed.h"
#include "train/optimizer.h"
#include "train/training_data.h"
#include "train/training_model.h"

namespace mixattn {

struct TrainerOptions {
  int64_t steps = 1000;       // optimizer steps of the whole run
  int64_t batch = 8;          // sequences per micro-batch on each rank
  int64_t seq = 256;          // tokens per sequence
  int64_t accumulation = 1;   // micro-batches per step
  double lr = 3e-3;           // peak learning rate
  double min_lr_ratio = 0.1;  // the cosine ends at min_lr_ratio * lr
  int64_t warmup = -1;        // warm-up steps; -1: 5% of the steps (at least 1)
  AdamWOptions adamw;
  double clip = 1.0;                 // max global gradient norm; <= 0: no clipping
  uint64_t seed = 1;                 // weights and data order
  double init_residual_scale = 1.0;  // RandomWeights' residual_scale for a run from random weights
  MatmulPrecision precision = MatmulPrecision::kF32;
  double long_range_fraction = -1.0;  // -1: TrainingData's default (the shard's share)

  int64_t warmup_steps() const;
  // Throws Error naming the option for a value out of range.
  void Validate() const;
};

// What one optimizer step did.
struct StepResult {
  int64_t step = 0;  // 1-based: the number of steps taken after this one
  double loss = 0.0;
  double grad_norm = 0.0;  // before clipping
  double lr = 0.0;
  int64_t tokens = 0;    // input tokens of the step, all ranks
  bool skipped = false;  // non-finite loss or gradient: the weights were left as they were
};

class Trainer {
 public:
  // A new run from random weights (RandomWeights with options.seed and init_residual_scale).
  Trainer(const ModelConfig& config, const TrainerOptions& options, const TrainingData& data,
          const Distributed& world);
  // A new run from the given weights (f32, the tensors of config), e.g. another run's model.
  Trainer(const ModelConfig& config, ModelWeights params, const TrainerOptions& options,
          const TrainingData& data, const Distributed& world);
  // A run continued from a checkpoint file written by SaveCheckpointTo. Throws Error when the
  // checkpoint's data (tokenizer, shard sizes) does not match `data` or `options` differs from
  // the options the run was started with (naming the option).
  static Trainer Resume(const std::string& checkpoint_path, const TrainerOptions& options,
                        const TrainingData& data, const Distributed& world);

  StepResult Step();
  // Mean validation loss over `batches` global batches (N B windows each) of val.bin, the same
  // windows for every call and for any number of ranks N; mean over all scored tokens.
  double ValidationLoss(int64_t batches);

  // Writes the checkpoint of the current step (call on every rank; rank 0 writes).
  void SaveCheckpointTo(const std::string& path) const;
  // JSON the caller stores with each checkpoint (the command's own options: how often to
  // evaluate and save), under "run" in the trainer state.
  void set_run_json(std::string json) { run_json_ = std::move(json); }

  int64_t step() const { return step_; }
  bool done() const { return step_ >= options_.steps; }
  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return params_; }
  const TrainerOptions& options() const { return options_; }
  // Tokens per optimizer step over all ranks: N K B T.
  int64_t tokens_per_step() const;

 private:
  std::string StateJson() const;

  ModelConfig config_;
  TrainerOptions options_;
  const TrainingData& data_;
  const Distributed& world_;
  TrainingModel model_;
  ModelWeights params_;
  ModelWeights grads_;
  AdamW optimizer_;
  LrSchedule schedule_;
  int64_t step_ = 0;
  std::string run_json_ = "{}";
};

// Options as JSON (the checkpoint's record of how a run was started) and back.
std::string TrainerOptionsJson(const TrainerOptions& options);
TrainerOptions TrainerOptionsFromJson(const std::string& json);

}  // namespace mixattn
