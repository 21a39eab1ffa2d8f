#include "train/optimizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <limits>
#include <map>

#include "core/random.h"
#include "model/presets.h"
#include "ops/elementwise.h"
#include "test_util.h"

namespace mixattn {
namespace {

using testing::ErrorMessage;
using ::testing::HasSubstr;

// 8 layers of ma-pairs (F S F>0 S S>3 F S F>5): owners and readers, so some layers have no
// k_proj/v_proj. Odd widths, so no tensor is a multiple of the AVX2 kernel's 8 lanes.
ModelConfig TinyConfig(bool tied = false, int vocab = 23) {
  ModelShape shape;
  shape.layers = 8;
  shape.hidden = 12;
  shape.heads = 2;
  shape.kv_heads = 1;
  shape.head_dim = 6;
  shape.ffn = 19;
  shape.vocab = vocab;
  shape.window = 4;
  shape.max_position = 32;
  shape.tied = tied;
  return MakePresetConfig("ma-pairs", shape);
}

// Gradients N(0, scale^2), deterministic in seed.
ModelWeights RandomGradients(const ModelWeights& like, uint64_t seed, double scale = 0.1) {
  ModelWeights grads = ZerosLike(like);
  Rng rng(seed);
  ForEachTensor(grads, [&](const std::string&, Tensor& tensor) {
    for (float& g : tensor.data) g = static_cast<float>(scale * rng.Normal());
  });
  return grads;
}

std::vector<float> Flatten(const ModelWeights& weights) {
  std::vector<float> all;
  ForEachTensor(weights, [&](const std::string&, const Tensor& tensor) {
    all.insert(all.end(), tensor.data.begin(), tensor.data.end());
  });
  return all;
}

// ---- AdamW ----

TEST(AdamWTest, TwoStepsMatchTheTextbookFormulasInDouble) {
  const ModelConfig config = TinyConfig();
  ModelWeights params = RandomWeights(config, 1, 0.1);
  const AdamWOptions options;  // b1 0.9, b2 0.95, eps 1e-8, wd 0.1
  const double learning_rates[2] = {1e-2, 5e-3};
  const ModelWeights grads[2] = {RandomGradients(params, 11), RandomGradients(params, 12)};

  // The expected state in double, from Loshchilov & Hutter's algorithm with bias-corrected
  // moments: p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps), after p *= 1 - lr wd for
  // the block matrices (named here independently of DecaysWeight).
  struct Expected {
    std::vector<double> p, m, v;
    std::vector<double> m_terms;  // the same sum as m over |terms|: the scale of m's f32 rounding
  };
  std::map<std::string, Expected> expected;
  ForEachTensor(params, [&](const std::string& name, const Tensor& tensor) {
    Expected& e = expected[name];
    e.p.assign(tensor.data.begin(), tensor.data.end());
    e.m.assign(tensor.data.size(), 0.0);
    e.v.assign(tensor.data.size(), 0.0);
    e.m_terms.assign(tensor.data.size(), 0.0);
  });
  for (int t = 1; t <= 2; ++t) {
    const double lr = learning_rates[t - 1];
    ForEachTensor(grads[t - 1], [&](const std::string& name, const Tensor& grad) {
      Expected& e = expected[name];
      const bool decayed = name.find("_proj.weight") != std::string::npos;
      for (size_t i = 0; i < e.p.size(); ++i) {
        const double g = grad.data[i];
        if (decayed) e.p[i] *= 1.0 - lr * options.weight_decay;
        e.m[i] = options.beta1 * e.m[i] + (1.0 - options.beta1) * g;
        e.m_terms[i] = options.beta1 * e.m_terms[i] + (1.0 - options.beta1) * std::fabs(g);
        e.v[i] = options.beta2 * e.v[i] + (1.0 - options.beta2) * g * g;
        const double m_hat = e.m[i] / (1.0 - std::pow(options.beta1, t));
        const double v_hat = e.v[i] / (1.0 - std::pow(options.beta2, t));
        e.p[i] -= lr * m_hat / (std::sqrt(v_hat) + options.epsilon);
      }
    });
  }

  const ModelWeights initial = params;
  AdamW optimizer(params, options);
  EXPECT_EQ(optimizer.step_count(), 0);
  for (int t = 0; t < 2; ++t) optimizer.Step(params, grads[t], learning_rates[t]);
  EXPECT_EQ(optimizer.step_count(), 2);

  const std::vector<float> before = Flatten(initial), after = Flatten(params);
  const std::vector<float> m = Flatten(optimizer.first_moment());
  const std::vector<float> v = Flatten(optimizer.second_moment());
  size_t next = 0;
  int moved = 0;
  ForEachTensor(params, [&](const std::string& name, const Tensor& tensor) {
    const Expected& e = expected[name];
    for (size_t i = 0; i < tensor.data.size(); ++i, ++next) {
      EXPECT_NEAR(after[next], e.p[i], 1e-6) << name << "[" << i << "]";
      EXPECT_NEAR(m[next], e.m[i], 1e-6 * e.m_terms[i]) << name << "[" << i << "]";
      EXPECT_NEAR(v[next], e.v[i], 1e-6 * e.v[i] + 1e-15) << name << "[" << i << "]";
      moved += std::fabs(after[next] - before[next]) > 1e-3;
    }
  });
  EXPECT_GT(moved, static_cast<int>(after.size()) * 9 / 10);  // the test is not vacuous
}

TEST(AdamWTest, DecayAppliesToTheBlockMatricesOnly) {
  for (const char* name :
       {"model.layers.0.self_attn.q_proj.weight", "model.layers.3.self_attn.k_proj.weight",
        "model.layers.3.self_attn.v_proj.weight", "model.layers.7.self_attn.o_proj.weight",
        "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight",
        "model.layers.12.mlp.down_proj.weight"}) {
    EXPECT_TRUE(DecaysWeight(name)) << name;
  }
  for (const char* name : {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                           "model.layers.0.input_layernorm.weight",
                           "model.layers.0.post_attention_layernorm.weight"}) {
    EXPECT_FALSE(DecaysWeight(name)) << name;
  }

  // With zero gradients m = v = 0 and the Adam update is exactly 0, so only the decay remains.
  const ModelConfig config = TinyConfig();
  ModelWeights params = RandomWeights(config, 2, 0.1);
  const ModelWeights initial = params;
  AdamW optimizer(params, {.weight_decay = 0.1});
  optimizer.Step(params, ZerosLike(params), 0.5);
  const float factor = static_cast<float>(1.0 - 0.5 * 0.1);
  std::map<std::string, const Tensor*> before;
  ForEachTensor(initial, [&](const std::string& name, const Tensor& t) { before[name] = &t; });
  int decayed = 0, kept = 0;
  ForEachTensor(params, [&](const std::string& name, const Tensor& tensor) {
    const bool decays = DecaysWeight(name);
    decayed += decays;
    kept += !decays;
    for (size_t i = 0; i < tensor.data.size(); ++i) {
      const float old = before[name]->data[i];
      ASSERT_EQ(tensor.data[i], decays ? old * factor : old) << name << "[" << i << "]";
    }
  });
  // 8 layers x (q, o, gate, up, down) + 5 KV owners x (k, v); embeddings, lm_head, 17 norms.
  EXPECT_EQ(decayed, 8 * 5 + 5 * 2);
  EXPECT_EQ(kept, 1 + 1 + 8 * 2 + 1);
}

TEST(AdamWTest, Avx2AndPortablePathsAgreeBitForBit) {
  if (ops::DetectedSimdLevel() < ops::SimdLevel::kAvx2) GTEST_SKIP() << "no AVX2 on this CPU";
  const ModelConfig config = TinyConfig();
  const ModelWeights initial = RandomWeights(config, 3, 0.1);
  std::vector<float> results[2][3];  // [path][p, m, v]
  for (int path = 0; path < 2; ++path) {
    ops::SetSimdLevelCap(path == 0 ? ops::SimdLevel::kAvx2 : ops::SimdLevel::kScalar);
    ModelWeights params = initial;
    AdamW optimizer(params);
    for (int t = 0; t < 3; ++t) optimizer.Step(params, RandomGradients(params, 20 + t), 3e-3);
    results[path][0] = Flatten(params);
    results[path][1] = Flatten(optimizer.first_moment());
    results[path][2] = Flatten(optimizer.second_moment());
  }
  ops::SetSimdLevelCap(ops::SimdLevel::kAvx512);  // no cap
  for (int i = 0; i < 3; ++i) EXPECT_EQ(results[0][i], results[1][i]) << "state " << i;
}

TEST(AdamWTest, RestoredStateContinuesExactly) {
  const ModelConfig config = TinyConfig();
  const ModelWeights initial = RandomWeights(config, 4, 0.1);
  const auto grads = [&](int t) { return RandomGradients(initial, 30 + t); };

  ModelWeights straight = initial;
  AdamW straight_optimizer(straight);
  for (int t = 0; t < 3; ++t) straight_optimizer.Step(straight, grads(t), 1e-3 * (t + 1));

  ModelWeights resumed = initial;
  AdamW first(resumed);
  for (int t = 0; t < 2; ++t) first.Step(resumed, grads(t), 1e-3 * (t + 1));
  AdamW second(resumed);
  second.Restore(first.first_moment(), first.second_moment(), first.step_count());
  second.Step(resumed, grads(2), 3e-3);

  EXPECT_EQ(second.step_count(), 3);
  EXPECT_EQ(Flatten(resumed), Flatten(straight));
  EXPECT_EQ(Flatten(second.first_moment()), Flatten(straight_optimizer.first_moment()));
  EXPECT_EQ(Flatten(second.second_moment()), Flatten(straight_optimizer.second_moment()));
}

TEST(AdamWTest, RestoreRejectsStateOfAnotherShape) {
  const ModelWeights params = RandomWeights(TinyConfig(), 5);
  AdamW optimizer(params);
  const ModelWeights zeros = ZerosLike(params);

  const ModelWeights tied = ZerosLike(RandomWeights(TinyConfig(/*tied=*/true), 5));
  EXPECT_THAT(ErrorMessage([&] { optimizer.Restore(tied, zeros, 1); }),
              HasSubstr("first moments (m) have no tensor 'lm_head.weight'"));
  ModelWeights reshaped = zeros;
  reshaped.layers[2].post_attention_norm = Tensor({13});
  EXPECT_THAT(ErrorMessage([&] { optimizer.Restore(zeros, reshaped, 1); }),
              HasSubstr("second moments (v): tensor "
                        "'model.layers.2.post_attention_layernorm.weight' has shape [13]; the "
                        "parameter has [12]"));
  EXPECT_THAT(ErrorMessage([&] { optimizer.Restore(zeros, zeros, -1); }),
              HasSubstr("step count -1 must be >= 0"));
  EXPECT_EQ(optimizer.step_count(), 0);  // unchanged by the failed restores
  EXPECT_EQ(optimizer.first_moment().lm_head->size(), 23 * 12);
}

TEST(AdamWTest, StepRejectsMismatchedInputs) {
  ModelWeights params = RandomWeights(TinyConfig(), 6);
  AdamW optimizer(params);
  ModelWeights grads = ZerosLike(params);
  grads.layers[0].kv->k_proj = Tensor({6, 13});
  EXPECT_THAT(ErrorMessage([&] { optimizer.Step(params, grads, 1e-3); }),
              HasSubstr("the gradients: tensor 'model.layers.0.self_attn.k_proj.weight' has "
                        "shape [6, 13]; the parameter has [6, 12]"));
  ModelWeights other = RandomWeights(TinyConfig(/*tied=*/true), 6);
  EXPECT_THAT(ErrorMessage([&] { optimizer.Step(other, ZerosLike(params), 1e-3); }),
              HasSubstr("the parameters have no tensor 'lm_head.weight'"));
  EXPECT_THAT(ErrorMessage([&] { optimizer.Step(params, ZerosLike(params), -1.0); }),
              HasSubstr("learning rate -1 must be finite and >= 0"));
  EXPECT_EQ(optimizer.step_count(), 0);

  EXPECT_THAT(ErrorMessage([&] { AdamW bad(params, {.beta1 = 1.0}); }),
              HasSubstr("beta1 = 1 must be in [0, 1)"));
  EXPECT_THAT(ErrorMessage([&] { AdamW bad(params, {.epsilon = 0.0}); }),
              HasSubstr("epsilon = 0 must be > 0"));
  EXPECT_THAT(ErrorMessage([&] { AdamW bad(params, {.weight_decay = -0.1}); }),
              HasSubstr("weight_decay = -0.1 must be >= 0"));
}

// ---- Learning-rate schedule ----

TEST(LrScheduleTest, LinearWarmupThenCosineToTheMinimum) {
  const LrSchedule schedule{
      .peak_lr = 1e-3, .warmup_steps = 10, .total_steps = 111, .min_lr_ratio = 0.1};
  EXPECT_DOUBLE_EQ(schedule.LearningRate(0), 1e-4);  // first step: peak / W
  EXPECT_DOUBLE_EQ(schedule.LearningRate(4), 5e-4);
  EXPECT_DOUBLE_EQ(schedule.LearningRate(9), 1e-3);     // last warm-up step: the peak
  EXPECT_DOUBLE_EQ(schedule.LearningRate(10), 1e-3);    // cosine starts at the peak
  EXPECT_DOUBLE_EQ(schedule.LearningRate(60), 5.5e-4);  // halfway: (peak + min) / 2
  EXPECT_NEAR(schedule.LearningRate(35), 1e-4 + 9e-4 * (1 + std::cos(M_PI / 4)) / 2, 1e-15);
  EXPECT_DOUBLE_EQ(schedule.LearningRate(110), 1e-4);   // last step: the minimum
  EXPECT_DOUBLE_EQ(schedule.LearningRate(5000), 1e-4);  // held after the run
  for (int64_t s = 10; s < 110; ++s) {
    EXPECT_GT(schedule.LearningRate(s), schedule.LearningRate(s + 1)) << s;
  }
}

TEST(LrScheduleTest, EdgeCases) {
  const LrSchedule no_warmup{.peak_lr = 2.0, .warmup_steps = 0, .total_steps = 3};
  EXPECT_DOUBLE_EQ(no_warmup.LearningRate(0), 2.0);
  EXPECT_DOUBLE_EQ(no_warmup.LearningRate(1), 1.1);
  EXPECT_DOUBLE_EQ(no_warmup.LearningRate(2), 0.2);
  const LrSchedule all_warmup{.peak_lr = 1.0, .warmup_steps = 4, .total_steps = 4};
  EXPECT_DOUBLE_EQ(all_warmup.LearningRate(3), 1.0);
  EXPECT_DOUBLE_EQ(all_warmup.LearningRate(4), 0.1);
  const LrSchedule constant{
      .peak_lr = 0.5, .warmup_steps = 0, .total_steps = 10, .min_lr_ratio = 1.0};
  for (int64_t s = 0; s < 12; ++s) EXPECT_DOUBLE_EQ(constant.LearningRate(s), 0.5);
}

TEST(LrScheduleTest, RejectsInvalidSettings) {
  const auto message = [](LrSchedule schedule) {
    return ErrorMessage([&] { schedule.LearningRate(0); });
  };
  EXPECT_THAT(message({.peak_lr = 0.0, .warmup_steps = 0, .total_steps = 10}),
              HasSubstr("peak_lr = 0 must be > 0"));
  EXPECT_THAT(message({.peak_lr = 1.0, .warmup_steps = -1, .total_steps = 10}),
              HasSubstr("warmup_steps = -1 must be >= 0"));
  EXPECT_THAT(message({.peak_lr = 1.0, .warmup_steps = 0, .total_steps = 0}),
              HasSubstr("total_steps = 0 must be >= 1"));
  EXPECT_THAT(message({.peak_lr = 1.0, .warmup_steps = 11, .total_steps = 10}),
              HasSubstr("warmup_steps = 11 must be <= total_steps = 10"));
  EXPECT_THAT(message({.peak_lr = 1.0, .warmup_steps = 0, .total_steps = 10, .min_lr_ratio = 2}),
              HasSubstr("min_lr_ratio = 2 must be in [0, 1]"));
}

// ---- Gradients ----

TEST(GradNormTest, ClipScalesToTheMaximumNorm) {
  const ModelWeights params = RandomWeights(TinyConfig(), 7);
  ModelWeights grads = RandomGradients(params, 8);
  double sum = 0.0;
  for (float g : Flatten(grads)) sum += double{g} * g;
  const double norm = std::sqrt(sum);
  EXPECT_NEAR(GlobalGradNorm(grads), norm, 1e-12 * norm);

  // Above the maximum: the norm before is returned, the norm after is the maximum.
  const std::vector<float> original = Flatten(grads);
  EXPECT_NEAR(ClipGradNorm(grads, norm / 4), norm, 1e-12 * norm);
  EXPECT_NEAR(GlobalGradNorm(grads), norm / 4, 1e-6 * norm);
  const std::vector<float> clipped = Flatten(grads);
  const float coefficient = static_cast<float>((norm / 4) / (norm + 1e-6));
  for (size_t i = 0; i < clipped.size(); ++i) ASSERT_EQ(clipped[i], original[i] * coefficient);

  // At or below the maximum, or with clipping off: untouched.
  ModelWeights unclipped = RandomGradients(params, 8);
  EXPECT_NEAR(ClipGradNorm(unclipped, norm * 2), norm, 1e-12 * norm);
  EXPECT_NEAR(ClipGradNorm(unclipped, 0.0), norm, 1e-12 * norm);
  EXPECT_EQ(Flatten(unclipped), original);

  // A non-finite norm is reported, not spread into the gradients.
  unclipped.layers[1].up_proj.data[5] = std::numeric_limits<float>::infinity();
  const std::vector<float> with_inf = Flatten(unclipped);
  EXPECT_EQ(ClipGradNorm(unclipped, 1.0), std::numeric_limits<double>::infinity());
  EXPECT_EQ(Flatten(unclipped), with_inf);
}

TEST(GradNormTest, NormDoesNotDependOnTheThreadCount) {
  // A 50k x 12 embedding: several chunks, and large enough to be split across threads.
  const ModelWeights grads = RandomGradients(RandomWeights(TinyConfig(false, 50000), 9), 10);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one_thread = GlobalGradNorm(grads);
  omp_set_num_threads(3);
  const double three_threads = GlobalGradNorm(grads);
  omp_set_num_threads(threads);
  EXPECT_EQ(one_thread, three_threads);
}

TEST(GradNormTest, ZerosLikeScaleAndZero) {
  for (const bool tied : {false, true}) {
    const ModelWeights params = RandomWeights(TinyConfig(tied), 11);
    ModelWeights grads = ZerosLike(params);
    EXPECT_EQ(grads.lm_head.has_value(), !tied);
    ASSERT_EQ(grads.layers.size(), params.layers.size());
    for (size_t i = 0; i < params.layers.size(); ++i) {
      EXPECT_EQ(grads.layers[i].kv.has_value(), params.layers[i].kv.has_value()) << i;
    }
    std::vector<std::vector<int64_t>> shapes;
    ForEachTensor(params, [&](const std::string&, const Tensor& t) { shapes.push_back(t.shape); });
    size_t next = 0;
    ForEachTensor(grads, [&](const std::string& name, const Tensor& t) {
      EXPECT_EQ(t.shape, shapes[next++]) << name;
      for (float g : t.data) ASSERT_EQ(g, 0.0f) << name;
    });
    EXPECT_EQ(next, shapes.size());

    grads = RandomGradients(params, 12);
    const std::vector<float> original = Flatten(grads);
    ScaleGradients(grads, 0.25);
    const std::vector<float> scaled = Flatten(grads);
    for (size_t i = 0; i < scaled.size(); ++i) ASSERT_EQ(scaled[i], original[i] * 0.25f);
    ZeroGradients(grads);
    for (float g : Flatten(grads)) ASSERT_EQ(g, 0.0f);
  }
}

}  // namespace
}  // namespace mixattn
