#include "engine/engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/random.h"
#include "engine/model_runner.h"
#include "model/kv_plan.h"
#include "model/presets.h"
#include "model/reference_forward.h"
#include "test_util.h"

namespace mixattn {
namespace {

using ::testing::HasSubstr;
using testing::RandomTokens;

constexpr int kWindow = 8;

// The tiny test shape with a vocabulary of 61 and room for 512 positions.
ModelShape EngineShape() { return testing::TinyShape(8, kWindow, 61, 512); }

// max |a - b| / max |b| over rows [first, first + count) of b (a holds just those rows).
double RelativeError(const float* a, const Tensor& b, int64_t first_row, int64_t count) {
  const int64_t width = b.shape[1];
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < count * width; ++i) {
    const double expected = b.data[static_cast<size_t>(first_row * width + i)];
    diff = std::max(diff, std::fabs(a[i] - expected));
    scale = std::max(scale, std::fabs(expected));
  }
  return diff / scale;
}

// Feeds `tokens` through the runner in chunks and returns the worst relative error against the
// reference forward's logits.
double ChunkedPrefillError(ModelRunner& runner, const std::vector<int>& tokens,
                           const Tensor& reference, int64_t chunk, DType kv_dtype) {
  const ModelConfig& config = runner.config();
  KvBlockPool pool(4096, 4, config.num_key_value_heads, config.head_dim, kv_dtype);
  KvCache cache(runner.plan(), pool);
  const SequenceId sequence = cache.AddSequence();
  double worst = 0;
  for (int64_t start = 0; start < static_cast<int64_t>(tokens.size()); start += chunk) {
    const int64_t count = std::min<int64_t>(chunk, static_cast<int64_t>(tokens.size()) - start);
    EXPECT_TRUE(cache.Append(sequence, count));
    const BatchItem item{sequence,
                         std::span<const int>(tokens).subspan(static_cast<size_t>(start),
                                                              static_cast<size_t>(count)),
                         start, false, true};
    const std::vector<float>& logits = runner.Forward(std::span<const BatchItem>(&item, 1), cache);
    worst = std::max(worst, RelativeError(logits.data(), reference, start, count));
  }
  return worst;
}

TEST(EngineTest, RunnerMatchesReferenceForEveryPresetAndChunkSize) {
  for (const PresetInfo& preset : Presets()) {
    const ModelConfig config = MakePresetConfig(preset.name, EngineShape());
    const ModelWeights weights = RandomWeights(config, 11, 0.1);
    ModelRunner runner(config, weights, DType::kF32);
    for (int64_t length : {kWindow / 2, kWindow, 2 * kWindow + 3, 8 * kWindow}) {
      const std::vector<int> tokens =
          RandomTokens(length, config.vocab_size, 100 + static_cast<uint64_t>(length));
      const Tensor reference = ReferenceForward(config, weights, tokens);
      for (int64_t chunk : {1, 7, kWindow - 1, kWindow, 4 * kWindow}) {
        EXPECT_LE(ChunkedPrefillError(runner, tokens, reference, chunk, DType::kF32), 1e-3)
            << preset.name << " length " << length << " chunk " << chunk;
      }
    }
  }
}

TEST(EngineTest, RunnerBf16StaysCloseToReference) {
  const ModelConfig config = MakePresetConfig("ma-pairs", EngineShape());
  const ModelWeights weights = RandomWeights(config, 12, 0.1);
  const std::vector<int> tokens = RandomTokens(5 * kWindow, config.vocab_size, 13);
  ModelRunner runner(config, weights, DType::kBF16);
  // bf16 keeps 8 mantissa bits (relative rounding 2^-9 per weight and KV value); through 8
  // layers the logits move by a few percent of their range at most.
  EXPECT_LE(ChunkedPrefillError(runner, tokens, ReferenceForward(config, weights, tokens), 7,
                                DType::kBF16),
            5e-2);
}

// Many sequences of mixed lengths in one batch, each at its own chunk boundary.
TEST(EngineTest, MixedBatchMatchesReference) {
  for (const char* preset : {"standard", "ma", "ma-pairs", "characterai", "all-sliding"}) {
    const ModelConfig config = MakePresetConfig(preset, EngineShape());
    const ModelWeights weights = RandomWeights(config, 21, 0.1);
    ModelRunner runner(config, weights, DType::kF32);
    KvBlockPool pool(8192, 4, config.num_key_value_heads, config.head_dim, DType::kF32);
    KvCache cache(runner.plan(), pool);
    for (int batch : {1, 3, 16}) {
      std::vector<std::vector<int>> prompts;
      std::vector<Tensor> references;
      std::vector<SequenceId> sequences;
      for (int b = 0; b < batch; ++b) {
        prompts.push_back(
            RandomTokens(3 + (b * 13) % 70, config.vocab_size, 200 + static_cast<uint64_t>(b)));
        references.push_back(ReferenceForward(config, weights, prompts.back()));
        sequences.push_back(cache.AddSequence());
      }
      // Each step feeds every unfinished sequence a chunk of a different size.
      std::vector<int64_t> done(static_cast<size_t>(batch), 0);
      for (int step = 0;; ++step) {
        std::vector<BatchItem> items;
        std::vector<int> owners;
        for (int b = 0; b < batch; ++b) {
          const int64_t remaining = static_cast<int64_t>(prompts[static_cast<size_t>(b)].size()) -
                                    done[static_cast<size_t>(b)];
          if (remaining == 0) continue;
          const int64_t count = std::min<int64_t>(remaining, 1 + (b + step) % 9);
          ASSERT_TRUE(cache.Append(sequences[static_cast<size_t>(b)], count));
          items.push_back({sequences[static_cast<size_t>(b)],
                           std::span<const int>(prompts[static_cast<size_t>(b)])
                               .subspan(static_cast<size_t>(done[static_cast<size_t>(b)]),
                                        static_cast<size_t>(count)),
                           done[static_cast<size_t>(b)], false, true});
          owners.push_back(b);
        }
        if (items.empty()) break;
        const std::vector<float>& logits = runner.Forward(items, cache);
        int64_t row = 0;
        for (size_t n = 0; n < items.size(); ++n) {
          const int b = owners[n];
          const int64_t count = static_cast<int64_t>(items[n].tokens.size());
          EXPECT_LE(RelativeError(logits.data() + row * config.vocab_size,
                                  references[static_cast<size_t>(b)], items[n].start, count),
                    1e-3)
              << preset << " batch " << batch << " sequence " << b;
          row += count;
          done[static_cast<size_t>(b)] += count;
        }
      }
      for (SequenceId s : sequences) cache.Release(s);
      EXPECT_EQ(pool.num_free(), pool.num_blocks());
    }
  }
}

std::map<RequestId, std::vector<int>> RunToCompletion(Engine& engine) {
  std::map<RequestId, std::vector<int>> outputs;
  for (int steps = 0; !engine.idle(); ++steps) {
    EXPECT_LT(steps, 100000);
    for (const EngineEvent& event : engine.Step()) {
      auto& out = outputs[event.request];
      out.insert(out.end(), event.tokens.begin(), event.tokens.end());
    }
  }
  return outputs;
}

EngineOptions SmallOptions(int64_t kv_bytes) {
  EngineOptions options;
  options.kv_memory_bytes = kv_bytes;
  options.block_tokens = 4;
  options.prefill_chunk = 16;
  options.max_batch_tokens = 64;
  options.weights_dtype = DType::kF32;
  options.kv_dtype = DType::kF32;
  return options;
}

GenerationRequest Greedy(std::vector<int> prompt, int64_t max_tokens) {
  GenerationRequest request;
  request.prompt = std::move(prompt);
  request.sampling.temperature = 0.0f;
  request.max_tokens = max_tokens;
  return request;
}

TEST(EngineTest, GreedyOutputIsTheSameAloneAndInABatch) {
  const ModelConfig config = MakePresetConfig("ma-pairs", EngineShape());
  const ModelWeights weights = RandomWeights(config, 31, 0.1);
  std::vector<std::vector<int>> prompts;
  for (int b = 0; b < 6; ++b)
    prompts.push_back(RandomTokens(5 + 11 * b, config.vocab_size, 300 + static_cast<uint64_t>(b)));
  std::vector<std::vector<int>> alone;
  for (const auto& prompt : prompts) {
    Engine engine(config, weights, SmallOptions(int64_t{1} << 24), nullptr);
    const RequestId id = engine.Submit(Greedy(prompt, 20));
    alone.push_back(RunToCompletion(engine)[id]);
    EXPECT_EQ(alone.back().size(), 20u);
  }
  Engine engine(config, weights, SmallOptions(int64_t{1} << 24), nullptr);
  std::vector<RequestId> ids;
  for (const auto& prompt : prompts) ids.push_back(engine.Submit(Greedy(prompt, 20)));
  const auto together = RunToCompletion(engine);
  for (size_t b = 0; b < prompts.size(); ++b)
    EXPECT_EQ(together.at(ids[b]), alone[b]) << "request " << b;
  EXPECT_EQ(engine.stats().kv_blocks_free, engine.stats().kv_blocks_total);
}

TEST(EngineTest, PreemptionRecomputesAndKeepsOutputs) {
  const ModelConfig config = MakePresetConfig("ma", EngineShape());
  const ModelWeights weights = RandomWeights(config, 41, 0.1);
  std::vector<std::vector<int>> prompts;
  for (int b = 0; b < 8; ++b)
    prompts.push_back(RandomTokens(10 + 7 * b, config.vocab_size, 400 + static_cast<uint64_t>(b)));
  // Roomy engine: the outputs without preemption.
  std::vector<std::vector<int>> expected;
  {
    Engine engine(config, weights, SmallOptions(int64_t{1} << 24), nullptr);
    std::vector<RequestId> ids;
    for (const auto& prompt : prompts) ids.push_back(engine.Submit(Greedy(prompt, 40)));
    const auto outputs = RunToCompletion(engine);
    for (RequestId id : ids) expected.push_back(outputs.at(id));
  }
  // Tight pool with optimistic admission: requests must be preempted and recomputed.
  EngineOptions options = SmallOptions(0);
  const int64_t block_bytes =
      KvBlockPool::BlockBytes(4, config.num_key_value_heads, config.head_dim, DType::kF32);
  options.kv_memory_bytes = 90 * block_bytes;
  options.admission = EngineOptions::Admission::kOptimistic;
  Engine engine(config, weights, options, nullptr);
  std::vector<RequestId> ids;
  for (const auto& prompt : prompts) ids.push_back(engine.Submit(Greedy(prompt, 40)));
  const auto outputs = RunToCompletion(engine);
  EXPECT_GT(engine.stats().preemptions, 0);
  for (size_t b = 0; b < prompts.size(); ++b)
    EXPECT_EQ(outputs.at(ids[b]), expected[b]) << "request " << b;
  EXPECT_EQ(engine.stats().kv_blocks_free, engine.stats().kv_blocks_total);
}

// Every logits row the engine computes, before and after preemption and recompute, equals the
// reference forward of the tokens that row has seen (each sequence's tokens are rebuilt from the
// batch items: a recomputed request starts a new sequence at position 0), for every preset.
TEST(EngineTest, LogitsMatchTheReferenceThroughPreemption) {
  for (const PresetInfo& preset : Presets()) {
    const ModelConfig config = MakePresetConfig(preset.name, EngineShape());
    const ModelWeights weights = RandomWeights(config, 43, 0.1);
    EngineOptions options = SmallOptions(0);
    const int64_t block_bytes =
        KvBlockPool::BlockBytes(4, config.num_key_value_heads, config.head_dim, DType::kF32);
    // Room for the longest request and half of another: the six must take turns.
    const int64_t longest = KvPlan(config).kv_blocks_per_sequence(12 + 9 * 5 + 24, 4, 16);
    options.kv_memory_bytes = longest * 3 / 2 * block_bytes;
    options.admission = EngineOptions::Admission::kOptimistic;
    Engine engine(config, weights, options, nullptr);
    // Per sequence: its tokens, and the logits rows computed for it with their positions. The
    // reference is causal, so one forward over a sequence's final tokens checks all its rows.
    struct Seen {
      std::vector<int> tokens;
      std::vector<std::pair<int64_t, std::vector<float>>> rows;
    };
    std::map<SequenceId, Seen> seen;
    engine.set_logits_observer(
        [&](std::span<const BatchItem> items, const std::vector<float>& logits) {
          int64_t row = 0;
          for (const BatchItem& item : items) {
            Seen& sequence = seen[item.sequence];
            ASSERT_EQ(static_cast<int64_t>(sequence.tokens.size()), item.start);
            sequence.tokens.insert(sequence.tokens.end(), item.tokens.begin(), item.tokens.end());
            if (!item.want_logits) continue;
            const float* begin = logits.data() + row * config.vocab_size;
            sequence.rows.emplace_back(static_cast<int64_t>(sequence.tokens.size()) - 1,
                                       std::vector<float>(begin, begin + config.vocab_size));
            ++row;
          }
        });
    for (int b = 0; b < 6; ++b) {
      engine.Submit(
          Greedy(RandomTokens(12 + 9 * b, config.vocab_size, 500 + static_cast<uint64_t>(b)), 24));
    }
    RunToCompletion(engine);
    int64_t rows_checked = 0;
    double worst = 0;
    for (const auto& [id, sequence] : seen) {
      const Tensor reference = ReferenceForward(config, weights, sequence.tokens);
      for (const auto& [position, row] : sequence.rows) {
        worst = std::max(worst, RelativeError(row.data(), reference, position, 1));
        ++rows_checked;
      }
    }
    EXPECT_GT(engine.stats().preemptions, 0) << preset.name;
    EXPECT_GT(rows_checked, 6 * 24 - 1) << preset.name;
    EXPECT_LT(worst, 1e-3) << preset.name;
  }
}

// Under a fixed budget, the engine runs exactly as many full-length requests at once as the planner
// says fit (KvPlan::max_sequences_in_blocks with the engine's block size and chunk).
TEST(EngineTest, AdmitsExactlyThePlannersCapacity) {
  for (const PresetInfo& preset : Presets()) {
    const ModelConfig config = MakePresetConfig(preset.name, EngineShape());
    const ModelWeights weights = RandomWeights(config, 51);
    EngineOptions options = SmallOptions(int64_t{1} << 19);
    options.max_running = 1000;
    Engine engine(config, weights, options, nullptr);
    const int64_t prompt = 40, max_tokens = 24;
    const int64_t capacity = engine.runner().plan().max_sequences_in_blocks(
        engine.stats().kv_blocks_total, prompt + max_tokens, options.block_tokens,
        options.prefill_chunk);
    ASSERT_GT(capacity, 1) << preset.name;
    for (int64_t r = 0; r < capacity + 5; ++r) {
      engine.Submit(Greedy(RandomTokens(prompt, config.vocab_size, 500 + static_cast<uint64_t>(r)),
                           max_tokens));
    }
    engine.Step();
    EXPECT_EQ(engine.stats().running, capacity) << preset.name;
    EXPECT_EQ(engine.stats().waiting, 5) << preset.name;
    RunToCompletion(engine);
    EXPECT_EQ(engine.stats().preemptions, 0) << preset.name;
  }
}

TEST(EngineTest, RejectsBadRequests) {
  const ModelConfig config = MakePresetConfig("ma", EngineShape());
  const ModelWeights weights = RandomWeights(config, 61);
  Engine engine(config, weights, SmallOptions(int64_t{1} << 20), nullptr);
  EXPECT_THAT(testing::ErrorMessage([&] { engine.Submit(Greedy({}, 5)); }),
              HasSubstr("prompt is empty"));
  EXPECT_THAT(testing::ErrorMessage([&] {
                engine.Submit(Greedy({1, 99}, 5));
              }),
              HasSubstr("prompt token 99 at position 1 is outside the vocabulary [0, 61)"));
  EXPECT_THAT(testing::ErrorMessage([&] { engine.Submit(Greedy({1}, 0)); }),
              HasSubstr("max_tokens = 0"));
  EXPECT_THAT(testing::ErrorMessage([&] { engine.Submit(Greedy(std::vector<int>(600, 1), 5)); }),
              HasSubstr("the model's context is 512 tokens"));
  GenerationRequest with_stop = Greedy({1, 2}, 5);
  with_stop.stop = {"\n"};
  EXPECT_THAT(testing::ErrorMessage([&] { engine.Submit(with_stop); }),
              HasSubstr("stop strings need a model with a tokenizer"));
  Engine tiny(config, weights, SmallOptions(4 * KvBlockPool::BlockBytes(4, 2, 8, DType::kF32)),
              nullptr);
  EXPECT_THAT(testing::ErrorMessage([&] { tiny.Submit(Greedy(std::vector<int>(100, 1), 5)); }),
              HasSubstr("KV blocks at its full length"));
}

TEST(EngineTest, CancelFreesBlocks) {
  const ModelConfig config = MakePresetConfig("ma", EngineShape());
  const ModelWeights weights = RandomWeights(config, 71);
  Engine engine(config, weights, SmallOptions(int64_t{1} << 22), nullptr);
  const RequestId a = engine.Submit(Greedy(RandomTokens(30, 61, 1), 100));
  const RequestId b = engine.Submit(Greedy(RandomTokens(30, 61, 2), 5));
  engine.Step();
  engine.Step();
  EXPECT_GT(engine.stats().kv_blocks_total - engine.stats().kv_blocks_free, 0);
  engine.Cancel(a);
  bool a_cancelled = false;
  while (!engine.idle()) {
    for (const EngineEvent& event : engine.Step()) {
      if (event.request == a) a_cancelled |= event.finish == FinishReason::kCancelled;
    }
  }
  EXPECT_TRUE(a_cancelled);
  (void)b;
  EXPECT_EQ(engine.stats().kv_blocks_free, engine.stats().kv_blocks_total);
}

}  // namespace
}  // namespace mixattn
