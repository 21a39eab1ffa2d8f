#include "eval/evaluator.h"

#include <algorithm>
#include <cmath>
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

std::vector<SampleOutcome> RunSamples(const ModelConfig& config, const ModelWeights& weights,
                                      const Tokenizer& tokenizer, std::span<const Sample> samples,
                                      const EngineOptions& engine_options,
                                      const Progress& progress) {
  Engine engine(config, weights, engine_options, &tokenizer);
  std::unordered_map<RequestId, size_t> index_of;
  for (size_t i = 0; i < samples.size(); ++i) {
    GenerationRequest request;
    request.prompt = samples[i].prompt;
    request.sampling.temperature = 0;
    request.max_tokens = samples[i].max_tokens;
    request.stop = {"\n"};
    index_of[engine.Submit(std::move(request))] = i;
  }
  std::vector<SampleOutcome> outcomes(samples.size());
  int64_t done = 0;
  if (progress) progress(0, static_cast<int64_t>(samples.size()));
  while (!engine.idle()) {
    for (const EngineEvent& event : engine.Step()) {
      SampleOutcome& outcome = outcomes[index_of.at(event.request)];
      outcome.output += event.text;
      if (event.finish != FinishReason::kNone) {
        ++done;
        if (progress) progress(done, static_cast<int64_t>(samples.size()));
      }
    }
  }
  for (size_t i = 0; i < samples.size(); ++i)
    outcomes[i].score = ScoreOutput(samples[i].answers, outcomes[i].output);
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
  ModelRunner runner(config, weights, engine_options.weights_dtype);
  const int64_t chunk = std::max<int64_t>(1, engine_options.prefill_chunk);
  // Windows per Forward: enough rows to fill a step's token budget.
  const int64_t group =
      std::clamp<int64_t>(engine_options.max_batch_tokens / std::min(chunk, length), 1, windows);
  KvBlockPool pool(1, engine_options.block_tokens, config.num_key_value_heads, config.head_dim,
                   engine_options.kv_dtype);
  const int64_t blocks_per_window = [&] {
    KvCache probe(runner.plan(), pool);
    return probe.BlocksToReserve(length, chunk);
  }();
  KvBlockPool window_pool(blocks_per_window * group, engine_options.block_tokens,
                          config.num_key_value_heads, config.head_dim, engine_options.kv_dtype);
  KvCache cache(runner.plan(), window_pool);

  const int64_t vocab = config.vocab_size;
  std::vector<double> window_nll(static_cast<size_t>(windows), 0.0);
  for (int64_t first = 0; first < windows; first += group) {
    const int64_t count = std::min(group, windows - first);
    std::vector<int64_t> starts;
    std::vector<SequenceId> sequences;
    for (int64_t w = first; w < first + count; ++w) {
      starts.push_back(windows == 1 ? 0 : w * (n - length - 1) / (windows - 1));
      sequences.push_back(cache.AddSequence());
    }
    for (int64_t at = 0; at < length; at += chunk) {
      const int64_t size = std::min(chunk, length - at);
      std::vector<BatchItem> items;
      for (int64_t j = 0; j < count; ++j) {
        MIXATTN_CHECK(cache.Append(sequences[static_cast<size_t>(j)], size));
        BatchItem item;
        item.sequence = sequences[static_cast<size_t>(j)];
        item.tokens = stream.subspan(static_cast<size_t>(starts[static_cast<size_t>(j)] + at),
                                     static_cast<size_t>(size));
        item.start = at;
        item.want_all_logits = true;
        items.push_back(item);
      }
      const std::vector<float>& logits = runner.Forward(items, cache);
      for (int64_t j = 0; j < count; ++j) {
        double sum = 0;
        for (int64_t t = 0; t < size; ++t) {
          const int target =
              stream[static_cast<size_t>(starts[static_cast<size_t>(j)] + at + t + 1)];
          sum += TokenNll(logits.data() + (j * size + t) * vocab, vocab, target);
        }
        window_nll[static_cast<size_t>(first + j)] += sum;
      }
    }
    for (SequenceId sequence : sequences) cache.Release(sequence);
    if (progress) progress(first + count, windows);
  }

  PerplexityResult result;
  result.length = length;
  result.windows = windows;
  result.tokens = windows * length;
  double sum = 0, square = 0;
  for (double& total : window_nll) {
    total /= static_cast<double>(length);
    sum += total;
    square += total * total;
  }
  result.nll = sum / static_cast<double>(windows);
  const double variance =
      windows > 1 ? std::max(0.0, (square - sum * result.nll) / static_cast<double>(windows - 1))
                  : 0.0;
  const double half = kZ95 * std::sqrt(variance / static_cast<double>(windows));
  result.nll_interval = {result.nll - half, result.nll + half};
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
    for (size_t i : indices) {
      total += outcomes[i].score;
      distance += static_cast<double>(samples[i].distance);
    }
    score.accuracy = total / static_cast<double>(score.samples);
    score.mean_distance = distance / static_cast<double>(score.samples);
    score.interval = WilsonInterval(score.accuracy, score.samples);
    scores.push_back(score);
  }
  return scores;
}

}  // namespace mixattn::eval
