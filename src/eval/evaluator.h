// Running the evaluation: task samples through the engine (continuous batching, greedy decoding),
// perplexity through the engine's model runner over the paged KV cache, and the statistics
// (accuracy with a 95% interval per task x length and per task x length x depth).
//
// Legend: L = context length in tokens, V = vocab size.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "eval/tasks.h"
#include "model/config.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace mixattn::eval {

// A 95% interval for the mean of scores in [0, 1].
struct Interval {
  double low = 0, high = 0;
};
// Wilson's score interval for a mean score `mean` over n samples. Exact coverage for 0/1 scores;
// for fractional scores in [0, 1] it is conservative, since their variance is at most
// mean * (1 - mean). n >= 1.
Interval WilsonInterval(double mean, int64_t n);

struct SampleOutcome {
  std::string output;  // the generated text
  double score = 0;    // ScoreOutput(sample.answers, output)
  // copy only: mean negative log-likelihood of the repeated tokens (after the first), nats. A
  // continuous measure of copying: ln V for a model that copies nothing and knows nothing of
  // the span, towards 0 for one that copies surely.
  std::optional<double> nll;
};

// Progress of a long run: (done, total).
using Progress = std::function<void(int64_t done, int64_t total)>;

// Runs every sample through one engine with greedy decoding, stopping at a newline, the end of
// sequence or the sample's max_tokens; returns the outcomes in sample order. The engine options
// decide memory and batching; requests are admitted as memory allows. copy samples generate
// nothing: their prompts run teacher-forced through the model runner, the output is the greedy
// prediction of each repeated token, the score the fraction predicted right and nll their mean
// negative log-likelihood.
std::vector<SampleOutcome> RunSamples(const ModelConfig& config, const ModelWeights& weights,
                                      const Tokenizer& tokenizer, std::span<const Sample> samples,
                                      const EngineOptions& engine_options,
                                      const Progress& progress = {});

struct PerplexityResult {
  int64_t length = 0;     // L: tokens of context per window, each predicting the next one
  int64_t windows = 0;    // evenly spaced over the stream (they overlap when it is short)
  int64_t tokens = 0;     // predictions scored: windows x L
  double nll = 0;         // mean negative log-likelihood per token, nats
  Interval nll_interval;  // 95%, across windows (their mean NLLs; normal approximation)
  double perplexity() const;
};

// Perplexity of `stream` (a validation shard's ids) at context length L: `windows` windows of
// L + 1 tokens, starting at evenly spaced positions; each token of a window is predicted from the
// tokens before it inside the window. Windows run in batches through ModelRunner::Forward in
// chunks, as the engine's prefill would, over a paged KV cache. Throws Error when the stream
// holds fewer than L + 1 tokens or windows < 1.
PerplexityResult Perplexity(const ModelConfig& config, const ModelWeights& weights,
                            std::span<const int> stream, int64_t length, int64_t windows,
                            const EngineOptions& engine_options, const Progress& progress = {});

// Accuracy of one task at one length, over all depths (depth empty) or at one depth.
struct TaskScore {
  Task task = Task::kNiahSingle;
  int64_t length = 0;
  std::optional<double> depth;
  int64_t samples = 0;
  double accuracy = 0;  // mean score
  Interval interval;
  double mean_distance = 0;  // tokens between the queried fact and the question
  // copy only: the mean of the samples' nll and its 95% interval (normal approximation).
  std::optional<double> nll;
  Interval nll_interval;
};

// Means by (task, length) and by (task, length, depth), in the order of first appearance.
std::vector<TaskScore> Summarize(std::span<const Sample> samples,
                                 std::span<const SampleOutcome> outcomes, bool by_depth);

}  // namespace mixattn::eval
