// Capacity at the scale: under a fixed KV budget, the engine runs exactly as many
// 32K-token requests at once as the planner reports (what `mixattn plan` prints), for every preset.
// The model is tiny in width (the block count per sequence depends only on the layer plan, the
// context, the block size and the chunk), so 32K-token prompts cost little here.
#include <gtest/gtest.h>

#include "engine/engine.h"
#include "kv/block_pool.h"
#include "model/kv_plan.h"
#include "model/presets.h"
#include "model/weights.h"
#include "test_util.h"

namespace mixattn {
namespace {

constexpr int kLayers = 12;
constexpr int kWindow = 512;
constexpr int64_t kContext = 32768;

// Blocks one owner reserves for a kContext-token request, worked out by hand for the engine's
// defaults (B = 64, chunk 256): a full owner keeps all 32768 / 64 = 512 blocks; a sliding owner
// holds at most W + chunk - 1 = 767 tokens while it writes a chunk, and 767 consecutive tokens
// touch at most ceil(766 / 64) + 1 = 13 blocks.
constexpr int64_t kFullOwnerBlocks = 512;
constexpr int64_t kSlidingOwnerBlocks = 13;

TEST(EngineCapacityTest, AdmitsThePlannersNumberOf32KTokenRequestsForEveryPreset) {
  const EngineOptions defaults;
  ASSERT_EQ(defaults.block_tokens, 64);
  ASSERT_EQ(defaults.prefill_chunk, 256);
  for (const PresetInfo& preset : Presets()) {
    const ModelConfig config =
        MakePresetConfig(preset.name, testing::TinyShape(kLayers, kWindow, 61, kContext));
    const KvPlan plan(config);
    int64_t by_hand = 0;  // blocks per request from the layer table alone
    for (int i = 0; i < config.num_layers(); ++i) {
      const LayerSpec& spec = config.layers[static_cast<size_t>(i)];
      if (spec.kv_source != i) continue;  // reads another layer's KV: allocates nothing
      by_hand += spec.kind == AttentionKind::kFull ? kFullOwnerBlocks : kSlidingOwnerBlocks;
    }
    ASSERT_EQ(plan.kv_blocks_per_sequence(kContext, defaults.block_tokens, defaults.prefill_chunk),
              by_hand)
        << preset.name;

    // A budget that admits two standard requests; every other preset fits more.
    EngineOptions options;
    const int64_t block_bytes = KvBlockPool::BlockBytes(
        options.block_tokens, config.num_key_value_heads, config.head_dim, options.kv_dtype);
    options.kv_memory_bytes = 2 * kLayers * kFullOwnerBlocks * block_bytes + block_bytes - 1;
    options.max_running = 1000;
    const int64_t blocks = options.kv_memory_bytes / block_bytes;
    const int64_t planned =
        plan.max_sequences_in_blocks(blocks, kContext, options.block_tokens, options.prefill_chunk);
    ASSERT_EQ(planned, blocks / by_hand) << preset.name;
    ASSERT_GE(planned, 2) << preset.name;

    const ModelWeights weights = RandomWeights(config, 61);
    Engine engine(config, weights, options, nullptr);
    ASSERT_EQ(engine.stats().kv_blocks_total, blocks) << preset.name;
    const int64_t extra = 3;
    for (int64_t r = 0; r < planned + extra; ++r) {
      GenerationRequest request;
      request.prompt =
          testing::RandomTokens(kContext - 1, config.vocab_size, 700 + static_cast<uint64_t>(r));
      request.max_tokens = 1;  // prompt + generated = 32768 tokens
      request.sampling.temperature = 0.0f;
      engine.Submit(std::move(request));
    }
    engine.Step();
    EXPECT_EQ(engine.stats().running, planned) << preset.name;
    EXPECT_EQ(engine.stats().waiting, extra) << preset.name;
  }
}

}  // namespace
}  // namespace mixattn
