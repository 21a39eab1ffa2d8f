#include "model/weights.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "model/kv_plan.h"
#include "model/model_dir.h"
#include "model/presets.h"
#include "model/reference_forward.h"
#include "model/safetensors.h"
#include "test_util.h"

namespace mixattn {
namespace {

using testing::ErrorMessage;
using ::testing::HasSubstr;
using testing::TempDir;

ModelConfig SmallConfig(const char* preset, bool tied = true) {
  ModelShape shape;
  shape.layers = 8;
  shape.hidden = 16;
  shape.heads = 2;
  shape.kv_heads = 1;
  shape.head_dim = 8;
  shape.ffn = 24;
  shape.vocab = 30;
  shape.window = 4;
  shape.max_position = 64;
  shape.tied = tied;
  return MakePresetConfig(preset, shape);
}

TEST(WeightsTest, ExpectedTensorsFollowThePlan) {
  const ModelConfig config = SmallConfig("ma-pairs", /*tied=*/false);  // F S F>0 S S>3 F S F>5
  const KvPlan plan(config);
  int k_projections = 0;
  bool has_lm_head = false;
  for (const TensorSpec& spec : ExpectedTensors(config)) {
    if (spec.name.find("k_proj") != std::string::npos) {
      ++k_projections;
      EXPECT_EQ(spec.shape, (std::vector<int64_t>{8, 16}));
    }
    has_lm_head |= spec.name == "lm_head.weight";
  }
  EXPECT_EQ(k_projections, static_cast<int>(plan.kv_owners().size()));
  EXPECT_TRUE(has_lm_head);
  // Tied: no lm_head, and fewer parameters by exactly V * H.
  EXPECT_EQ(ParameterCount(config) - ParameterCount(SmallConfig("ma-pairs", true)), 30 * 16);
}

TEST(WeightsTest, RandomWeightsAreDeterministic) {
  const ModelConfig config = SmallConfig("ma");
  const ModelWeights a = RandomWeights(config, 42), b = RandomWeights(config, 42),
                     c = RandomWeights(config, 43);
  EXPECT_EQ(a.layers[3].q_proj.data, b.layers[3].q_proj.data);
  EXPECT_NE(a.layers[3].q_proj.data, c.layers[3].q_proj.data);
}

// residual_scale multiplies the residual branches' output projections and nothing else: the same
// draws, so every other tensor is bit-identical.
TEST(WeightsTest, ResidualScaleScalesOnlyOutputProjections) {
  const ModelConfig config = SmallConfig("standard");
  const ModelWeights unscaled = RandomWeights(config, 42);
  const ModelWeights scaled = RandomWeights(config, 42, /*norm_jitter=*/0.0, 0.25);
  for (size_t l = 0; l < unscaled.layers.size(); ++l) {
    const auto& a = unscaled.layers[l];
    const auto& b = scaled.layers[l];
    ASSERT_EQ(a.o_proj.data.size(), b.o_proj.data.size());
    for (size_t i = 0; i < a.o_proj.data.size(); ++i)
      EXPECT_FLOAT_EQ(b.o_proj.data[i], 0.25f * a.o_proj.data[i]);
    for (size_t i = 0; i < a.down_proj.data.size(); ++i)
      EXPECT_FLOAT_EQ(b.down_proj.data[i], 0.25f * a.down_proj.data[i]);
    EXPECT_EQ(a.q_proj.data, b.q_proj.data);
    EXPECT_EQ(a.up_proj.data, b.up_proj.data);
  }
  EXPECT_EQ(unscaled.embed_tokens.data, scaled.embed_tokens.data);
  // The default scale is 1: o_proj has the N(0, 1/H_in) spread of every other projection.
  double sum_sq = 0;
  size_t n = 0;
  for (const auto& layer : unscaled.layers) {
    for (float w : layer.o_proj.data) sum_sq += double{w} * w;
    n += layer.o_proj.data.size();
  }
  EXPECT_NEAR(std::sqrt(sum_sq / static_cast<double>(n)), 1.0 / std::sqrt(16.0), 0.02);
}

TEST(WeightsTest, ModelDirRoundTripF32AndBf16) {
  const TempDir dir;
  const ModelConfig config = SmallConfig("characterai", false);
  const ModelWeights weights = RandomWeights(config, 7, 0.1);
  const std::vector<int> tokens = {1, 5, 9, 2, 7, 7, 3, 0, 29, 11};

  SaveModelDir(dir.file("f32"), config, weights, DType::kF32);
  const LoadedModel f32 = LoadModelDir(dir.file("f32"));
  EXPECT_EQ(ConfigToJson(f32.config), ConfigToJson(config));
  EXPECT_EQ(f32.weights.layers[1].kv->k_proj.data, weights.layers[1].kv->k_proj.data);
  EXPECT_EQ(ReferenceForward(f32.config, f32.weights, tokens).data,
            ReferenceForward(config, weights, tokens).data);

  SaveModelDir(dir.file("bf16"), config, weights, DType::kBF16);
  const LoadedModel bf16 = LoadModelDir(dir.file("bf16"));
  const std::vector<float>& original = weights.lm_head->data;
  const std::vector<float>& rounded = bf16.weights.lm_head->data;
  for (size_t i = 0; i < original.size(); ++i) {
    EXPECT_NEAR(rounded[i], original[i], std::fabs(original[i]) * (1.0 / 256))
        << i;  // 8 mantissa bits
    EXPECT_EQ(rounded[i], Bf16ToF32(F32ToBf16(original[i])));
  }
}

// Writes `config`'s tensors, letting `edit` change the list first, and returns LoadWeights' error.
template <typename Edit>
std::string LoadError(const ModelConfig& config, Edit&& edit) {
  const TempDir dir;
  const std::vector<float> zeros(100000, 0.0f);
  std::vector<SafetensorsWriteItem> items;
  for (const TensorSpec& spec : ExpectedTensors(config))
    items.push_back({spec.name, DType::kF32, spec.shape, zeros.data()});
  edit(items);
  WriteSafetensors(dir.file("model.safetensors"), items);
  const SafetensorsFile file = SafetensorsFile::Open(dir.file("model.safetensors"));
  return ErrorMessage([&] { LoadWeights(file, config); });
}

TEST(WeightsTest, RejectsMismatchedFiles) {
  const ModelConfig config = SmallConfig("ma");  // layer 2 reads layer 0
  EXPECT_THAT(LoadError(config, [](auto& items) { items.erase(items.begin() + 3); }),
              HasSubstr("is missing; the config requires it with shape"));
  EXPECT_THAT(LoadError(config, [](auto& items) { items[1].shape = {17}; }),
              HasSubstr("tensor 'model.layers.0.input_layernorm.weight' has shape [17]; the config "
                        "requires [16]"));
  EXPECT_THAT(
      LoadError(
          config,
          [](auto& items) {
            items.push_back(
                {"model.layers.2.self_attn.k_proj.weight", DType::kF32, {8, 16}, items[0].data});
          }),
      HasSubstr(
          "unexpected tensor 'model.layers.2.self_attn.k_proj.weight' (the config says this layer "
          "reads another layer's KV"));
  EXPECT_THAT(LoadError(config,
                        [](auto& items) {
                          items.push_back({"lm_head.weight", DType::kF32, {30, 16}, items[0].data});
                        }),
              HasSubstr("ties the output embedding"));
}

TEST(WeightsTest, LoadModelDirNamesTheProblem) {
  const TempDir dir;
  EXPECT_THAT(ErrorMessage([&] { LoadModelDir(dir.file("absent")); }),
              HasSubstr("not a model directory"));
  SaveModelDir(dir.file("m"), SmallConfig("ma"), RandomWeights(SmallConfig("ma"), 1), DType::kF32);
  std::filesystem::remove(dir.file("m/model.safetensors"));
  EXPECT_THAT(ErrorMessage([&] { LoadModelDir(dir.file("m")); }), HasSubstr("model.safetensors"));
}

}  // namespace
}  // namespace mixattn
