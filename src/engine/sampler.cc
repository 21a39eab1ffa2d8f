#include "engine/sampler.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstddef>
#include <limits>

#include "core/error.h"

namespace mixattn {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The strict "most probable first" order of the header: probability descending, then id.
bool MoreProbable(const TokenProb& a, const TokenProb& b) {
  return a.prob > b.prob || (a.prob == b.prob && a.token < b.token);
}

// Step 5: keeps the k most probable of c, sorted. nth_element is O(n), the sort O(k log k).
void KeepTopK(std::vector<TokenProb>& c, size_t k) {
  std::nth_element(c.begin(), c.begin() + k, c.end(), MoreProbable);
  c.resize(k);
  std::sort(c.begin(), c.end(), MoreProbable);
}

// Step 6: keeps the shortest most-probable prefix whose mass is >= top_p of c's mass (the same
// as >= top_p after renormalising c), at least one token. If c is not yet sorted, it is sorted
// only as far as needed: chunks of 64, 128, 256, ... each picked from the rest by nth_element
// (O(n)) and then sorted, so keeping m tokens costs O(n log m + m log m) rather than O(n log n).
// Leaves the kept prefix sorted.
void KeepTopP(std::vector<TokenProb>& c, double top_p, bool sorted) {
  double mass = 0.0;
  for (const TokenProb& t : c) mass += t.prob;
  const double target = top_p * mass;
  double cumulative = 0.0;
  size_t begin = 0;
  size_t chunk = 64;
  while (begin < c.size()) {
    const size_t end = std::min(c.size(), begin + chunk);
    if (!sorted) {
      if (end < c.size()) {
        std::nth_element(c.begin() + begin, c.begin() + end, c.end(), MoreProbable);
      }
      std::sort(c.begin() + begin, c.begin() + end, MoreProbable);
    }
    for (size_t i = begin; i < end; ++i) {
      cumulative += c[i].prob;
      if (cumulative >= target) {
        c.resize(i + 1);
        return;
      }
    }
    begin = end;
    chunk *= 2;
  }
  // Rounding left the total a hair under target: everything is kept (and is now sorted).
}

}  // namespace

void ValidateSamplingParams(const SamplingParams& params) {
  // Written as !(in range) so that NaN, which fails every comparison, is rejected too.
  if (!(params.temperature >= 0.0f) || std::isinf(params.temperature)) {
    Fail("temperature = ", params.temperature, " must be finite and >= 0 (0 = greedy)");
  }
  if (params.top_k < 0) Fail("top_k = ", params.top_k, " must be >= 0 (0 = off)");
  if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) {
    Fail("top_p = ", params.top_p, " must be in (0, 1] (1 = off)");
  }
  if (!(params.min_p >= 0.0f && params.min_p <= 1.0f)) {
    Fail("min_p = ", params.min_p, " must be in [0, 1] (0 = off)");
  }
  if (!(params.repetition_penalty > 0.0f) || std::isinf(params.repetition_penalty)) {
    Fail("repetition_penalty = ", params.repetition_penalty, " must be finite and > 0 (1 = off)");
  }
}

Sampler::Sampler(const SamplingParams& params, std::span<const int> prompt_tokens)
    : params_(params), rng_(params.seed) {
  ValidateSamplingParams(params_);
  int largest = -1;
  for (size_t i = 0; i < prompt_tokens.size(); ++i) {
    if (prompt_tokens[i] < 0) {
      Fail("prompt token ", i, " has id ", prompt_tokens[i], "; token ids must be >= 0");
    }
    largest = std::max(largest, prompt_tokens[i]);
  }
  seen_.assign(static_cast<size_t>(largest + 1), 0);
  for (const int token : prompt_tokens) seen_[static_cast<size_t>(token)] = 1;
}

std::span<const TokenProb> Sampler::Distribution(std::span<const float> logits) {
  const size_t vocab = logits.size();
  if (vocab == 0) Fail("sampler: the logits are empty (vocabulary size 0)");
  MIXATTN_CHECK(vocab <= static_cast<size_t>(INT_MAX));
  // First call (or a larger V): size the scratch once; later calls reuse it.
  if (seen_.size() < vocab) seen_.resize(vocab, 0);
  logits_.resize(vocab);
  candidates_.reserve(vocab);
  candidates_.clear();

  // Step 1, and the max for steps 2 and 4, in one pass over V.
  const float penalty = params_.repetition_penalty;
  const bool penalise = penalty != 1.0f;
  float max_logit = kNegInf;
  size_t argmax = 0;
  for (size_t i = 0; i < vocab; ++i) {
    float z = std::isnan(logits[i]) ? kNegInf : logits[i];
    if (penalise && seen_[i]) z = z > 0.0f ? z / penalty : z * penalty;
    logits_[i] = z;
    if (z > max_logit) {  // strict: ties keep the lowest id
      max_logit = z;
      argmax = i;
    }
  }
  if (max_logit == kNegInf) {
    Fail("sampler: all ", vocab, " logits are -inf or NaN; there is no token to pick");
  }

  // Step 2.
  if (params_.temperature == 0.0f) {
    candidates_.push_back({static_cast<int>(argmax), 1.0});
    return candidates_;
  }

  // Steps 3-4: unnormalised weights, then normalised. (z - max) <= 0, so exp never overflows.
  const double temperature = params_.temperature;
  const bool max_is_inf = std::isinf(max_logit);
  double total = 0.0;
  for (size_t i = 0; i < vocab; ++i) {
    const double weight =
        max_is_inf ? (logits_[i] == max_logit ? 1.0 : 0.0)
                   : std::exp((static_cast<double>(logits_[i]) - max_logit) / temperature);
    if (weight > 0.0) {
      candidates_.push_back({static_cast<int>(i), weight});
      total += weight;
    }
  }
  for (TokenProb& c : candidates_) c.prob /= total;

  // Steps 5-7. Until top-k or top-p runs, candidates_ stays in id order.
  bool sorted = false;
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < candidates_.size()) {
    KeepTopK(candidates_, static_cast<size_t>(params_.top_k));
    sorted = true;
  }
  if (params_.top_p < 1.0f) {
    KeepTopP(candidates_, params_.top_p, sorted);
    sorted = true;
  }
  if (params_.min_p > 0.0f) {
    const double p_max = sorted ? candidates_.front().prob
                                : std::max_element(candidates_.begin(), candidates_.end(),
                                                   [](const TokenProb& a, const TokenProb& b) {
                                                     return a.prob < b.prob;
                                                   })
                                      ->prob;
    const double threshold = params_.min_p * p_max;
    std::erase_if(candidates_, [threshold](const TokenProb& c) { return c.prob < threshold; });
  }

  // Step 8's renormalisation.
  double kept = 0.0;
  for (const TokenProb& c : candidates_) kept += c.prob;
  for (TokenProb& c : candidates_) c.prob /= kept;
  return candidates_;
}

int Sampler::Sample(std::span<const float> logits) {
  const std::span<const TokenProb> candidates = Distribution(logits);
  // If rounding leaves the cumulative sum a hair under u, the last candidate is taken.
  int token = candidates.back().token;
  if (params_.temperature > 0.0f) {
    const double u = rng_.Uniform();
    double cumulative = 0.0;
    for (const TokenProb& c : candidates) {
      cumulative += c.prob;
      if (u < cumulative) {
        token = c.token;
        break;
      }
    }
  }
  seen_[static_cast<size_t>(token)] = 1;
  return token;
}

}  // namespace mixattn
