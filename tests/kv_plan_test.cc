#include "model/kv_plan.h"

#include <gtest/gtest.h>

#include "model/presets.h"

namespace mixattn {
namespace {

ModelConfig SmallMaPairs() {
  ModelShape shape;
  shape.layers = 8;
  shape.kv_heads = 2;
  shape.head_dim = 16;
  shape.window = 100;
  return MakePresetConfig("ma-pairs", shape);  // F S F>0 S S>3 F S F>5
}

TEST(KvPlanTest, OwnersAndReaders) {
  const KvPlan plan(SmallMaPairs());
  EXPECT_EQ(plan.kv_owners(), (std::vector<int>{0, 1, 3, 5, 6}));
  EXPECT_EQ(plan.kv_readers(0), (std::vector<int>{0, 2}));
  EXPECT_EQ(plan.kv_readers(3), (std::vector<int>{3, 4}));
  EXPECT_EQ(plan.kv_readers(5), (std::vector<int>{5, 7}));
  EXPECT_TRUE(plan.owns_kv(1));
  EXPECT_FALSE(plan.owns_kv(4));
  EXPECT_EQ(plan.kv_owner(7), 5);
}

TEST(KvPlanTest, ByteFigures) {
  const KvPlan plan(SmallMaPairs());
  const int64_t slot_bf16 = 2 * 2 * 16 * 2;  // K and V, 2 heads, 16 dims, 2 bytes
  EXPECT_EQ(plan.kv_bytes_per_token_slot(DType::kBF16), slot_bf16);
  EXPECT_EQ(plan.kv_bytes_per_token_slot(DType::kF32), 2 * slot_bf16);
  EXPECT_EQ(plan.kv_bytes_per_token(DType::kBF16), 5 * slot_bf16);
  // Below the window every owner holds every token.
  EXPECT_EQ(plan.kv_token_layers(50), 5 * 50);
  // At 1000 tokens: two full owners hold 1000, three sliding owners hold 100.
  EXPECT_EQ(plan.kv_token_layers(1000), 2 * 1000 + 3 * 100);
  EXPECT_EQ(plan.kv_bytes_per_sequence(1000, DType::kBF16), (2 * 1000 + 3 * 100) * slot_bf16);
  const int64_t per_sequence = plan.kv_bytes_per_sequence(1000, DType::kBF16);
  EXPECT_EQ(plan.max_sequences(per_sequence * 7 + per_sequence - 1, 1000, DType::kBF16), 7);
  EXPECT_EQ(plan.max_sequences(per_sequence - 1, 1000, DType::kBF16), 0);
  // A decode step reads, per layer, the tokens in its window from its owner's cache: layers
  // 0, 2, 5, 7 are full (1000 each), 1, 3, 4, 6 sliding (100 each).
  EXPECT_EQ(plan.kv_bytes_read_per_decode_token(1000, DType::kBF16),
            (4 * 1000 + 4 * 100) * slot_bf16);
}

}  // namespace
}  // namespace mixattn

namespace mixattn {
namespace {

// The block formula against a brute-force simulation of the sliding owner's freeing rule: write
// a first chunk of `first_chunk` tokens, then chunks of C (a scheduler may cut chunks anywhere),
// before each chunk drop blocks wholly below (first query - W + 1), and record the most blocks
// held at once.
int64_t SimulateSlidingBlocks(int64_t context, int64_t window, int64_t block_tokens, int64_t chunk,
                              int64_t first_chunk) {
  int64_t most = 0;
  for (int64_t start = 0; start < context; start += start == 0 ? first_chunk : chunk) {
    const int64_t end =
        std::min(context, start + (start == 0 ? first_chunk : chunk));  // [start, end)
    const int64_t oldest_needed = std::max<int64_t>(0, start - window + 1);
    const int64_t first_block = oldest_needed / block_tokens;
    const int64_t last_block = (end - 1) / block_tokens;
    most = std::max(most, last_block - first_block + 1);
  }
  return most;
}

TEST(KvPlanTest, BlockFormulaIsTheWorstCaseOfTheFreeingRule) {
  for (int64_t window : {1, 3, 16, 17, 100}) {
    ModelShape shape;
    shape.layers = 1;
    shape.window = static_cast<int>(window);
    const KvPlan plan(MakePresetConfig("all-sliding", shape));
    for (int64_t block : {1, 4, 16}) {
      for (int64_t chunk : {1, 7, 16, 64}) {
        int64_t worst = 0;
        // The worst case over where the chunks fall: every context length up to a few windows.
        for (int64_t context = 1; context <= 4 * window + 3 * chunk + 2 * block; ++context) {
          for (int64_t first_chunk = 1; first_chunk <= chunk; ++first_chunk) {
            const int64_t simulated =
                SimulateSlidingBlocks(context, window, block, chunk, first_chunk);
            ASSERT_LE(simulated, plan.kv_blocks_held(0, context, block, chunk))
                << "W=" << window << " B=" << block << " C=" << chunk << " T=" << context;
            worst = std::max(worst, simulated);
          }
        }
        const int64_t long_context = 8 * window + 8 * chunk + 5 * block;
        EXPECT_EQ(worst, plan.kv_blocks_held(0, long_context, block, chunk))
            << "the formula is attained: W=" << window << " B=" << block << " C=" << chunk;
        // The stated bound.
        EXPECT_LE(plan.kv_blocks_held(0, long_context, block, chunk),
                  (window + chunk + block - 1) / block + 1);
      }
    }
  }
}

TEST(KvPlanTest, BlocksPerSequenceAndCapacity) {
  const KvPlan plan(SmallMaPairs());  // owners 0 F, 1 S, 3 S, 5 F, 6 S; W = 100
  // T = 1000, B = 16, C = 1: full owners ceil(1000/16) = 63, sliding ceil(99/16) + 1 = 8.
  EXPECT_EQ(plan.kv_blocks_per_sequence(1000, 16, 1), 2 * 63 + 3 * 8);
  EXPECT_EQ(plan.max_sequences_in_blocks(10 * 150 + 149, 1000, 16, 1), 10);
  // Short sequences never need more than the whole sequence.
  EXPECT_EQ(plan.kv_blocks_per_sequence(5, 16, 256), 5);
}

}  // namespace
}  // namespace mixattn
