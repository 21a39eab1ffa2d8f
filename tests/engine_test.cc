#include "engine/engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <string>

#include "core/random.h"
#include "engine/model_runner.h"
#include "model/kv_plan.h"
#include "model/presets.h"
#include "model/reference_forward.h"
#include "ops/linear.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

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

// The window here is 12, not kWindow = 8: at W = 8 the chunk sizes 7 and W - 1 coincide, and at 12
// the five chunk sizes 1, 7, W - 1, W and 4W are all different.
TEST(EngineTest, RunnerMatchesReferenceForEveryPresetAndChunkSize) {
  constexpr int kChunkWindow = 12;
  const std::vector<int64_t> chunks = {1, 7, kChunkWindow - 1, kChunkWindow, 4 * kChunkWindow};
  ASSERT_EQ(std::set<int64_t>(chunks.begin(), chunks.end()).size(), chunks.size());
  for (const PresetInfo& preset : Presets()) {
    const ModelConfig config =
        MakePresetConfig(preset.name, testing::TinyShape(8, kChunkWindow, 61, 512));
    const ModelWeights weights = RandomWeights(config, 11, 0.1);
    ModelRunner runner(config, weights, DType::kF32);
    for (int64_t length :
         {kChunkWindow / 2, kChunkWindow, 2 * kChunkWindow + 3, 8 * kChunkWindow}) {
      const std::vector<int> tokens =
          RandomTokens(length, config.vocab_size, 100 + static_cast<uint64_t>(length));
      const Tensor reference = ReferenceForward(config, weights, tokens);
      for (int64_t chunk : chunks) {
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
  for (const PresetInfo& info : Presets()) {
    const std::string& preset = info.name;
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

// Steps the engine once and adds the tokens it reports to `outputs`.
void StepInto(Engine& engine, std::map<RequestId, std::vector<int>>& outputs) {
  for (const EngineEvent& event : engine.Step()) {
    auto& out = outputs[event.request];
    out.insert(out.end(), event.tokens.begin(), event.tokens.end());
  }
}

// Twelve prompts of 3 to 80 tokens.
std::vector<std::vector<int>> WavePrompts(const ModelConfig& config) {
  std::vector<std::vector<int>> prompts;
  for (int b = 0; b < 12; ++b)
    prompts.push_back(RandomTokens(3 + 7 * b, config.vocab_size, 600 + static_cast<uint64_t>(b)));
  return prompts;
}

// Counts, from the batches a logits observer sees, the most decodes one step ran: items of
// sequences whose prompt was already fully prefilled (an earlier item of theirs wanted logits).
struct DecodeCounter {
  std::set<SequenceId> prefilled;
  int64_t most_decodes = 0;

  void operator()(std::span<const BatchItem> items) {
    int64_t decodes = 0;
    for (const BatchItem& item : items) decodes += prefilled.contains(item.sequence);
    for (const BatchItem& item : items) {
      if (item.want_logits) prefilled.insert(item.sequence);
    }
    most_decodes = std::max(most_decodes, decodes);
  }
};

// Submits `prompts` (greedy) in waves of four, three steps apart, so each later wave joins while
// the earlier ones decode, and runs them to the end. Returns each one's tokens, in prompt order.
std::vector<std::vector<int>> RunInWaves(Engine& engine,
                                         const std::vector<std::vector<int>>& prompts,
                                         int64_t max_tokens) {
  std::vector<RequestId> ids;
  std::map<RequestId, std::vector<int>> outputs;
  for (size_t first = 0; first < prompts.size(); first += 4) {
    // Some requests have sampled tokens already: the new ones join while those decode.
    if (first > 0) {
      EXPECT_GT(engine.stats().generated_tokens, 0);
    }
    for (size_t b = first; b < std::min(first + 4, prompts.size()); ++b)
      ids.push_back(engine.Submit(Greedy(prompts[b], max_tokens)));
    for (int step = 0; step < 3; ++step) StepInto(engine, outputs);
  }
  for (int steps = 0; !engine.idle(); ++steps) {
    EXPECT_LT(steps, 10000);
    StepInto(engine, outputs);
  }
  std::vector<std::vector<int>> in_order;
  for (RequestId id : ids) in_order.push_back(outputs[id]);
  return in_order;
}

// Greedy output does not depend on the company a request keeps, for every preset. Alone, a request
// decodes one row per step, through the linear layer's small-batch kernel; in the batch, more than
// ops::Linear::kMaxSmallRows = 8 decodes share a step and go through oneDNN, beside prefill chunks
// of requests that join while others decode. f32 only: see the bf16 test below for why.
TEST(EngineTest, GreedyOutputIsTheSameAloneAndInABatchThatOthersJoin) {
  for (const PresetInfo& preset : Presets()) {
    const ModelConfig config = MakePresetConfig(preset.name, EngineShape());
    const ModelWeights weights = RandomWeights(config, 33, 0.1);
    const EngineOptions options = SmallOptions(int64_t{1} << 24);
    const std::vector<std::vector<int>> prompts = WavePrompts(config);
    constexpr int64_t kMaxTokens = 32;
    std::vector<std::vector<int>> alone;
    for (const auto& prompt : prompts) {
      Engine engine(config, weights, options, nullptr);
      const RequestId id = engine.Submit(Greedy(prompt, kMaxTokens));
      alone.push_back(RunToCompletion(engine)[id]);
      ASSERT_EQ(alone.back().size(), static_cast<size_t>(kMaxTokens)) << preset.name;
    }
    Engine engine(config, weights, options, nullptr);
    DecodeCounter decodes;
    engine.set_logits_observer(
        [&](std::span<const BatchItem> items, const std::vector<float>&) { decodes(items); });
    const auto together = RunInWaves(engine, prompts, kMaxTokens);
    EXPECT_GT(decodes.most_decodes, ops::Linear::kMaxSmallRows) << preset.name;
    for (size_t b = 0; b < prompts.size(); ++b)
      EXPECT_EQ(together[b], alone[b]) << preset.name << " request " << b;
    EXPECT_EQ(engine.stats().kv_blocks_free, engine.stats().kv_blocks_total) << preset.name;
  }
}

// SmallOptions (16 MiB of KV) with the engine's default bf16 weights and KV.
EngineOptions Bf16SmallOptions() {
  EngineOptions options = SmallOptions(int64_t{1} << 24);
  options.weights_dtype = DType::kBF16;
  options.kv_dtype = DType::kBF16;
  return options;
}

// What a logits observer sees, per sequence: its tokens, rebuilt from the batch items in order,
// and each logits row computed for it with the position of the last token it has seen.
struct LogitsRecorder {
  struct Sequence {
    std::vector<int> tokens;
    std::vector<std::pair<int64_t, std::vector<float>>> rows;  // (position, logits [V])
  };

  explicit LogitsRecorder(int64_t vocab_size) : vocab(vocab_size) {}

  void operator()(std::span<const BatchItem> items, const std::vector<float>& logits) {
    int64_t row = 0;
    for (const BatchItem& item : items) {
      Sequence& sequence = sequences[item.sequence];
      ASSERT_EQ(static_cast<int64_t>(sequence.tokens.size()), item.start);
      sequence.tokens.insert(sequence.tokens.end(), item.tokens.begin(), item.tokens.end());
      if (!item.want_logits) continue;
      const float* begin = logits.data() + row * vocab;
      sequence.rows.emplace_back(static_cast<int64_t>(sequence.tokens.size()) - 1,
                                 std::vector<float>(begin, begin + vocab));
      ++row;
    }
  }

  // The one sequence whose tokens begin with `prompt`; null if none or several do.
  const Sequence* Starting(const std::vector<int>& prompt) const {
    const Sequence* found = nullptr;
    for (const auto& [id, sequence] : sequences) {
      if (sequence.tokens.size() < prompt.size() ||
          !std::equal(prompt.begin(), prompt.end(), sequence.tokens.begin()))
        continue;
      if (found != nullptr) return nullptr;
      found = &sequence;
    }
    return found;
  }

  int64_t vocab;
  std::map<SequenceId, Sequence> sequences;
};

// With batch_invariant, the engine's default bf16 weights and KV give every request the same
// logits, bit for bit, alone and in a batch that others join while it decodes, for every preset:
// every matmul row takes the row-invariant kernel (prefill chunks of 16 rows and steps of more
// than 8 decodes included), and the attention kernel computes a query the same way whatever tile
// or chunk it lands in. (Without the option the batched logits differ in the last bits.)
TEST(EngineTest, BatchInvariantBf16LogitsAreTheSameAloneAndInABatchThatOthersJoin) {
  for (const PresetInfo& preset : Presets()) {
    const ModelConfig config = MakePresetConfig(preset.name, EngineShape());
    const ModelWeights weights = RandomWeights(config, 35, 0.1);
    EngineOptions options = Bf16SmallOptions();
    options.batch_invariant = true;
    const std::vector<std::vector<int>> prompts = WavePrompts(config);
    constexpr int64_t kMaxTokens = 32;
    std::vector<LogitsRecorder> alone;  // one engine per prompt
    std::vector<std::vector<int>> alone_tokens;
    for (const auto& prompt : prompts) {
      Engine engine(config, weights, options, nullptr);
      LogitsRecorder& recorder = alone.emplace_back(config.vocab_size);
      engine.set_logits_observer(
          [&](std::span<const BatchItem> items, const std::vector<float>& logits) {
            recorder(items, logits);
          });
      const RequestId id = engine.Submit(Greedy(prompt, kMaxTokens));
      alone_tokens.push_back(RunToCompletion(engine)[id]);
      ASSERT_EQ(alone_tokens.back().size(), static_cast<size_t>(kMaxTokens)) << preset.name;
    }
    Engine engine(config, weights, options, nullptr);
    DecodeCounter decodes;
    LogitsRecorder together(config.vocab_size);
    engine.set_logits_observer(
        [&](std::span<const BatchItem> items, const std::vector<float>& logits) {
          decodes(items);
          together(items, logits);
        });
    const auto together_tokens = RunInWaves(engine, prompts, kMaxTokens);
    EXPECT_GT(decodes.most_decodes, ops::Linear::kMaxSmallRows) << preset.name;
    for (size_t b = 0; b < prompts.size(); ++b) {
      EXPECT_EQ(together_tokens[b], alone_tokens[b]) << preset.name << " request " << b;
      const LogitsRecorder::Sequence* batched = together.Starting(prompts[b]);
      const LogitsRecorder::Sequence* by_itself = alone[b].Starting(prompts[b]);
      ASSERT_NE(batched, nullptr) << preset.name << " request " << b;
      ASSERT_NE(by_itself, nullptr) << preset.name << " request " << b;
      ASSERT_EQ(batched->rows.size(), static_cast<size_t>(kMaxTokens)) << preset.name;
      EXPECT_TRUE(batched->rows == by_itself->rows)
          << preset.name << " request " << b << ": logits differ from the request alone";
    }
  }
}

// The same batches in the engine's default bf16 weights and KV. Greedy tokens alone and in a batch
// need not be equal here: the small-batch kernel and oneDNN add the same f32 products in different
// orders, so a value differs by about an f32 ulp now and then; rounded to bf16 (each Linear's
// input, and K/V as stored) it sometimes lands on the other side of a rounding boundary, a 2^-9
// relative jump that the KV cache carries forward. Measured on characterai: logits alone and
// batched equal to 0-2e-7 for 12 steps, then 4e-4, then 4e-3 to 1.2e-2 at every later step; one
// step's top two logits alone were 4.4e-3 apart and swapped. So here every logits row the batched
// engine computes is checked against the f32 reference forward at bf16's tolerance instead
// (EngineOptions::batch_invariant makes them equal; tested above).
TEST(EngineTest, Bf16BatchThatOthersJoinStaysCloseToReference) {
  for (const PresetInfo& preset : Presets()) {
    const ModelConfig config = MakePresetConfig(preset.name, EngineShape());
    const ModelWeights weights = RandomWeights(config, 33, 0.1);
    Engine engine(config, weights, Bf16SmallOptions(), nullptr);
    LogitsRecorder seen(config.vocab_size);
    DecodeCounter decodes;
    engine.set_logits_observer(
        [&](std::span<const BatchItem> items, const std::vector<float>& logits) {
          decodes(items);
          seen(items, logits);
        });
    const auto outputs = RunInWaves(engine, WavePrompts(config), 32);
    EXPECT_GT(decodes.most_decodes, ops::Linear::kMaxSmallRows) << preset.name;
    for (const auto& output : outputs) EXPECT_EQ(output.size(), 32u) << preset.name;
    ASSERT_EQ(seen.sequences.size(), 12u) << preset.name;
    double worst = 0;
    for (const auto& [id, sequence] : seen.sequences) {
      EXPECT_EQ(sequence.rows.size(), 32u) << preset.name;
      const Tensor reference = ReferenceForward(config, weights, sequence.tokens);
      for (const auto& [position, row] : sequence.rows)
        worst = std::max(worst, RelativeError(row.data(), reference, position, 1));
    }
    // As RunnerBf16StaysCloseToReference: a few percent of the logits' range at most.
    EXPECT_LE(worst, 5e-2) << preset.name;
    EXPECT_EQ(engine.stats().kv_blocks_free, engine.stats().kv_blocks_total) << preset.name;
  }
}

// While a long prompt is prefilled chunk by chunk, a request that is already decoding gets its
// next token in the same steps: decodes are not held back by prefill, and prefill does not wait
// for decodes to finish.
TEST(EngineTest, ChunkedPrefillRunsAlongsideDecodes) {
  const ModelConfig config = MakePresetConfig("ma-pairs", EngineShape());
  const ModelWeights weights = RandomWeights(config, 35, 0.1);
  const EngineOptions options = SmallOptions(int64_t{1} << 24);  // prefill chunk 16
  const std::vector<int> short_prompt = RandomTokens(5, config.vocab_size, 700);
  const std::vector<int> long_prompt = RandomTokens(100, config.vocab_size, 701);
  std::vector<int> short_alone, long_alone;
  for (const auto* prompt : {&short_prompt, &long_prompt}) {
    Engine engine(config, weights, options, nullptr);
    const RequestId id = engine.Submit(Greedy(*prompt, 20));
    (prompt == &short_prompt ? short_alone : long_alone) = RunToCompletion(engine)[id];
  }

  Engine engine(config, weights, options, nullptr);
  struct Item {
    SequenceId sequence;
    int64_t start, size;
    bool want_logits;
  };
  std::vector<std::vector<Item>> steps;
  engine.set_logits_observer([&](std::span<const BatchItem> items, const std::vector<float>&) {
    std::vector<Item>& step = steps.emplace_back();
    for (const BatchItem& item : items) {
      step.push_back(
          {item.sequence, item.start, static_cast<int64_t>(item.tokens.size()), item.want_logits});
    }
  });
  std::map<RequestId, std::vector<int>> outputs;
  const RequestId short_id = engine.Submit(Greedy(short_prompt, 20));
  StepInto(engine, outputs);  // the whole short prompt, and its first token
  ASSERT_EQ(outputs[short_id].size(), 1u);
  ASSERT_EQ(steps.size(), 1u);
  ASSERT_EQ(steps[0].size(), 1u);
  const SequenceId short_sequence = steps[0][0].sequence;
  const RequestId long_id = engine.Submit(Greedy(long_prompt, 20));

  // Each step while the long prompt is prefilled: one 16-token chunk (4 at the end) of it, and the
  // short request's next token at the position after its previous one.
  int64_t prefilled = 0;
  while (prefilled < static_cast<int64_t>(long_prompt.size())) {
    ASSERT_LT(steps.size(), 20u);
    const size_t before = outputs[short_id].size();
    StepInto(engine, outputs);
    const std::vector<Item>& step = steps.back();
    ASSERT_EQ(step.size(), 2u) << "step " << steps.size();
    const Item& decode = step[0];
    const Item& chunk = step[1];
    EXPECT_EQ(decode.sequence, short_sequence);
    EXPECT_EQ(decode.size, 1);
    EXPECT_EQ(decode.start, static_cast<int64_t>(short_prompt.size() + before - 1));
    EXPECT_TRUE(decode.want_logits);
    EXPECT_NE(chunk.sequence, short_sequence);
    EXPECT_EQ(chunk.start, prefilled);
    EXPECT_EQ(chunk.size,
              std::min<int64_t>(16, static_cast<int64_t>(long_prompt.size()) - prefilled));
    EXPECT_EQ(chunk.want_logits,
              chunk.start + chunk.size == static_cast<int64_t>(long_prompt.size()));
    EXPECT_EQ(outputs[short_id].size(), before + 1) << "the decoding request got no token";
    prefilled += chunk.size;
  }
  EXPECT_EQ(steps.size(), 1u + 7u);  // 100 = 6 * 16 + 4
  EXPECT_EQ(outputs[long_id].size(), 1u);
  while (!engine.idle()) StepInto(engine, outputs);
  EXPECT_EQ(outputs[short_id], short_alone);
  EXPECT_EQ(outputs[long_id], long_alone);
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

// Optimistic admission counts the first chunks of the requests it admits in one step together: it
// admits as many as fit at once, and none is admitted only to be preempted in the same step.
TEST(EngineTest, OptimisticAdmissionAdmitsOnlyFirstChunksThatFitTogether) {
  const ModelConfig config = MakePresetConfig("ma", EngineShape());
  const ModelWeights weights = RandomWeights(config, 43, 0.1);
  EngineOptions options = SmallOptions(0);
  const KvPlan plan(config);
  KvBlockPool sizing_pool(1, options.block_tokens, config.num_key_value_heads, config.head_dim,
                          options.kv_dtype);
  const KvCache sizing(plan, sizing_pool);
  const int64_t prompt = options.prefill_chunk;  // one chunk each
  const int64_t need = sizing.BlocksToReserve(prompt, options.prefill_chunk);
  ASSERT_GT(need, 1);
  options.kv_memory_bytes = (3 * need + need - 1) * sizing_pool.block_bytes();  // room for 3
  options.admission = EngineOptions::Admission::kOptimistic;
  Engine engine(config, weights, options, nullptr);
  for (int r = 0; r < 6; ++r)
    engine.Submit(
        Greedy(RandomTokens(prompt, config.vocab_size, 450 + static_cast<uint64_t>(r)), 1));
  engine.Step();
  EXPECT_EQ(engine.stats().preemptions, 0);
  EXPECT_EQ(engine.stats().generated_tokens, 3) << "three prompts prefilled, one token each";
  RunToCompletion(engine);
  EXPECT_EQ(engine.stats().generated_tokens, 6);
  EXPECT_EQ(engine.stats().preemptions, 0);
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
    // The reference is causal, so one forward over a sequence's final tokens checks all its rows.
    LogitsRecorder seen(config.vocab_size);
    engine.set_logits_observer([&](std::span<const BatchItem> items,
                                   const std::vector<float>& logits) { seen(items, logits); });
    for (int b = 0; b < 6; ++b) {
      engine.Submit(
          Greedy(RandomTokens(12 + 9 * b, config.vocab_size, 500 + static_cast<uint64_t>(b)), 24));
    }
    RunToCompletion(engine);
    int64_t rows_checked = 0;
    double worst = 0;
    for (const auto& [id, sequence] : seen.sequences) {
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

struct Completion {
  std::vector<int> tokens;
  std::string text;  // the events' text, joined
  FinishReason finish = FinishReason::kNone;
};

// Runs `request` alone to its end on `engine`.
Completion Complete(Engine& engine, const GenerationRequest& request) {
  const RequestId id = engine.Submit(request);
  Completion out;
  for (int steps = 0; !engine.idle(); ++steps) {
    EXPECT_LT(steps, 100000);
    for (const EngineEvent& event : engine.Step()) {
      EXPECT_EQ(event.request, id);
      EXPECT_EQ(out.finish, FinishReason::kNone) << "an event after the finish";
      out.tokens.insert(out.tokens.end(), event.tokens.begin(), event.tokens.end());
      out.text += event.text;
      out.finish = event.finish;
    }
  }
  return out;
}

// A stop string taken from the text the model writes without it: with it, the output ends just
// before its first occurrence, at the token that completed it, and finishes as "stop". And
// max_tokens = n gives exactly n tokens, the first n of the longer run, finishing as "length".
TEST(EngineTest, StopStringCutsTheTextAndMaxTokensBoundsTheLength) {
  const Tokenizer tokenizer =
      Tokenizer::Load(std::string(MIXATTN_SOURCE_DIR) + "/models/default/tokenizer.model");
  const ModelConfig config =
      MakePresetConfig("ma-pairs", testing::TinyShape(8, kWindow, tokenizer.vocab_size(), 512));
  const ModelWeights weights = RandomWeights(config, 81);
  Engine engine(config, weights, SmallOptions(int64_t{1} << 24), &tokenizer);
  GenerationRequest base;
  base.prompt = tokenizer.Encode("And it came to pass");
  base.sampling.seed = 7;  // temperature 1: a varied text, the same on every run
  base.max_tokens = 80;
  base.stop_at_eos = false;
  const Completion full = Complete(engine, base);
  ASSERT_EQ(full.tokens.size(), 80u);
  EXPECT_EQ(full.finish, FinishReason::kLength);
  ASSERT_EQ(full.text, tokenizer.Decode(full.tokens));

  // Six bytes starting where the 40th token's text starts (so spanning tokens).
  const auto prefix = [&](size_t n) {
    return std::vector<int>(full.tokens.begin(), full.tokens.begin() + static_cast<ptrdiff_t>(n));
  };
  const std::string before = tokenizer.Decode(prefix(40));
  ASSERT_TRUE(full.text.starts_with(before));
  ASSERT_LE(before.size() + 6, full.text.size());
  const std::string stop = full.text.substr(before.size(), 6);
  for (unsigned char c : stop) ASSERT_LT(c, 0x80) << "pick ASCII: '" << stop << "'";
  const size_t cut = full.text.find(stop);  // may be before the 40th token
  size_t completing = 1;                    // tokens until the text first contains the stop string
  while (tokenizer.Decode(prefix(completing)).find(stop) == std::string::npos) ++completing;
  ASSERT_LE(completing, 46u);
  ASSERT_GT(cut, 0u);  // some text comes before the stop string

  GenerationRequest with_stop = base;
  const std::string never = "QQQQQQQQQQ";
  ASSERT_EQ(full.text.find(never), std::string::npos);
  with_stop.stop = {never, stop};
  const Completion stopped = Complete(engine, with_stop);
  EXPECT_EQ(stopped.finish, FinishReason::kStop) << "stop '" << stop << "'";
  EXPECT_EQ(stopped.text, full.text.substr(0, cut)) << "stop '" << stop << "'";
  EXPECT_EQ(stopped.tokens, prefix(completing)) << "stop '" << stop << "'";
  EXPECT_EQ(std::string(FinishReasonName(stopped.finish)), "stop");

  for (int64_t max_tokens : {1, 9, 33}) {
    GenerationRequest bounded = base;
    bounded.max_tokens = max_tokens;
    const Completion out = Complete(engine, bounded);
    EXPECT_EQ(out.tokens, prefix(static_cast<size_t>(max_tokens))) << "max_tokens " << max_tokens;
    EXPECT_EQ(out.text, tokenizer.Decode(out.tokens)) << "max_tokens " << max_tokens;
    EXPECT_EQ(out.finish, FinishReason::kLength) << "max_tokens " << max_tokens;
  }
  EXPECT_EQ(engine.stats().kv_blocks_free, engine.stats().kv_blocks_total);
}

}  // namespace
}  // namespace mixattn
