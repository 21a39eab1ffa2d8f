// A model directory: config.json + model.safetensors (+ tokenizer.model, used by later layers).
#pragma once

#include <string>

#include "core/dtype.h"
#include "model/config.h"
#include "model/weights.h"

namespace mixattn {

struct LoadedModel {
  ModelConfig config;
  ModelWeights weights;  // f32
};

// Loads and cross-checks config.json and model.safetensors in `dir`. Errors name the file.
LoadedModel LoadModelDir(const std::string& dir);

// Creates `dir` if needed and writes config.json and model.safetensors (atomically each).
void SaveModelDir(const std::string& dir, const ModelConfig& config, const ModelWeights& weights,
                  DType weights_dtype);

}  // namespace mixattn
