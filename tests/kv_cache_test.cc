// Tests of the KV block pool and the per-sequence block tables, for every preset at small shapes.
//
// Legend: T = sequence length, W = sliding window, B = block_tokens, C = prefill chunk,
// KVH = 2 KV heads, D = 8 head dims.
#include "kv/kv_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "kv/block_pool.h"
#include "model/kv_plan.h"
#include "model/presets.h"
#include "test_util.h"

namespace mixattn {
namespace {

using ::mixattn::testing::ErrorMessage;

constexpr int kKvHeads = 2;
constexpr int kHeadDim = 8;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

KvPlan MakePlan(const std::string& preset, int layers, int window) {
  ModelShape shape;
  shape.layers = layers;
  shape.window = window;
  shape.kv_heads = kKvHeads;
  shape.head_dim = kHeadDim;
  return KvPlan(MakePresetConfig(preset, shape));
}

struct Shape {
  std::string preset;
  int layers;
  int window;
  int64_t block_tokens;

  std::string Describe() const {
    std::ostringstream out;
    out << preset << " L=" << layers << " W=" << window << " B=" << block_tokens;
    return out.str();
  }
};

// Every preset at 8 and 13 layers, W in {16, 24}, B in {4, 16}.
std::vector<Shape> AllShapes() {
  std::vector<Shape> shapes;
  for (const PresetInfo& preset : Presets()) {
    for (int layers : {8, 13}) {
      for (int window : {16, 24}) {
        for (int64_t block_tokens : {4, 16}) {
          shapes.push_back({preset.name, layers, window, block_tokens});
        }
      }
    }
  }
  return shapes;
}

bool IsSliding(const KvPlan& plan, int layer) {
  return plan.layer(layer).kind == AttentionKind::kSliding;
}

// Append sizes of a request: a prompt of `prompt` tokens prefilled in chunks of at most `chunk`
// (the last one partial when chunk does not divide it), then decode steps of 1 up to `total`.
std::vector<int64_t> Schedule(int64_t prompt, int64_t chunk, int64_t total) {
  std::vector<int64_t> counts;
  for (int64_t done = 0; done < prompt; done += counts.back()) {
    counts.push_back(std::min(chunk, prompt - done));
  }
  for (int64_t done = prompt; done < total; ++done) counts.push_back(1);
  return counts;
}

// The prefill chunks every request schedule is tested with: 1, 7, W-1, W and 4W.
std::vector<int64_t> Chunks(int window) { return {1, 7, window - 1, window, 4 * window}; }

// Blocks a sliding owner must hold right after appending positions prev_length .. length-1: the
// logical blocks from the one of the oldest key the first new query sees (prev_length - W + 1)
// to the one of the last position.
int64_t SlidingBlocksAfter(int64_t prev_length, int64_t length, int64_t window, int64_t B) {
  const int64_t oldest_needed = std::max<int64_t>(0, prev_length - window + 1);
  return (length - 1) / B - oldest_needed / B + 1;
}

// ---------------------------------------------------------------------------------------------
// KvBlockPool

TEST(KvBlockPoolTest, HandsOutEveryBlockOnceThenReportsExhaustion) {
  KvBlockPool pool(10, 4, kKvHeads, kHeadDim, DType::kBF16);
  EXPECT_EQ(pool.block_bytes(), 2 * 4 * kKvHeads * kHeadDim * 2);
  EXPECT_EQ(KvBlockPool::BlockBytes(4, kKvHeads, kHeadDim, DType::kF32), 2 * pool.block_bytes());
  EXPECT_EQ(pool.arena_bytes(), 10 * pool.block_bytes());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(pool.base()) % KvBlockPool::kAlignment, 0u);
  EXPECT_EQ(pool.num_free(), 10);

  std::set<int32_t> ids;
  for (int i = 0; i < 10; ++i) {
    const int32_t id = pool.Allocate();
    ASSERT_GE(id, 0);
    ASSERT_LT(id, 10);
    EXPECT_TRUE(pool.is_allocated(id));
    ids.insert(id);
  }
  EXPECT_EQ(ids.size(), 10u);
  EXPECT_EQ(pool.num_free(), 0);
  EXPECT_EQ(pool.num_used(), 10);
  EXPECT_EQ(pool.Allocate(), -1);  // exhaustion is a value, not an exception
  EXPECT_EQ(pool.Allocate(), -1);

  pool.Free(7);
  EXPECT_FALSE(pool.is_allocated(7));
  EXPECT_EQ(pool.num_free(), 1);
  EXPECT_EQ(pool.Allocate(), 7);
  for (int32_t id : ids) pool.Free(id);
  EXPECT_EQ(pool.num_free(), 10);
  EXPECT_EQ(pool.num_used(), 0);
}

TEST(KvBlockPoolTest, RejectsDoubleFreeAndBadIds) {
  KvBlockPool pool(3, 16, kKvHeads, kHeadDim, DType::kF32);
  const int32_t id = pool.Allocate();
  pool.Free(id);
  EXPECT_NE(ErrorMessage([&] { pool.Free(id); }).find("check failed"), std::string::npos);
  EXPECT_NE(ErrorMessage([&] { pool.Free(-1); }).find("check failed"), std::string::npos);
  EXPECT_NE(ErrorMessage([&] { pool.Free(3); }).find("check failed"), std::string::npos);
  EXPECT_EQ(pool.num_free(), 3);
}

TEST(KvBlockPoolTest, RejectsBadSizesWithAMessage) {
  EXPECT_NE(ErrorMessage([] { KvBlockPool(0, 4, 2, 8, DType::kF32); }).find("num_blocks"),
            std::string::npos);
  EXPECT_NE(ErrorMessage([] { KvBlockPool(4, 0, 2, 8, DType::kF32); }).find("block_tokens"),
            std::string::npos);
  // K is stored in 32-bit words: an odd head_dim fits f32 but not bf16.
  EXPECT_NE(ErrorMessage([] {
              KvBlockPool(4, 4, 2, 7, DType::kBF16);
            }).find("head_dim must be even for a BF16 cache (got 7)"),
            std::string::npos);
  EXPECT_EQ(KvBlockPool(4, 4, 2, 7, DType::kF32).block_bytes(), 2 * 4 * 2 * 7 * 4);
}

// ---------------------------------------------------------------------------------------------
// KvCache: ownership and views

TEST(KvCacheTest, OnlyOwnersHoldBlocksAndReadersSeeTheirOwnersView) {
  for (const Shape& shape : AllShapes()) {
    SCOPED_TRACE(shape.Describe());
    const KvPlan plan = MakePlan(shape.preset, shape.layers, shape.window);
    const int64_t B = shape.block_tokens;
    KvBlockPool pool(4096, B, kKvHeads, kHeadDim, DType::kBF16);
    KvCache cache(plan, pool);
    const SequenceId a = cache.AddSequence();
    const SequenceId b = cache.AddSequence();
    EXPECT_EQ(cache.num_sequences(), 2);
    EXPECT_EQ(cache.SequenceUsage(a), KvCache::Usage{});
    for (int64_t count : Schedule(3 * shape.window + 5, 7, 5 * shape.window)) {
      ASSERT_TRUE(cache.Append(a, count));
      ASSERT_TRUE(cache.Append(b, 1));
    }
    for (SequenceId id : {a, b}) {
      int64_t owner_blocks = 0;
      for (int layer = 0; layer < plan.num_layers(); ++layer) {
        const int owner = plan.kv_owner(layer);
        const int64_t held = cache.BlocksHeld(id, layer);
        if (plan.owns_kv(layer)) {
          EXPECT_GT(held, 0) << "owner " << layer;
          owner_blocks += held;
        } else {
          EXPECT_EQ(held, 0) << "reader " << layer;
        }
        const ops::PagedKvView view = cache.View(id, layer);
        const ops::PagedKvView owner_view = cache.View(id, owner);
        EXPECT_EQ(view.block_ids, owner_view.block_ids) << "layer " << layer;
        EXPECT_EQ(view.first_block, owner_view.first_block);
        EXPECT_EQ(view.num_blocks, cache.BlocksHeld(id, owner));
        EXPECT_EQ(view.num_tokens, cache.length(id));
        EXPECT_EQ(view.pool_base, pool.base());
        EXPECT_EQ(view.block_bytes, pool.block_bytes());
        EXPECT_EQ(view.block_tokens, B);
        EXPECT_EQ(view.kv_heads, kKvHeads);
        EXPECT_EQ(view.head_dim, kHeadDim);
        EXPECT_EQ(view.dtype, DType::kBF16);
      }
      EXPECT_EQ(cache.SequenceUsage(id).blocks(), owner_blocks);
    }
    EXPECT_EQ(cache.TotalUsage().blocks(), pool.num_used());
  }
}

// ---------------------------------------------------------------------------------------------
// KvCache: the sliding bound, checked after every Append of chunked prefill plus decode

TEST(KvCacheTest, SlidingOwnersStayWithinTheWindowBoundThroughPrefillAndDecode) {
  for (const Shape& shape : AllShapes()) {
    const KvPlan plan = MakePlan(shape.preset, shape.layers, shape.window);
    const int64_t W = shape.window, B = shape.block_tokens, total = 8 * W;
    for (int64_t chunk : Chunks(shape.window)) {
      SCOPED_TRACE(shape.Describe() + " C=" + std::to_string(chunk));
      KvBlockPool pool(plan.kv_blocks_per_sequence(total, B, chunk), B, kKvHeads, kHeadDim,
                       DType::kBF16);
      KvCache cache(plan, pool);
      const SequenceId id = cache.AddSequence();
      int64_t peak = 0;
      // Prompt 5W + 3: with C = 4W the second chunk is a partial one (W + 3 tokens).
      for (int64_t count : Schedule(5 * W + 3, chunk, total)) {
        const int64_t prev = cache.length(id);
        ASSERT_TRUE(cache.Append(id, count));
        const int64_t T = cache.length(id);
        ASSERT_EQ(T, prev + count);
        for (int owner : plan.kv_owners()) {
          const int64_t held = cache.BlocksHeld(id, owner);
          const ops::PagedKvView view = cache.View(id, owner);
          ASSERT_EQ(view.first_block + view.num_blocks, CeilDiv(T, B)) << "owner " << owner;
          if (IsSliding(plan, owner)) {
            ASSERT_EQ(held, SlidingBlocksAfter(prev, T, W, B)) << "owner " << owner << " T=" << T;
            ASSERT_LE(held, CeilDiv(W + chunk, B) + 1) << "owner " << owner << " T=" << T;
            ASSERT_LE(held, plan.kv_blocks_held(owner, T, B, chunk)) << "owner " << owner;
          } else {
            ASSERT_EQ(held, CeilDiv(T, B)) << "owner " << owner << " T=" << T;
            ASSERT_EQ(view.first_block, 0);
          }
        }
        peak = std::max(peak, cache.SequenceUsage(id).blocks());
      }
      EXPECT_EQ(cache.length(id), total);
      EXPECT_LE(peak, cache.BlocksToReserve(total, chunk));
      // Decode-only steps reach the planner's bound exactly: the reservation is not padded.
      if (chunk == 1) {
        EXPECT_EQ(peak, cache.BlocksToReserve(total, chunk));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// KvCache: exact accounting against the planner's token formula
//
// Relation asserted, for an owner whose last Append added n tokens (n = 1 for decode):
//   full owner:     blocks == ceil(T / B)                        (so T <= blocks*B < T + B)
//   sliding owner:  tokens_held <= blocks*B < tokens_held + (n - 1) + 2*B
//                   with tokens_held = KvPlan::kv_tokens_held = min(T, W): it holds the W + n - 1
//                   positions T-n-W+1 .. T-1, which touch at most ceil((W + n - 2) / B) + 1 blocks.
// Bytes are blocks * block_bytes with block_bytes == B * KvPlan::kv_bytes_per_token_slot, so per
// sequence kv_bytes_per_sequence(T) <= bytes < kv_bytes_per_sequence(T) + slot * (F*B +
// S*(n - 1 + 2B)) for F full and S sliding owners, and the same summed over sequences.

TEST(KvCacheTest, AccountingMatchesThePlannersTokenFormulaRoundedUpToBlocks) {
  for (const Shape& shape : AllShapes()) {
    const KvPlan plan = MakePlan(shape.preset, shape.layers, shape.window);
    const int64_t W = shape.window, B = shape.block_tokens;
    for (DType dtype : {DType::kBF16, DType::kF32}) {
      for (int64_t chunk : {int64_t{1}, int64_t{7}}) {
        SCOPED_TRACE(shape.Describe() + " C=" + std::to_string(chunk) + " " +
                     std::string(DTypeName(dtype)));
        KvBlockPool pool(3 * plan.kv_blocks_per_sequence(8 * W, B, chunk), B, kKvHeads, kHeadDim,
                         dtype);
        KvCache cache(plan, pool);
        const int64_t slot = plan.kv_bytes_per_token_slot(dtype);
        ASSERT_EQ(pool.block_bytes(), B * slot);
        int64_t num_full = 0, num_sliding = 0;
        for (int owner : plan.kv_owners()) ++(IsSliding(plan, owner) ? num_sliding : num_full);

        // Three sequences at different lengths so the totals mix them: T, T + W/2 + 1 and 2T.
        const std::vector<SequenceId> ids = {cache.AddSequence(), cache.AddSequence(),
                                             cache.AddSequence()};
        std::vector<int64_t> last_count(ids.size(), 0);
        for (int64_t T : {W / 2, W - 1, W, W + 1, 2 * W + 3, 4 * W, 8 * W - 5}) {
          const std::vector<int64_t> targets = {T, std::min(T + W / 2 + 1, 8 * W),
                                                std::min(2 * T, 8 * W)};
          KvCache::Usage sum;
          int64_t planner_bytes = 0, slack_bytes = 0;
          for (size_t s = 0; s < ids.size(); ++s) {
            const SequenceId id = ids[s];
            while (cache.length(id) < targets[s]) {
              last_count[s] = std::min(chunk, targets[s] - cache.length(id));
              ASSERT_TRUE(cache.Append(id, last_count[s]));
            }
            const int64_t length = cache.length(id);
            const int64_t n = last_count[s];
            KvCache::Usage expected;
            for (int owner : plan.kv_owners()) {
              const int64_t blocks = cache.BlocksHeld(id, owner);
              const int64_t tokens_held = plan.kv_tokens_held(owner, length);
              if (IsSliding(plan, owner)) {
                EXPECT_LE(tokens_held, blocks * B) << "owner " << owner << " T=" << length;
                EXPECT_LT(blocks * B, tokens_held + (n - 1) + 2 * B) << "owner " << owner;
                expected.sliding_blocks += blocks;
              } else {
                EXPECT_EQ(blocks, CeilDiv(length, B)) << "owner " << owner << " T=" << length;
                expected.full_blocks += blocks;
              }
            }
            expected.full_bytes = expected.full_blocks * pool.block_bytes();
            expected.sliding_bytes = expected.sliding_blocks * pool.block_bytes();
            const KvCache::Usage usage = cache.SequenceUsage(id);
            EXPECT_EQ(usage, expected) << "T=" << length;
            const int64_t formula = plan.kv_bytes_per_sequence(length, dtype);
            EXPECT_LE(formula, usage.bytes()) << "T=" << length;
            const int64_t slack = slot * (num_full * B + num_sliding * (n - 1 + 2 * B));
            EXPECT_LT(usage.bytes(), formula + slack) << "T=" << length;
            planner_bytes += formula;
            slack_bytes += slack;
            sum.full_blocks += usage.full_blocks;
            sum.sliding_blocks += usage.sliding_blocks;
            sum.full_bytes += usage.full_bytes;
            sum.sliding_bytes += usage.sliding_bytes;
          }
          EXPECT_EQ(cache.TotalUsage(), sum);
          EXPECT_EQ(cache.TotalUsage().blocks(), pool.num_used());
          EXPECT_LE(planner_bytes, sum.bytes());
          EXPECT_LT(sum.bytes(), planner_bytes + slack_bytes);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// KvCache: data integrity through the views

// A recognisable pattern for the K (or V) vector [KVH, D] of one position of one owner of one
// sequence: 64-bit words (tag + i) * an odd constant, where the tag packs all four and leaves its
// low 4 bits free, so no two vectors share a word.
void Pattern(SequenceId id, int owner, int64_t position, bool value, std::byte* out,
             int64_t bytes) {
  const uint64_t tag = ((((static_cast<uint64_t>(id) << 6 | static_cast<uint64_t>(owner)) << 20 |
                          static_cast<uint64_t>(position))
                         << 1) |
                        (value ? 1u : 0u))
                       << 4;
  for (int64_t i = 0; i < bytes; i += 8) {
    const uint64_t word = (tag + static_cast<uint64_t>(i / 8)) * 0x9e3779b97f4a7c15ull;
    std::memcpy(out + i, &word, static_cast<size_t>(std::min<int64_t>(8, bytes - i)));
  }
}

// Drives 3-5 interleaved sequences with random chunks, releasing some and adding new ones, and
// checks after every operation that each live sequence's retained positions read back intact.
class KvCacheIntegrity {
 public:
  KvCacheIntegrity(const KvPlan& plan, KvBlockPool& pool)
      : plan_(plan), pool_(pool), cache_(plan, pool) {
    vector_bytes_ = kKvHeads * kHeadDim * DTypeSize(pool.dtype());
    expected_.resize(static_cast<size_t>(vector_bytes_));
    read_.resize(static_cast<size_t>(vector_bytes_));
  }

  KvCache& cache() { return cache_; }

  void Write(SequenceId id, int64_t from, int64_t to) {
    for (int owner : plan_.kv_owners()) {
      const ops::PagedKvView view = cache_.View(id, owner);
      for (int64_t p = from; p < to; ++p) {
        Pattern(id, owner, p, false, expected_.data(), vector_bytes_);
        view.WriteKey(p, expected_.data());
        Pattern(id, owner, p, true, expected_.data(), vector_bytes_);
        view.WriteValue(p, expected_.data());
      }
    }
  }

  // Appends, writes the new positions and checks that the first new query still sees its window.
  bool AppendAndWrite(SequenceId id, int64_t count) {
    const int64_t prev = cache_.length(id);
    if (!cache_.Append(id, count)) return false;
    Write(id, prev, prev + count);
    for (int owner : plan_.kv_owners()) {
      const ops::PagedKvView view = cache_.View(id, owner);
      const int64_t oldest_needed =
          IsSliding(plan_, owner) ? std::max<int64_t>(0, prev - plan_.layer(owner).window + 1) : 0;
      EXPECT_LE(view.first_block * view.block_tokens, oldest_needed) << "owner " << owner;
    }
    return true;
  }

  // No pool block is in two tables and the tables account for every used block; with
  // `check_data`, every position a live sequence still holds reads back what was written.
  void CheckAll(const std::vector<SequenceId>& live, bool check_data) {
    std::set<int32_t> seen;
    int64_t held = 0;
    for (SequenceId id : live) {
      for (int owner : plan_.kv_owners()) {
        const ops::PagedKvView view = cache_.View(id, owner);
        for (int64_t b = 0; b < view.num_blocks; ++b) {
          ASSERT_TRUE(pool_.is_allocated(view.block_ids[b]));
          ASSERT_TRUE(seen.insert(view.block_ids[b]).second) << "block in two tables";
        }
        held += view.num_blocks;
        if (!check_data) continue;
        for (int64_t p = view.first_block * view.block_tokens; p < view.num_tokens; ++p) {
          Pattern(id, owner, p, false, expected_.data(), vector_bytes_);
          view.ReadKey(p, read_.data());
          ASSERT_EQ(std::memcmp(read_.data(), expected_.data(), expected_.size()), 0)
              << "K of owner " << owner << " position " << p;
          Pattern(id, owner, p, true, expected_.data(), vector_bytes_);
          view.ReadValue(p, read_.data());
          ASSERT_EQ(std::memcmp(read_.data(), expected_.data(), expected_.size()), 0)
              << "V of owner " << owner << " position " << p;
        }
      }
    }
    ASSERT_EQ(held, pool_.num_used());
    ASSERT_EQ(cache_.TotalUsage().blocks(), pool_.num_used());
  }

 private:
  const KvPlan& plan_;
  KvBlockPool& pool_;
  KvCache cache_;
  int64_t vector_bytes_ = 0;
  std::vector<std::byte> expected_;
  std::vector<std::byte> read_;  // a K or V vector read back from the cache
};

TEST(KvCacheTest, DataSurvivesAppendsFreesAndOtherSequences) {
  for (const Shape& shape : AllShapes()) {
    const KvPlan plan = MakePlan(shape.preset, shape.layers, shape.window);
    const int64_t W = shape.window, B = shape.block_tokens, total = 8 * W;
    const DType dtype = shape.block_tokens == 4 ? DType::kF32 : DType::kBF16;
    SCOPED_TRACE(shape.Describe());
    KvBlockPool pool(5 * plan.kv_blocks_per_sequence(total, B, 4 * W), B, kKvHeads, kHeadDim,
                     dtype);
    KvCacheIntegrity run(plan, pool);
    KvCache& cache = run.cache();
    std::mt19937 rng(static_cast<uint32_t>(shape.layers * 1000 + W * 10 + B));
    const std::vector<int64_t> chunks = Chunks(shape.window);
    std::vector<SequenceId> live;
    std::vector<int64_t> chunk_of;  // the prefill chunk of each live sequence
    int released = 0, added = 0;
    for (int step = 0; step < 300; ++step) {
      // Keep 3-5 sequences live: add below 3, release (finished or at random) above.
      if (live.size() < 3 || (live.size() < 5 && rng() % 8 == 0)) {
        live.push_back(cache.AddSequence());
        chunk_of.push_back(chunks[rng() % chunks.size()]);
        ++added;
      }
      const size_t s = rng() % live.size();
      const SequenceId id = live[s];
      const int64_t length = cache.length(id);
      if (length >= total || (live.size() > 3 && rng() % 12 == 0)) {
        run.CheckAll(live, true);  // the released sequence's data was intact up to the end
        cache.Release(id);
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(s));
        chunk_of.erase(chunk_of.begin() + static_cast<std::ptrdiff_t>(s));
        ++released;
      } else {
        // Prefill chunks up to 4W, decode steps of 1 after that.
        const int64_t count = length < 4 * W ? std::min(chunk_of[s], total - length) : int64_t{1};
        ASSERT_TRUE(run.AppendAndWrite(id, count));
      }
      // Block ownership after every step; the data (the slow part) every third step. A stray
      // write persists until its block is freed, and a block can only be freed and reused by
      // another table, which the ownership check catches the step it happens.
      run.CheckAll(live, step % 3 == 0);
      if (::testing::Test::HasFatalFailure()) return;
    }
    run.CheckAll(live, true);
    EXPECT_GE(added, 5);
    EXPECT_GE(released, 2);
    for (SequenceId id : live) cache.Release(id);
    EXPECT_EQ(pool.num_free(), pool.num_blocks());
  }
}

// ---------------------------------------------------------------------------------------------
// KvCache: pool exhaustion

TEST(KvCacheTest, AppendIsAllOrNothingWhenThePoolRunsOut) {
  for (const Shape& shape : AllShapes()) {
    const KvPlan plan = MakePlan(shape.preset, shape.layers, shape.window);
    const int64_t W = shape.window, B = shape.block_tokens;
    SCOPED_TRACE(shape.Describe());
    // Room for a bit more than one long sequence: two will compete and run the pool dry.
    KvBlockPool pool(plan.kv_blocks_per_sequence(6 * W, B, W) + 3, B, kKvHeads, kHeadDim,
                     DType::kBF16);
    KvCache cache(plan, pool);
    std::mt19937 rng(static_cast<uint32_t>(shape.layers + W + B));
    const std::vector<SequenceId> ids = {cache.AddSequence(), cache.AddSequence()};
    int refusals = 0, successes = 0;
    for (int step = 0; step < 400 && refusals < 20; ++step) {
      const SequenceId id = ids[rng() % ids.size()];
      const int64_t count = 1 + static_cast<int64_t>(rng() % static_cast<uint32_t>(W + 3));
      const KvCache::Usage usage = cache.SequenceUsage(id);
      const KvCache::Usage total = cache.TotalUsage();
      const int64_t length = cache.length(id), used = pool.num_used(), free = pool.num_free();
      const int64_t predicted = cache.BlocksNeededToAppend(id, count);
      std::vector<int64_t> held;
      for (int owner : plan.kv_owners()) held.push_back(cache.BlocksHeld(id, owner));
      const bool ok = cache.Append(id, count);
      EXPECT_EQ(ok, predicted <= free) << "predicted " << predicted << " free " << free;
      if (ok) {
        ++successes;
        EXPECT_EQ(pool.num_used() - used, predicted);
        EXPECT_EQ(cache.length(id), length + count);
      } else {
        ++refusals;
        EXPECT_EQ(cache.length(id), length);
        EXPECT_EQ(pool.num_free(), free);
        EXPECT_EQ(cache.SequenceUsage(id), usage);
        EXPECT_EQ(cache.TotalUsage(), total);
        std::vector<int64_t> held_after;
        for (int owner : plan.kv_owners()) held_after.push_back(cache.BlocksHeld(id, owner));
        EXPECT_EQ(held_after, held);
      }
      EXPECT_EQ(cache.TotalUsage().blocks(), pool.num_used());
    }
    EXPECT_GT(successes, 0);
    EXPECT_GT(refusals, 0);
    // Asking for zero tokens is free and always succeeds, even on an exhausted pool.
    EXPECT_EQ(cache.BlocksNeededToAppend(ids[0], 0), 0);
    EXPECT_TRUE(cache.Append(ids[0], 0));
    for (SequenceId id : ids) cache.Release(id);
    EXPECT_EQ(pool.num_free(), pool.num_blocks());
    EXPECT_EQ(cache.TotalUsage(), KvCache::Usage{});
    EXPECT_EQ(cache.num_sequences(), 0);
  }
}

TEST(KvCacheTest, AppendSucceedsWhenTheNeedExactlyEqualsTheFreeBlocks) {
  const KvPlan plan = MakePlan("ma", 8, 16);
  for (int64_t B : {4, 16}) {
    const int64_t need = plan.kv_blocks_per_sequence(40, B, 40);
    KvBlockPool pool(need, B, kKvHeads, kHeadDim, DType::kBF16);
    KvCache cache(plan, pool);
    const SequenceId id = cache.AddSequence();
    EXPECT_EQ(cache.BlocksNeededToAppend(id, 40), need);
    EXPECT_FALSE(cache.Append(id, 40 + B));  // one more block per owner
    EXPECT_TRUE(cache.Append(id, 40));
    EXPECT_EQ(pool.num_free(), 0);
  }
}

// ---------------------------------------------------------------------------------------------
// KvCache: admission capacity equals the planner's

// Admits sequences while the blocks reserved by those admitted plus BlocksToReserve(T, C) fit in
// the pool (a sequence's usage never exceeds its reservation, so the reservations bound
// TotalUsage), then runs them all to T interleaved, each starting one step later than the
// previous, so their prefill and decode phases overlap in every combination.
TEST(KvCacheTest, AdmitsExactlyThePlannersCapacityAndNeverRunsOut) {
  for (const Shape& shape : AllShapes()) {
    const KvPlan plan = MakePlan(shape.preset, shape.layers, shape.window);
    const int64_t W = shape.window, B = shape.block_tokens;
    for (int64_t T : {W / 2 + 1, 3 * W + 5, 8 * W}) {
      for (int64_t chunk : Chunks(shape.window)) {
        SCOPED_TRACE(shape.Describe() + " T=" + std::to_string(T) + " C=" + std::to_string(chunk));
        const int64_t per_sequence = plan.kv_blocks_per_sequence(T, B, chunk);
        for (int64_t num_blocks : {per_sequence * 3 + per_sequence / 2, per_sequence * 6 - 1}) {
          KvBlockPool pool(num_blocks, B, kKvHeads, kHeadDim, DType::kBF16);
          KvCache cache(plan, pool);
          ASSERT_EQ(cache.BlocksToReserve(T, chunk), per_sequence);
          std::vector<SequenceId> admitted;
          int64_t reserved = 0;
          while (reserved + cache.BlocksToReserve(T, chunk) <= pool.num_blocks()) {
            ASSERT_LE(cache.TotalUsage().blocks(), reserved);
            admitted.push_back(cache.AddSequence());
            reserved += cache.BlocksToReserve(T, chunk);
          }
          EXPECT_EQ(static_cast<int64_t>(admitted.size()),
                    plan.max_sequences_in_blocks(num_blocks, T, B, chunk));

          const std::vector<int64_t> schedule = Schedule(std::max<int64_t>(1, T - 2 * W), chunk, T);
          std::vector<size_t> next(admitted.size(), 0);
          for (size_t step = 0; step < schedule.size() + admitted.size(); ++step) {
            for (size_t s = 0; s < admitted.size() && s <= step; ++s) {
              if (next[s] == schedule.size()) continue;
              ASSERT_TRUE(cache.Append(admitted[s], schedule[next[s]++]))
                  << "sequence " << s << " at length " << cache.length(admitted[s]);
              ASSERT_LE(cache.SequenceUsage(admitted[s]).blocks(), per_sequence);
            }
            ASSERT_LE(cache.TotalUsage().blocks(), reserved);
          }
          for (SequenceId id : admitted) EXPECT_EQ(cache.length(id), T);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// KvCache: ids and misuse

TEST(KvCacheTest, ReleasedAndUnknownIdsAreCheckedAndSlotsAreReused) {
  const KvPlan plan = MakePlan("ma-pairs", 8, 16);
  KvBlockPool pool(256, 4, kKvHeads, kHeadDim, DType::kBF16);
  KvCache cache(plan, pool);
  const SequenceId a = cache.AddSequence();
  ASSERT_TRUE(cache.Append(a, 20));
  cache.Release(a);
  EXPECT_FALSE(cache.contains(a));
  EXPECT_EQ(pool.num_free(), 256);
  const SequenceId b = cache.AddSequence();  // reuses a's slot with a new generation
  EXPECT_NE(a, b);
  EXPECT_TRUE(cache.contains(b));
  EXPECT_EQ(cache.length(b), 0);
  EXPECT_EQ(cache.SequenceUsage(b), KvCache::Usage{});
  const auto checked = [](const std::string& message) {
    return message.find("check failed") != std::string::npos;
  };
  EXPECT_TRUE(checked(ErrorMessage([&] { cache.Release(a); })));
  EXPECT_TRUE(checked(ErrorMessage([&] { cache.Append(a, 1); })));
  EXPECT_TRUE(checked(ErrorMessage([&] { (void)cache.View(a, 0); })));
  EXPECT_TRUE(checked(ErrorMessage([&] { (void)cache.length(12345); })));
  EXPECT_TRUE(checked(ErrorMessage([&] { (void)cache.length(-1); })));
  EXPECT_TRUE(checked(ErrorMessage([&] { (void)cache.View(b, 8); })));
  EXPECT_TRUE(checked(ErrorMessage([&] { (void)cache.BlocksHeld(b, -1); })));
  EXPECT_TRUE(checked(ErrorMessage([&] { cache.Append(b, -1); })));
  EXPECT_EQ(cache.num_sequences(), 1);
}

TEST(KvCacheTest, RejectsAPoolSizedForAnotherModel) {
  const KvPlan plan = MakePlan("ma", 8, 16);
  KvBlockPool pool(16, 4, kKvHeads, 2 * kHeadDim, DType::kBF16);
  EXPECT_NE(ErrorMessage([&] { KvCache cache(plan, pool); }).find("check failed"),
            std::string::npos);
}

TEST(KvCacheTest, DestructorReturnsEveryBlockToThePool) {
  const KvPlan plan = MakePlan("characterai", 13, 24);
  KvBlockPool pool(512, 16, kKvHeads, kHeadDim, DType::kBF16);
  {
    KvCache cache(plan, pool);
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(cache.Append(cache.AddSequence(), 50 + i));
    EXPECT_GT(pool.num_used(), 0);
  }
  EXPECT_EQ(pool.num_free(), pool.num_blocks());
}

}  // namespace
}  // namespace mixattn
