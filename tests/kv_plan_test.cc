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
