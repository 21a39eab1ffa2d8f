#include "eval/evaluator.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <tuple>
#include <unordered_map>

#include "core/error.h"
#include "engine/model_runner.h"
#include "kv/block_pool.h"
#include "kv/kv_cache.h"

namespace mixattn::eval {
namespace {

constexpr double kZ95 = 1.959963984540054;

// log(sum(exp(row))) - row[target], in double.
double TokenNll(const float* row, int64_t vocab, int target) {
  double top = row[0];
  for (int64_t i = 1; i < vocab; ++i) top = std::max(top, static_cast<double>(row[i]));
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(row[i]) - top);
  return top + std::log(sum) - static_cast<double>(row[target]);
}

struct MeanInterval {
  double mean = 0;
  Interval interval;  // 95%, normal approximation; zero width for one value
};
MeanInterval NormalMeanInterval(std::span<const double> values) {
  MIXATTN_CHECK(!values.empty());
  const auto n = static_cast<double>(values.size());
  double sum = 0, square = 0;
  for (double v : values) {
    sum += v;
    square += v * v;
  }
  const double mean = sum / n;
  const double variance = n > 1 ? std::max(0.0, (square - sum * mean) / (n - 1)) : 0.0;
  const double half = kZ95 * std::sqrt(variance / n);
  return {mean, {mean - half, mean + half}};
}

}  // namespace

Interval WilsonInterval(double mean, int64_t n) {
  MIXATTN_CHECK(n >= 1);
  const double z2n = kZ95 * kZ95 / static_cast<double>(n);
  const double center = (mean + z2n / 2) / (1 + z2n);
  const double half =
      kZ95 *
      std::sqrt(mean * (1 - mean) / static_cast<double>(n) + z2n / (4 * static_cast<double>(n))) /
      (1 + z2n);
  return {std::max(0.0, center - half), std::min(1.0, center + half)};
}

double PerplexityResult::perplexity() const { return std::exp(nll); }

namespace {

// Teacher forcing: runs `count` token sequences of `length` tokens each (sequence_of(i)) through
// the model runner in groups, in chunks as the engine's prefill would, over a paged KV cache;
// visit(i, t, logits) sees the logits [V] at every position t of sequence i (they predict token
// t + 1).
void ForEachLogitsRow(const ModelConfig& config, const ModelWeights& weights,
                      const EngineOptions& engine_options, int64_t count, int64_t length,
                      const std::function<std::span<const int>(int64_t)>& sequence_of,
                      const std::function<void(int64_t, int64_t, const float*)>& visit,
                      const Progress& progress) {
  ModelRunner runner(config, weights, engine_options.weights_dtype);
  const int64_t chunk = std::max<int64_t>(1, engine_options.prefill_chunk);
  // Sequences per Forward: enough rows to fill a step's token budget.
  const int64_t group =
      std::clamp<int64_t>(engine_options.max_batch_tokens / std::min(chunk, length), 1, count);
  KvBlockPool pool(1, engine_options.block_tokens, config.num_key_value_heads, config.head_dim,
                   engine_options.kv_dtype);
  const int64_t blocks_per_sequence = [&] {
    KvCache probe(runner.plan(), pool);
    return probe.BlocksToReserve(length, chunk);
  }();
  KvBlockPool group_pool(blocks_per_sequence * group, engine_options.block_tokens,
                         config.num_key_value_heads, config.head_dim, engine_options.kv_dtype);
  KvCache cache(runner.plan(), group_pool);
  const int64_t vocab = config.vocab_size;
  for (int64_t first = 0; first < count; first += group) {
    const int64_t members = std::min(group, count - first);
    std::vector<std::span<const int>> tokens;
    std::vector<SequenceId> sequences;
    for (int64_t i = first; i < first + members; ++i) {
      tokens.push_back(sequence_of(i));
      MIXATTN_CHECK(static_cast<int64_t>(tokens.back().size()) == length);
      sequences.push_back(cache.AddSequence());
    }
    for (int64_t at = 0; at < length; at += chunk) {
      const int64_t size = std::min(chunk, length - at);
      std::vector<BatchItem> items;
      for (int64_t j = 0; j < members; ++j) {
        MIXATTN_CHECK(cache.Append(sequences[static_cast<size_t>(j)], size));
        BatchItem item;
        item.sequence = sequences[static_cast<size_t>(j)];
        item.tokens = tokens[static_cast<size_t>(j)].subspan(static_cast<size_t>(at),
                                                             static_cast<size_t>(size));
        item.start = at;
        item.want_all_logits = true;
        items.push_back(item);
      }
      const std::vector<float>& logits = runner.Forward(items, cache);
      for (int64_t j = 0; j < members; ++j) {
        for (int64_t t = 0; t < size; ++t)
          visit(first + j, at + t, logits.data() + (j * size + t) * vocab);
      }
    }
    for (SequenceId sequence : sequences) cache.Release(sequence);
    if (progress) progress(first + members, count);
  }
}

int64_t Argmax(const float* row, int64_t vocab) { return std::max_element(row, row + vocab) - row; }

}  // namespace

std::vector<SampleOutcome> RunSamples(const ModelConfig& config, const ModelWeights& weights,
                                      const Tokenizer& tokenizer, std::span<const Sample> samples,
                                      const EngineOptions& engine_options,
                                      const Progress& progress) {
  std::vector<SampleOutcome> outcomes(samples.size());
  const auto total = static_cast<int64_t>(samples.size());
  int64_t done = 0;
  if (progress) progress(0, total);

  // copy samples: teacher-forced, grouped by length.
  std::map<int64_t, std::vector<size_t>> copies;
  for (size_t i = 0; i < samples.size(); ++i) {
    if (samples[i].task == Task::kCopy) copies[samples[i].length].push_back(i);
  }
  for (const auto& entry : copies) {
    // Named copies, not structured bindings: clang (the fuzz build) cannot capture those.
    const int64_t length = entry.first;
    const std::vector<size_t>& indices = entry.second;
    std::vector<std::vector<int>> predicted(indices.size());
    std::vector<double> nll(indices.size(), 0.0);
    const int64_t done_before = done;
    ForEachLogitsRow(
        config, weights, engine_options, static_cast<int64_t>(indices.size()), length,
        [&](int64_t j) {
          return std::span<const int>(samples[indices[static_cast<size_t>(j)]].prompt);
        },
        [&](int64_t j, int64_t t, const float* logits) {
          const Sample& sample = samples[indices[static_cast<size_t>(j)]];
          if (t >= sample.copy_begin && t + 1 < length) {
            predicted[static_cast<size_t>(j)].push_back(
                static_cast<int>(Argmax(logits, config.vocab_size)));
            nll[static_cast<size_t>(j)] +=
                TokenNll(logits, config.vocab_size, sample.prompt[static_cast<size_t>(t + 1)]);
          }
        },
        [&](int64_t finished, int64_t) {
          done = done_before + finished;
          if (progress) progress(done, total);
        });
    for (size_t j = 0; j < indices.size(); ++j) {
      const Sample& sample = samples[indices[j]];
      const std::span<const int> expected =
          std::span<const int>(sample.prompt).subspan(static_cast<size_t>(sample.copy_begin + 1));
      MIXATTN_CHECK(predicted[j].size() == expected.size());
      int64_t correct = 0;
      for (size_t k = 0; k < expected.size(); ++k) correct += predicted[j][k] == expected[k];
      outcomes[indices[j]].output = tokenizer.Decode(predicted[j]);
      outcomes[indices[j]].score =
          static_cast<double>(correct) / static_cast<double>(expected.size());
      outcomes[indices[j]].nll = nll[j] / static_cast<double>(expected.size());
    }
  }

  // Every other task: greedy generation through the engine.
  Engine engine(config, weights, engine_options, &tokenizer);
  std::unordered_map<RequestId, size_t> index_of;
  for (size_t i = 0; i < samples.size(); ++i) {
    if (samples[i].task == Task::kCopy) continue;
    GenerationRequest request;
    request.prompt = samples[i].prompt;
    request.sampling.temperature = 0;
    request.max_tokens = samples[i].max_tokens;
    request.stop = {"\n"};
    index_of[engine.Submit(std::move(request))] = i;
  }
  while (!engine.idle()) {
    for (const EngineEvent& event : engine.Step()) {
      const size_t i = index_of.at(event.request);
      outcomes[i].output += event.text;
      if (event.finish != FinishReason::kNone) {
        outcomes[i].score = ScoreOutput(samples[i].answers, outcomes[i].output);
        ++done;
        if (progress) progress(done, total);
      }
    }
  }
  return outcomes;
}

PerplexityResult Perplexity(const ModelConfig& config, const ModelWeights& weights,
                            std::span<const int> stream, int64_t length, int64_t windows,
                            const EngineOptions& engine_options, const Progress& progress) {
  const int64_t n = static_cast<int64_t>(stream.size());
  if (windows < 1) Fail("perplexity needs at least one window, got ", windows);
  if (length < 1) Fail("perplexity context length must be at least 1, got ", length);
  if (n < length + 1) {
    Fail("perplexity at length ", length, " needs ", length + 1,
         " held-out tokens, but the validation split has ", n);
  }
  if (length > config.max_position_embeddings) {
    Fail("perplexity at length ", length, " exceeds the model's context of ",
         config.max_position_embeddings, " tokens");
  }
  // Window w: stream[start_w, start_w + L] at evenly spaced starts; the last token is a target.
  const auto start_of = [&](int64_t w) {
    return windows == 1 ? 0 : w * (n - length - 1) / (windows - 1);
  };
  std::vector<double> window_nll(static_cast<size_t>(windows), 0.0);
  ForEachLogitsRow(
      config, weights, engine_options, windows, length,
      [&](int64_t w) {
        return stream.subspan(static_cast<size_t>(start_of(w)), static_cast<size_t>(length));
      },
      [&](int64_t w, int64_t t, const float* logits) {
        const int target = stream[static_cast<size_t>(start_of(w) + t + 1)];
        window_nll[static_cast<size_t>(w)] += TokenNll(logits, config.vocab_size, target);
      },
      progress);

  PerplexityResult result;
  result.length = length;
  result.windows = windows;
  result.tokens = windows * length;
  for (double& total : window_nll) total /= static_cast<double>(length);
  const MeanInterval mean = NormalMeanInterval(window_nll);
  result.nll = mean.mean;
  result.nll_interval = mean.interval;
  return result;
}

std::vector<TaskScore> Summarize(std::span<const Sample> samples,
                                 std::span<const SampleOutcome> outcomes, bool by_depth) {
  MIXATTN_CHECK(samples.size() == outcomes.size());
  using Key = std::tuple<Task, int64_t, std::optional<double>>;
  std::vector<Key> order;
  std::map<Key, std::vector<size_t>> members;
  for (size_t i = 0; i < samples.size(); ++i) {
    const Key key{samples[i].task, samples[i].length, by_depth ? samples[i].depth : std::nullopt};
    auto [it, added] = members.try_emplace(key);
    if (added) order.push_back(key);
    it->second.push_back(i);
  }
  std::vector<TaskScore> scores;
  for (const Key& key : order) {
    const std::vector<size_t>& indices = members.at(key);
    TaskScore score;
    std::tie(score.task, score.length, score.depth) = key;
    score.samples = static_cast<int64_t>(indices.size());
    double total = 0, distance = 0;
    std::vector<double> nll;
    for (size_t i : indices) {
      total += outcomes[i].score;
      distance += static_cast<double>(samples[i].distance);
      if (outcomes[i].nll) nll.push_back(*outcomes[i].nll);
    }
    score.accuracy = total / static_cast<double>(score.samples);
    score.mean_distance = distance / static_cast<double>(score.samples);
    score.interval = WilsonInterval(score.accuracy, score.samples);
    if (!nll.empty()) {
      const MeanInterval mean = NormalMeanInterval(nll);
      score.nll = mean.mean;
      score.nll_interval = mean.interval;
    }
    scores.push_back(score);
  }
  return scores;
}

}  // namespace mixattn::eval
