#include "train/training_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <string>

#include "model/presets.h"
#include "model/reference_forward.h"
#include "test_util.h"
#include "train/optimizer.h"

namespace mixattn {
namespace {

using testing::ErrorMessage;
using ::testing::HasSubstr;
using testing::RandomTokens;
using testing::TinyShape;

constexpr int kWindow = 4;

// Sequences of `length` + 1 random tokens, cut into inputs and next-token targets.
TrainingBatch RandomBatch(const ModelConfig& config, int64_t sequences, int64_t length,
                          uint64_t seed) {
  TrainingBatch batch{sequences, length, {}, {}};
  for (int64_t b = 0; b < sequences; ++b) {
    const std::vector<int> tokens = RandomTokens(length + 1, config.vocab_size, seed + b);
    batch.inputs.insert(batch.inputs.end(), tokens.begin(), tokens.end() - 1);
    batch.targets.insert(batch.targets.end(), tokens.begin() + 1, tokens.end());
  }
  return batch;
}

// The mean cross-entropy the reference forward implies, in double.
double ReferenceLoss(const ModelConfig& config, const ModelWeights& weights,
                     const TrainingBatch& batch) {
  double sum = 0.0;
  int64_t scored = 0;
  for (int64_t b = 0; b < batch.sequences; ++b) {
    const std::vector<int> tokens(batch.inputs.begin() + b * batch.length,
                                  batch.inputs.begin() + (b + 1) * batch.length);
    const Tensor logits = ReferenceForward(config, weights, tokens);
    for (int64_t t = 0; t < batch.length; ++t) {
      const int target = batch.targets[static_cast<size_t>(b * batch.length + t)];
      if (target < 0) continue;
      const float* row = logits.data.data() + t * config.vocab_size;
      double max = row[0];
      for (int v = 1; v < config.vocab_size; ++v) max = std::max<double>(max, row[v]);
      double z = 0.0;
      for (int v = 0; v < config.vocab_size; ++v) z += std::exp(row[v] - max);
      sum += max + std::log(z) - row[target];
      ++scored;
    }
  }
  return sum / static_cast<double>(scored);
}

double Dot(const Tensor& a, const Tensor& b) {
  double sum = 0.0;
  for (size_t i = 0; i < a.data.size(); ++i) sum += static_cast<double>(a.data[i]) * b.data[i];
  return sum;
}

TEST(TrainingModelTest, LossMatchesReferenceForwardForEveryPreset) {
  for (const PresetInfo& preset : Presets()) {
    SCOPED_TRACE(preset.name);
    const ModelConfig config = MakePresetConfig(preset.name, TinyShape(8, kWindow));
    const ModelWeights weights = RandomWeights(config, 7, 0.1);
    TrainingBatch batch = RandomBatch(config, 3, 3 * kWindow + 5, 11);
    batch.targets[4] = -1;  // an unscored row
    TrainingModel model(config, MatmulPrecision::kF32);
    const TrainingModel::LossResult loss = model.Loss(weights, batch);
    EXPECT_EQ(loss.scored_rows, batch.rows() - 1);
    EXPECT_NEAR(loss.mean_loss, ReferenceLoss(config, weights, batch), 1e-5);

    ModelWeights grads = ZerosLike(weights);
    EXPECT_NEAR(model.ForwardBackward(weights, batch, 1.0, grads), loss.mean_loss, 1e-6);
  }
}

// Central differences of the loss along a random direction in one tensor at a time, against the
// gradient's projection on that direction. Every tensor is checked on its own, so a gradient
// missing from one of them (say, a reader layer's share of its owner's K/V projections) shows.
TEST(TrainingModelTest, GradientsMatchFiniteDifferencesPerTensor) {
  // Hundreds of tiny forwards: one thread, so OpenMP fork/join does not dominate on a busy
  // machine (threaded runs of the same code are checked by the other tests).
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  for (const char* preset : {"ma-pairs", "ma-pairs-slideshare", "characterai"}) {
    SCOPED_TRACE(preset);
    ModelShape shape = TinyShape(8, kWindow);
    shape.tied = std::string(preset) != "characterai";
    const ModelConfig config = MakePresetConfig(preset, shape);
    ModelWeights weights = RandomWeights(config, 3, 0.1);
    const TrainingBatch batch = RandomBatch(config, 2, 3 * kWindow + 1, 5);
    TrainingModel model(config, MatmulPrecision::kF32);
    ModelWeights grads = ZerosLike(weights);
    model.ForwardBackward(weights, batch, 1.0, grads);

    std::vector<std::pair<std::string, Tensor*>> params;
    ForEachTensor(weights,
                  [&](const std::string& name, Tensor& t) { params.emplace_back(name, &t); });
    std::vector<const Tensor*> gradient_of;
    ForEachTensor(grads, [&](const std::string&, const Tensor& t) { gradient_of.push_back(&t); });
    Rng rng(17);
    for (size_t p = 0; p < params.size(); ++p) {
      auto& [name, tensor] = params[p];
      SCOPED_TRACE(name);
      Tensor direction(tensor->shape);
      double norm = 0.0;
      for (float& x : direction.data) {
        x = static_cast<float>(rng.Normal());
        norm += static_cast<double>(x) * x;
      }
      for (float& x : direction.data) x = static_cast<float>(x / std::sqrt(norm));
      const Tensor original = *tensor;
      const double step = 2e-2;
      auto loss_at = [&](double t) {
        for (size_t i = 0; i < original.data.size(); ++i)
          tensor->data[i] = static_cast<float>(original.data[i] + t * direction.data[i]);
        return model.Loss(weights, batch).mean_loss;
      };
      const double numeric = (loss_at(step) - loss_at(-step)) / (2 * step);
      *tensor = original;
      const double analytic = Dot(*gradient_of[p], direction);
      EXPECT_NEAR(analytic, numeric, 2e-3 + 2e-2 * std::fabs(numeric));
    }
  }
  omp_set_num_threads(threads);
}

TEST(TrainingModelTest, GradientAccumulationEqualsOneBigBatch) {
  const ModelConfig config = MakePresetConfig("ma-offset", TinyShape(8, kWindow));
  const ModelWeights weights = RandomWeights(config, 5, 0.1);
  const TrainingBatch both = RandomBatch(config, 2, 2 * kWindow + 3, 40);
  TrainingBatch first = both, second = both;
  const auto half = static_cast<std::ptrdiff_t>(both.length);
  first.sequences = second.sequences = 1;
  first.inputs.resize(static_cast<size_t>(half));
  first.targets.resize(static_cast<size_t>(half));
  second.inputs.erase(second.inputs.begin(), second.inputs.begin() + half);
  second.targets.erase(second.targets.begin(), second.targets.begin() + half);

  TrainingModel model(config, MatmulPrecision::kF32);
  ModelWeights big = ZerosLike(weights), accumulated = ZerosLike(weights);
  const double loss = model.ForwardBackward(weights, both, 1.0, big);
  const double l1 = model.ForwardBackward(weights, first, 0.5, accumulated);
  const double l2 = model.ForwardBackward(weights, second, 0.5, accumulated);
  EXPECT_NEAR(loss, (l1 + l2) / 2, 1e-6);
  std::vector<const Tensor*> expected;
  ForEachTensor(big, [&](const std::string&, const Tensor& t) { expected.push_back(&t); });
  size_t index = 0;
  ForEachTensor(accumulated, [&](const std::string& name, const Tensor& t) {
    const Tensor& e = *expected[index++];
    double diff = 0.0, scale = 0.0;
    for (size_t i = 0; i < t.data.size(); ++i) {
      diff = std::max(diff, static_cast<double>(std::fabs(t.data[i] - e.data[i])));
      scale = std::max(scale, static_cast<double>(std::fabs(e.data[i])));
    }
    EXPECT_LE(diff, 1e-5 * scale + 1e-9) << name;
  });
}

TEST(TrainingModelTest, Bf16MatmulsStayCloseButRound) {
  const ModelConfig config = MakePresetConfig("ma-pairs", TinyShape(8, kWindow));
  const ModelWeights weights = RandomWeights(config, 5, 0.1);
  const TrainingBatch batch = RandomBatch(config, 2, 2 * kWindow + 3, 50);
  TrainingModel f32(config, MatmulPrecision::kF32), bf16(config, MatmulPrecision::kBf16);
  ModelWeights g32 = ZerosLike(weights), g16 = ZerosLike(weights);
  const double l32 = f32.ForwardBackward(weights, batch, 1.0, g32);
  const double l16 = bf16.ForwardBackward(weights, batch, 1.0, g16);
  EXPECT_NE(l32, l16);  // the rounding happened
  EXPECT_NEAR(l16, l32, 2e-2 * l32);
  const double cosine = Dot(g16.layers[0].q_proj, g32.layers[0].q_proj) /
                        std::sqrt(Dot(g16.layers[0].q_proj, g16.layers[0].q_proj) *
                                  Dot(g32.layers[0].q_proj, g32.layers[0].q_proj));
  EXPECT_GT(cosine, 0.99);
}

TEST(TrainingModelTest, RejectsBadBatches) {
  const ModelConfig config = MakePresetConfig("standard", TinyShape(2, kWindow));
  const ModelWeights weights = RandomWeights(config, 5);
  TrainingModel model(config, MatmulPrecision::kF32);
  TrainingBatch batch = RandomBatch(config, 2, 5, 1);
  batch.inputs[3] = config.vocab_size;
  EXPECT_THAT(ErrorMessage([&] { model.Loss(weights, batch); }),
              HasSubstr("input token 41 at row 3 is outside the vocabulary"));
  batch = RandomBatch(config, 2, 5, 1);
  batch.targets[7] = 99;
  EXPECT_THAT(ErrorMessage([&] { model.Loss(weights, batch); }),
              HasSubstr("target token 99 at row 7"));
  batch.targets.pop_back();
  EXPECT_THAT(ErrorMessage([&] { model.Loss(weights, batch); }), HasSubstr("9 targets for 2 x 5"));
  TrainingBatch long_batch = RandomBatch(config, 1, config.max_position_embeddings + 1, 1);
  EXPECT_THAT(ErrorMessage([&] { model.Loss(weights, long_batch); }),
              HasSubstr("exceed max_position_embeddings"));
}

TEST(TrainingModelTest, TrainingFlopsCountsWindowedKeysOnly) {
  // One full layer vs one sliding layer of window 2 over 4 tokens: keys seen 1+2+3+4 = 10 vs
  // 1+2+2+2 = 7; weights per token 2 NH D H + 2 KVH D H + 3 H F + V H.
  ModelShape shape = TinyShape(1, 2);
  const ModelConfig full = MakePresetConfig("standard", shape);
  const ModelConfig sliding = MakePresetConfig("all-sliding", shape);
  const double weights = 2.0 * 32 * 32 + 2.0 * 16 * 32 + 3.0 * 32 * 48 + 41.0 * 32;
  const double tokens = 2 * 4;
  EXPECT_DOUBLE_EQ(TrainingModel::TrainingFlops(full, 2, 4),
                   6 * weights * tokens + 12.0 * 8 * 10 * 4 * 2);
  EXPECT_DOUBLE_EQ(TrainingModel::TrainingFlops(sliding, 2, 4),
                   6 * weights * tokens + 12.0 * 8 * 7 * 4 * 2);
}

}  // namespace
}  // namespace mixattn
