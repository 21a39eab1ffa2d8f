// Long-context evaluation tasks: RULER's task families (Hsieh et al. 2024,
// ../shared/research/ruler.md), written in the phrasing of the synthetic long-range sequences the
// trainer mixes in (train/corpus.h), so a small model trained on that mix is asked questions it
// has learned to answer, at lengths and depths it has or has not been trained on.
//
// Every sample is a prompt of exactly `length` tokens (BOS, haystack, facts, question) and the
// strings a correct continuation contains. A haystack is held-out corpus text (the validation
// split), so no task text was seen in training. The needle depth is where the queried fact sits
// in the haystack: 0 = right after BOS (farthest from the question), 1 = right before the
// question.
//
//   niah_single      one pass key: "The pass key is 58213. Remember it. 58213 is the pass key."
//                    asked as "What is the pass key? The pass key is"               (RULER S-NIAH)
//   niah_multikey    four key/value facts with distinct keys, one asked for          (MK-NIAH)
//   niah_multivalue  one key given four values; all four asked for                   (MV-NIAH)
//   niah_multiquery  four key/value facts; two asked for in one question             (MQ-NIAH)
//   vt               variable tracking: a value assigned to one key, then passed along a chain
//                    "The value of key 'b' is the value of key 'a'."; the chain's last key is
//                    asked for (RULER asks for every name bound to the value; a small model
//                    cannot list names, so ours asks for the value at the end of the chain)
//   cwe              common-words extraction: a numbered list of words where ten words recur
//                    many times and the rest a few times; the ten are asked for      (aggregation)
//   fwe              frequent-words extraction: coded words drawn from a Zipf distribution;
//                    the three most frequent are asked for                            (aggregation)
//   copy             in-context copying: a span of 16 random tokens (drawn uniformly from the
//                    held-out text's ids) at the depth and again at the end of the prompt; no
//                    generation: the score is the fraction of the repeat's last 15 tokens the
//                    model predicts (greedy, teacher-forced) from what precedes them. Nothing
//                    but the first copy predicts them (chance: about 1 / 4000), so the score
//                    measures retrieval by distance on a continuous scale, even for a model
//                    too small to answer the question tasks. Not a RULER task: it is the
//                    induction measure of Olsson et al. 2022 ("In-context learning and
//                    induction heads"), on random tokens, made into a score in [0, 1].
//
// The score of a sample is the fraction of its expected strings found in the output as whole
// words (RULER's string_match_all). cwe and fwe have no needle, so no depth.
//
// Legend: L = prompt length in tokens, N = haystack tokens.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/random.h"
#include "tokenizer/tokenizer.h"

namespace mixattn::eval {

enum class Task {
  kNiahSingle,
  kNiahMultikey,
  kNiahMultivalue,
  kNiahMultiquery,
  kVt,
  kCwe,
  kFwe,
  kCopy
};

// Command-line names, in the order above.
const std::vector<std::string>& TaskNames();
std::string_view TaskName(Task task);
// Throws Error naming the unknown name and listing the known ones.
Task ParseTask(std::string_view name);
// Whether the task plants a needle at a depth (false for cwe, fwe).
bool TaskHasDepth(Task task);

struct Sample {
  Task task = Task::kNiahSingle;
  int64_t length = 0;                // L
  std::optional<double> depth;       // of the queried fact, in [0, 1]; none for cwe / fwe
  std::vector<int> prompt;           // [L]
  std::vector<std::string> answers;  // what a correct output contains, each as a whole word
  int64_t max_tokens = 0;            // enough for a correct answer and its end
  // Tokens between the end of the (first) queried fact and the start of the question.
  int64_t distance = 0;
  // copy: where the repeated span starts in the prompt; its tokens after the first are scored.
  int64_t copy_begin = 0;
};

// Tokens of the span a copy sample repeats.
inline constexpr int64_t kCopySpanTokens = 16;

// Held-out text to hide needles in: a token stream of documents (BOS ... EOS), such as a data
// directory's val.bin, with documents joined by blank lines.
class Haystack {
 public:
  // `stream` holds the ids of the validation split. Throws Error when it holds fewer than
  // `min_tokens` non-control tokens (too little text to evaluate at the asked lengths).
  Haystack(const Tokenizer& tokenizer, std::vector<int> stream, int64_t min_tokens);
  // `count` consecutive text tokens (BOS/EOS removed) starting at a line start chosen by
  // `seed`; wraps around the end of the stream.
  std::vector<int> Take(int64_t count, uint64_t seed) const;
  // `count` ids drawn independently and uniformly from the distinct ids of the text.
  std::vector<int> RandomTokens(int64_t count, Rng& rng) const;
  int64_t size() const { return static_cast<int64_t>(text_.size()); }

 private:
  std::vector<int> text_;
  std::vector<int> distinct_;  // the ids text_ holds, ascending
  std::vector<int64_t> line_starts_;
};

// One sample of `task` with a prompt of exactly `length` tokens and the queried fact at `depth`
// (ignored by cwe / fwe), deterministic for `seed`. Throws Error when `length` cannot hold the
// task's facts and question (the message says how many tokens the task needs at least).
Sample MakeSample(const Tokenizer& tokenizer, const Haystack& haystack, Task task, int64_t length,
                  double depth, uint64_t seed);

// The sample's score in [0, 1]: the fraction of `answers` found in `output` as whole words
// (bounded by characters that are not letters or digits).
double ScoreOutput(std::span<const std::string> answers, std::string_view output);

}  // namespace mixattn::eval
