// train_steps MODEL_DIR BATCH_FILE OUT_FILE STEPS LR CLIP [bf16]
// Runs the trainer's step on one batch, for the PyTorch training parity test
// (tests/reference/test_train_parity.py):
//   1. loss and gradients at the model's weights (f32 matmuls unless "bf16" is given);
//   2. STEPS steps of: gradients, ClipGradNorm(CLIP), AdamW (default options) at learning rate
//      LR, on the same batch.
//   BATCH_FILE: int32 little-endian B, T, then inputs [B T], then targets [B T].
//   OUT_FILE (safetensors): "loss" [1] (step 1's loss), "losses" [STEPS], "grad/<name>" (step 1's
//   gradients, before clipping), "param/<name>" (the weights after STEPS steps).
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/model_dir.h"
#include "model/safetensors.h"
#include "train/optimizer.h"
#include "train/training_model.h"

namespace {

mixattn::TrainingBatch ReadBatch(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) mixattn::Fail(path, ": cannot open");
  int32_t sizes[2];
  in.read(reinterpret_cast<char*>(sizes), sizeof sizes);
  mixattn::TrainingBatch batch{sizes[0], sizes[1], {}, {}};
  batch.inputs.resize(static_cast<size_t>(batch.rows()));
  batch.targets.resize(static_cast<size_t>(batch.rows()));
  in.read(reinterpret_cast<char*>(batch.inputs.data()),
          static_cast<std::streamsize>(batch.inputs.size() * sizeof(int32_t)));
  in.read(reinterpret_cast<char*>(batch.targets.data()),
          static_cast<std::streamsize>(batch.targets.size() * sizeof(int32_t)));
  if (!in) mixattn::Fail(path, ": truncated batch file");
  return batch;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 7 && argc != 8) {
    std::fprintf(stderr, "usage: train_steps MODEL_DIR BATCH_FILE OUT_FILE STEPS LR CLIP [bf16]\n");
    return 2;
  }
  try {
    using namespace mixattn;
    LoadedModel model = LoadModelDir(argv[1]);
    const TrainingBatch batch = ReadBatch(argv[2]);
    const int steps = std::stoi(argv[4]);
    const double lr = std::stod(argv[5]), clip = std::stod(argv[6]);
    const MatmulPrecision precision = argc == 8 && std::string(argv[7]) == "bf16"
                                          ? MatmulPrecision::kBf16
                                          : MatmulPrecision::kF32;

    TrainingModel trainer(model.config, precision);
    ModelWeights& params = model.weights;
    ModelWeights grads = ZerosLike(params), first_grads;
    AdamW optimizer(params, AdamWOptions{});
    std::vector<float> losses;
    for (int step = 0; step < steps; ++step) {
      ZeroGradients(grads);
      losses.push_back(static_cast<float>(trainer.ForwardBackward(params, batch, 1.0, grads)));
      if (step == 0) first_grads = grads;
      ClipGradNorm(grads, clip);
      optimizer.Step(params, grads, lr);
    }

    std::vector<SafetensorsWriteItem> items;
    items.push_back({"loss", DType::kF32, {1}, losses.data()});
    items.push_back({"losses", DType::kF32, {steps}, losses.data()});
    ForEachTensor(first_grads, [&](const std::string& name, const Tensor& t) {
      items.push_back({"grad/" + name, DType::kF32, t.shape, t.data.data()});
    });
    ForEachTensor(params, [&](const std::string& name, const Tensor& t) {
      items.push_back({"param/" + name, DType::kF32, t.shape, t.data.data()});
    });
    WriteSafetensors(argv[3], items);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
