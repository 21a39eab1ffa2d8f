// Training checkpoints: everything a run needs to continue exactly where it stopped, in ONE
// safetensors file, so there is never a weights file from one step beside an optimizer file from
// another.
//
// Layout (a plain safetensors file, see model/safetensors.h; every tensor f32, in this order),
// where <name> runs over ExpectedTensors(config), each tensor with that entry's shape:
//   param/<name>     the parameters
//   adam_m/<name>    AdamW's first moment
//   adam_v/<name>    AdamW's second moment
//   __metadata__:
//     format          "mixattn-checkpoint"
//     version         "1"
//     config          ConfigToJson(config)
//     optimizer_step  AdamW's step count t, in decimal
//     trainer_state   JSON text the trainer owns (its step, data position, RNG state, options);
//                     opaque here, only checked to be valid JSON
//
// Crash safety: WriteSafetensors writes <path>.tmp.<pid>, fsyncs it, renames it over <path> and
// fsyncs the directory, so a file with a checkpoint name is always complete; a writer killed at
// any moment leaves at worst a temporary file, which LatestCheckpoint never picks.
//
// In a run's directory checkpoints are named by the trainer's step, zero-padded so they also sort
// by name: <dir>/checkpoint-00000100.safetensors.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "model/config.h"
#include "model/weights.h"
#include "train/optimizer.h"

namespace mixattn {

inline constexpr char kCheckpointFormat[] = "mixattn-checkpoint";
inline constexpr char kCheckpointVersion[] = "1";

struct Checkpoint {
  ModelConfig config;
  ModelWeights params;  // f32, the tensors of ExpectedTensors(config)
  ModelWeights adam_m;  // shaped like params
  ModelWeights adam_v;  // shaped like params
  int64_t optimizer_step = 0;
  std::string trainer_state_json;
};

// Writes a checkpoint atomically (see above). Throws Error naming the file when `params` or the
// optimizer's moments do not have exactly the tensors of `config`, when `trainer_state_json` is
// not valid JSON (the file could not be loaded back), or on an I/O failure; `path` is then left
// as it was.
void SaveCheckpoint(const std::string& path, const ModelConfig& config, const ModelWeights& params,
                    const AdamW& optimizer, const std::string& trainer_state_json);

// Reads and validates a checkpoint: a valid safetensors file; format and version as above; a
// config that parses and validates; a step count >= 0; trainer_state valid JSON; every tensor the
// config requires present under each of the three prefixes, f32, with the config's shape; no
// other tensor. Every error names the file and, for a tensor, its name. Resume with
//   AdamW optimizer(c.params, options);
//   optimizer.Restore(std::move(c.adam_m), std::move(c.adam_v), c.optimizer_step);
Checkpoint LoadCheckpoint(const std::string& path);

// <dir>/checkpoint-<step, at least 8 digits>.safetensors; step >= 0.
std::string CheckpointPath(const std::string& dir, int64_t step);

// The checkpoint of `dir` with the highest step: among the files named exactly as CheckpointPath
// names them (temporary files and anything else are ignored). nullopt when there is none or `dir`
// does not exist; Error if `dir` cannot be read.
std::optional<std::string> LatestCheckpoint(const std::string& dir);

// Deletes all but the `keep` (>= 1) highest-step checkpoints of `dir`, and the temporary files
// of checkpoint writers that no longer run (a writer killed mid-write leaves <path>.tmp.<pid>;
// the pid tells whether it is still alive, and this process's own are kept). Error naming the
// file when one cannot be deleted.
void PruneCheckpoints(const std::string& dir, int keep);

}  // namespace mixattn
