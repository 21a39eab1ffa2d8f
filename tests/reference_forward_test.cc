#include "model/reference_forward.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "core/random.h"
#include "model/presets.h"
#include "test_util.h"

namespace mixattn {
namespace {

using ::testing::HasSubstr;
using testing::RandomTokens;
using testing::TinyShape;

double MaxAbsDiffRows(const Tensor& a, const Tensor& b, int64_t first_row, int64_t last_row) {
  const int64_t width = a.shape[1];
  double diff = 0;
  for (int64_t i = first_row * width; i < last_row * width; ++i) {
    diff = std::max(diff, static_cast<double>(std::fabs(a.data[static_cast<size_t>(i)] -
                                                        b.data[static_cast<size_t>(i)])));
  }
  return diff;
}

TEST(ReferenceForwardTest, LogitsAreFiniteAndShaped) {
  const ModelConfig config = MakePresetConfig("ma-pairs", TinyShape(8, 4));
  const ModelWeights weights = RandomWeights(config, 1, 0.1);
  const std::vector<int> tokens = RandomTokens(20, config.vocab_size, 2);
  const Tensor logits = ReferenceForward(config, weights, tokens);
  ASSERT_EQ(logits.shape, (std::vector<int64_t>{20, config.vocab_size}));
  for (float x : logits.data) ASSERT_TRUE(std::isfinite(x));
}

// A sliding window at least as long as the sequence is full attention.
TEST(ReferenceForwardTest, WideWindowEqualsFullAttention) {
  const int tokens_count = 12;
  const ModelConfig full = MakePresetConfig("standard", TinyShape(3, tokens_count));
  const ModelConfig sliding = MakePresetConfig("all-sliding", TinyShape(3, tokens_count));
  const ModelWeights weights = RandomWeights(full, 3, 0.1);
  const std::vector<int> tokens = RandomTokens(tokens_count, full.vocab_size, 4);
  const Tensor a = ReferenceForward(full, weights, tokens);
  const Tensor b = ReferenceForward(sliding, weights, tokens);
  EXPECT_EQ(a.data, b.data);
}

// Changing token p leaves the logits before p unchanged (causality) and changes those at p.
TEST(ReferenceForwardTest, Causal) {
  for (const PresetInfo& preset : Presets()) {
    const ModelConfig config = MakePresetConfig(preset.name, TinyShape(8, 4));
    const ModelWeights weights = RandomWeights(config, 5, 0.1);
    std::vector<int> tokens = RandomTokens(16, config.vocab_size, 6);
    const Tensor before = ReferenceForward(config, weights, tokens);
    tokens[9] = (tokens[9] + 1) % config.vocab_size;
    const Tensor after = ReferenceForward(config, weights, tokens);
    EXPECT_EQ(MaxAbsDiffRows(before, after, 0, 9), 0.0) << preset.name;
    EXPECT_GT(MaxAbsDiffRows(before, after, 9, 10), 1e-4) << preset.name;
  }
}

// With L sliding layers of window W, position p sees tokens back to p - L*(W-1) and no further:
// the receptive field the long-context experiment relies on.
TEST(ReferenceForwardTest, SlidingReceptiveField) {
  const int layers = 2, window = 4;
  const ModelConfig config = MakePresetConfig("all-sliding", TinyShape(layers, window));
  const ModelWeights weights = RandomWeights(config, 7, 0.1);
  std::vector<int> tokens = RandomTokens(14, config.vocab_size, 8);
  const Tensor before = ReferenceForward(config, weights, tokens);
  tokens[0] = (tokens[0] + 1) % config.vocab_size;
  const Tensor after = ReferenceForward(config, weights, tokens);
  const int reach = layers * (window - 1);  // 6: positions 0..6 can see token 0
  EXPECT_GT(MaxAbsDiffRows(before, after, reach, reach + 1), 1e-6);
  EXPECT_EQ(MaxAbsDiffRows(before, after, reach + 1, 14), 0.0);
}

// A layer that reads an earlier layer's KV uses that layer's K/V: replacing the producer's K/V
// weights changes the reader's output, and the reader has no K/V weights of its own.
TEST(ReferenceForwardTest, ReaderUsesProducerKv) {
  const ModelConfig config = MakePresetConfig("ma", TinyShape(8, 4));  // F S F>0 S S>3 F>0 S F>0
  ModelWeights weights = RandomWeights(config, 9, 0.1);
  EXPECT_FALSE(weights.layers[2].kv.has_value());
  EXPECT_FALSE(weights.layers[4].kv.has_value());
  EXPECT_TRUE(weights.layers[3].kv.has_value());
  const std::vector<int> tokens = RandomTokens(10, config.vocab_size, 10);
  const Tensor before = ReferenceForward(config, weights, tokens);
  // Layer 4 reads layer 3's cache: scaling layer 3's V changes the output.
  for (float& w : weights.layers[3].kv->v_proj.data) w *= 2.0f;
  const Tensor after = ReferenceForward(config, weights, tokens);
  EXPECT_GT(MaxAbsDiffRows(before, after, 0, 10), 1e-4);
}

TEST(ReferenceForwardTest, RejectsBadTokens) {
  const ModelConfig config = MakePresetConfig("standard", TinyShape(2, 4));
  const ModelWeights weights = RandomWeights(config, 1);
  const std::vector<int> out_of_range = {1, 41};
  EXPECT_THAT(testing::ErrorMessage([&] { ReferenceForward(config, weights, out_of_range); }),
              HasSubstr("token 41 at position 1 is outside the vocabulary [0, 41)"));
  EXPECT_THAT(testing::ErrorMessage([&] { ReferenceForward(config, weights, std::vector<int>{}); }),
              HasSubstr("empty"));
  const std::vector<int> too_long(300, 1);
  EXPECT_THAT(testing::ErrorMessage([&] { ReferenceForward(config, weights, too_long); }),
              HasSubstr("exceed max_position_embeddings = 256"));
}

}  // namespace
}  // namespace mixattn
