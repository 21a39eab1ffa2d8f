// Next-token sampling: turns one row of logits into one token id, per request.
//
// Legend: V = vocabulary size, n = candidates still alive at a step, k = top_k, m = tokens kept
// by top-p.
//
// Order of operations (the order of Hugging Face's logits processors and of llama.cpp's default
// sampler chain), each step on the survivors of the one before:
//   1. repetition penalty (CTRL, Keskar et al. 2019, section 4.1, in the sign-aware form of
//      Hugging Face's RepetitionPenaltyLogitsProcessor): for every token already in the prompt or
//      the output, z = z / penalty if z > 0, else z = z * penalty; so penalty > 1 always makes a
//      seen token less likely. NaN logits count as -inf.
//   2. temperature == 0: greedy, the argmax of the penalised logits, ties to the lowest id; the
//      steps below are skipped and no random number is drawn.
//   3. temperature and
//   4. softmax, one pass: p_i = exp((z_i - max z) / T) / sum_j exp((z_j - max z) / T), in double.
//      Subtracting the max before dividing by T means a tiny T underflows the losers to 0 instead
//      of overflowing the winner, so T -> 0 tends to greedy. A +inf logit takes all the mass
//      (shared equally between +inf logits). Tokens whose probability is exactly 0 are dropped.
//   5. top-k (Fan et al. 2018): keep the k most probable.                  O(V + k log k)
//   6. top-p, nucleus (Holtzman et al. 2020): keep the smallest set of most probable tokens whose
//      probability, renormalised over the top-k survivors, sums to >= top_p; at least one.
//      Sorts only the prefix it needs, in chunks of 64, 128, ... (nth_element on the rest).
//                                                                          O(n log m)
//   7. min-p (Nguyen et al. 2024): drop tokens with p < min_p * p_max.    O(n)
//   8. renormalise, and draw with one uniform u in [0, 1) from the request's own Rng: the first
//      candidate whose cumulative probability exceeds u.                  O(n)
// "Most probable" is a strict order (probability descending, then id ascending), so every step
// has one answer and the same seed gives the same tokens with any standard library.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/random.h"

namespace mixattn {

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy
  int top_k = 0;                    // 0 = off
  float top_p = 1.0f;               // 1 = off
  float min_p = 0.0f;               // 0 = off: drop tokens with p < min_p * p_max
  float repetition_penalty = 1.0f;  // 1 = off; see step 1 above
  uint64_t seed = 0;                // seeds the request's Rng
};

// Throws mixattn::Error naming the field, its value and the allowed range, e.g.
// "top_p = 1.5 must be in (0, 1] (1 = off)". NaN is rejected everywhere.
void ValidateSamplingParams(const SamplingParams& params);

// One candidate of the final distribution.
struct TokenProb {
  int token;
  double prob;
};

// Per-request sampling state: its own Rng seeded from params.seed (same seed and same logits give
// the same tokens, whatever else runs in the batch) and the set of tokens seen so far (for the
// repetition penalty). Scratch buffers are sized on the first call and reused, so later calls with
// the same V do not allocate.
class Sampler {
 public:
  // Validates params; prompt token ids must be >= 0.
  Sampler(const SamplingParams& params, std::span<const int> prompt_tokens);

  // Picks the next token from logits[V] (not modified) with steps 1-8, and records it as seen.
  // Throws mixattn::Error if V == 0 or every logit is -inf or NaN.
  int Sample(std::span<const float> logits);

  // Steps 1-7 and the renormalisation of step 8, without the draw: the candidates Sample would
  // draw from, with probabilities summing to 1, in Sample's (deterministic) walk order. Records
  // nothing and draws nothing. The view is valid until the next call on this Sampler.
  std::span<const TokenProb> Distribution(std::span<const float> logits);

  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  Rng rng_;
  std::vector<uint8_t> seen_;          // [max(V, largest prompt id + 1)]: 1 if in prompt or output
  std::vector<float> logits_;          // [V] penalised logits
  std::vector<TokenProb> candidates_;  // [n <= V] survivors of the current step
};

}  // namespace mixattn
