// Tests of the next-token sampler (src/engine/sampler.h).
//
// Legend: V = vocabulary size.
#include "engine/sampler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/random.h"
#include "test_util.h"

namespace mixattn {
namespace {

using testing::ErrorMessage;
using ::testing::HasSubstr;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// The hand-made distribution of the exact-set and frequency tests, by token id:
//   token:  0     1     2     3     4     5
//   p:      0.10  0.40  0.04  0.25  0.15  0.06
// Sorted: 1 (0.40), 3 (0.25), 4 (0.15), 0 (0.10), 5 (0.06), 2 (0.04).
const std::vector<double> kBaseProbs = {0.10, 0.40, 0.04, 0.25, 0.15, 0.06};

std::vector<float> LogLogits(const std::vector<double>& probs) {
  std::vector<float> logits;
  for (double p : probs) logits.push_back(static_cast<float>(std::log(p)));
  return logits;
}

std::vector<float> RandomLogits(size_t vocab, double scale, Rng& rng) {
  std::vector<float> logits(vocab);
  for (float& z : logits) z = static_cast<float>(scale * rng.Normal());
  return logits;
}

// token -> probability, for comparisons that must not depend on the candidates' order.
std::map<int, double> AsMap(std::span<const TokenProb> candidates) {
  std::map<int, double> out;
  for (const TokenProb& c : candidates) out[c.token] = c.prob;
  return out;
}

std::map<int, double> DistributionOf(const SamplingParams& params, const std::vector<float>& logits,
                                     const std::vector<int>& prompt = {}) {
  Sampler sampler(params, prompt);
  return AsMap(sampler.Distribution(logits));
}

// The expected renormalised distribution over `kept` tokens of kBaseProbs.
std::map<int, double> Renormalised(const std::vector<int>& kept) {
  double mass = 0.0;
  for (int t : kept) mass += kBaseProbs[t];
  std::map<int, double> out;
  for (int t : kept) out[t] = kBaseProbs[t] / mass;
  return out;
}

void ExpectSameDistribution(const std::map<int, double>& actual,
                            const std::map<int, double>& expected, double tolerance = 1e-6) {
  ASSERT_EQ(actual.size(), expected.size());
  for (const auto& [token, prob] : expected) {
    ASSERT_TRUE(actual.count(token)) << "token " << token << " missing";
    EXPECT_NEAR(actual.at(token), prob, tolerance) << "token " << token;
  }
}

int Argmax(const std::vector<float>& logits) {
  return static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

// The readable oracle: steps 1-8 of the header written the slow, obvious way (full sort, explicit
// renormalisation after every filter), for the sweep against the fast path.
std::map<int, double> ReferenceDistribution(const SamplingParams& params,
                                            const std::vector<float>& logits,
                                            const std::set<int>& seen) {
  const int vocab = static_cast<int>(logits.size());
  std::vector<float> z(logits);
  for (int i = 0; i < vocab; ++i) {
    if (std::isnan(z[i])) z[i] = -kInf;
    if (seen.count(i))
      z[i] = z[i] > 0 ? z[i] / params.repetition_penalty : z[i] * params.repetition_penalty;
  }
  if (params.temperature == 0) {
    int best = 0;
    for (int i = 1; i < vocab; ++i)
      if (z[i] > z[best]) best = i;
    return {{best, 1.0}};
  }
  const float max_z = *std::max_element(z.begin(), z.end());
  std::vector<TokenProb> c;
  for (int i = 0; i < vocab; ++i) {
    const double w = std::exp((static_cast<double>(z[i]) - max_z) / params.temperature);
    if (w > 0) c.push_back({i, w});
  }
  auto renormalise = [&c] {
    double sum = 0;
    for (const TokenProb& t : c) sum += t.prob;
    for (TokenProb& t : c) t.prob /= sum;
  };
  renormalise();
  std::sort(c.begin(), c.end(), [](const TokenProb& a, const TokenProb& b) {
    return a.prob > b.prob || (a.prob == b.prob && a.token < b.token);
  });
  if (params.top_k > 0 && params.top_k < static_cast<int>(c.size())) {
    c.resize(params.top_k);
    renormalise();
  }
  if (params.top_p < 1) {
    double cumulative = 0;
    size_t keep = c.size();
    for (size_t i = 0; i < c.size(); ++i) {
      cumulative += c[i].prob;
      if (cumulative >= params.top_p) {
        keep = i + 1;
        break;
      }
    }
    c.resize(keep);
    renormalise();
  }
  const double threshold = params.min_p * c.front().prob;
  std::erase_if(c, [threshold](const TokenProb& t) { return t.prob < threshold; });
  renormalise();
  return AsMap(c);
}

// Pearson's chi-square statistic of `counts` (over V tokens) against `expected` probabilities;
// a token outside `expected` that was drawn at all is a test failure.
double ChiSquare(const std::vector<int>& counts, const std::map<int, double>& expected, int draws) {
  double chi2 = 0.0;
  for (int t = 0; t < static_cast<int>(counts.size()); ++t) {
    if (!expected.count(t)) {
      EXPECT_EQ(counts[t], 0) << "token " << t << " was filtered out but drawn";
      continue;
    }
    const double e = expected.at(t) * draws;
    chi2 += (counts[t] - e) * (counts[t] - e) / e;
  }
  return chi2;
}

// Chi-square critical values at significance 0.001, by degrees of freedom (1..5). A correct
// sampler exceeds one with probability 0.1%; the seed is fixed, so the test is deterministic.
double ChiSquareCritical(size_t dof) {
  const double table[] = {0, 10.83, 13.82, 16.27, 18.47, 20.52};
  return table[dof];
}

TEST(SamplerTest, GreedyIsArgmax) {
  SamplingParams params;
  params.temperature = 0;
  Rng rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    const std::vector<float> logits = RandomLogits(100, 2.0, rng);
    Sampler sampler(params, {});
    EXPECT_EQ(sampler.Sample(logits), Argmax(logits));
  }
  // Ties go to the lowest id; NaN counts as -inf.
  Sampler sampler(params, {});
  EXPECT_EQ(sampler.Sample(std::vector<float>{1, 3, 0, 3, 2}), 1);
  EXPECT_EQ(sampler.Sample(std::vector<float>{kNaN, -5, kNaN}), 1);
  EXPECT_EQ(sampler.Sample(std::vector<float>{-kInf, -kInf, 0}), 2);
  ExpectSameDistribution(DistributionOf(params, {1, 3, 0, 3}), {{1, 1.0}});
}

TEST(SamplerTest, TemperatureLimitAgreesWithGreedy) {
  SamplingParams greedy_params;
  greedy_params.temperature = 0;
  SamplingParams cold;
  cold.temperature = 1e-6f;
  Rng rng(11);
  for (int trial = 0; trial < 50; ++trial) {
    const std::vector<float> logits = RandomLogits(1000, 3.0, rng);
    Sampler greedy(greedy_params, {});
    cold.seed = static_cast<uint64_t>(trial);
    Sampler sampler(cold, {});
    const int expected = greedy.Sample(logits);
    for (int draw = 0; draw < 5; ++draw) EXPECT_EQ(sampler.Sample(logits), expected);
  }
}

TEST(SamplerTest, SameSeedSameSequenceDifferentSeedDifferent) {
  const std::vector<float> logits = {0.1f, 0.3f, -0.2f, 0.0f, 0.25f, -0.1f, 0.05f, 0.2f};
  SamplingParams params;
  params.seed = 1234;
  Sampler a(params, {});
  Sampler b(params, {});
  params.seed = 1235;
  Sampler c(params, {});
  // An unrelated request sampled between b's draws (a batch neighbour) must not change them.
  SamplingParams other_params;
  other_params.seed = 99;
  Sampler neighbour(other_params, {});
  std::vector<int> seq_a, seq_b, seq_c;
  for (int i = 0; i < 100; ++i) seq_a.push_back(a.Sample(logits));
  for (int i = 0; i < 100; ++i) {
    neighbour.Sample(logits);
    seq_b.push_back(b.Sample(logits));
    seq_c.push_back(c.Sample(logits));
  }
  EXPECT_EQ(seq_a, seq_b);
  EXPECT_NE(seq_a, seq_c);
  EXPECT_GT(std::set<int>(seq_a.begin(), seq_a.end()).size(), 4u) << "a near-flat distribution";
}

TEST(SamplerTest, ExactSurvivorsOnHandComputedExample) {
  const std::vector<float> logits = LogLogits(kBaseProbs);
  SamplingParams params;
  // Plain softmax returns the distribution itself.
  ExpectSameDistribution(DistributionOf(params, logits), Renormalised({0, 1, 2, 3, 4, 5}));
  // top-k = 3: {1, 3, 4}.
  params.top_k = 3;
  ExpectSameDistribution(DistributionOf(params, logits), Renormalised({1, 3, 4}));
  params.top_k = 0;
  // top-p: cumulative mass in order 1, 3, 4, 0, ... is 0.40, 0.65, 0.80, 0.90, 0.96, 1.
  params.top_p = 0.64f;
  ExpectSameDistribution(DistributionOf(params, logits), Renormalised({1, 3}));
  params.top_p = 0.66f;
  ExpectSameDistribution(DistributionOf(params, logits), Renormalised({1, 3, 4}));
  params.top_p = 0.95f;
  ExpectSameDistribution(DistributionOf(params, logits), Renormalised({0, 1, 3, 4, 5}));
  params.top_p = 1.0f;
  // min-p = 0.2: threshold 0.2 * 0.40 = 0.08 keeps {1, 3, 4, 0}.
  params.min_p = 0.2f;
  ExpectSameDistribution(DistributionOf(params, logits), Renormalised({0, 1, 3, 4}));
  // min-p = 0.5: threshold 0.20 keeps {1, 3}.
  params.min_p = 0.5f;
  ExpectSameDistribution(DistributionOf(params, logits), Renormalised({1, 3}));
  params.min_p = 0.0f;
  // Chained: top-k = 5 leaves mass 0.96; top-p = 0.82 of that is reached at 0.80 / 0.96 = 0.833
  // with {1, 3, 4} (measured against the raw mass it would need token 0 as well); min-p = 0.2
  // (threshold 0.08) then drops nothing.
  params.top_k = 5;
  params.top_p = 0.82f;
  params.min_p = 0.2f;
  ExpectSameDistribution(DistributionOf(params, logits), Renormalised({1, 3, 4}));
  // ... and min-p = 0.5 (threshold 0.20) drops token 4.
  params.min_p = 0.5f;
  ExpectSameDistribution(DistributionOf(params, logits), Renormalised({1, 3}));
}

TEST(SamplerTest, TopKOneEqualsGreedy) {
  SamplingParams params;
  params.top_k = 1;
  params.temperature = 1.5f;
  Rng rng(5);
  for (int trial = 0; trial < 20; ++trial) {
    const std::vector<float> logits = RandomLogits(500, 1.0, rng);
    params.seed = static_cast<uint64_t>(trial);
    Sampler sampler(params, {});
    for (int draw = 0; draw < 5; ++draw) EXPECT_EQ(sampler.Sample(logits), Argmax(logits));
  }
}

TEST(SamplerTest, TinyTopPKeepsOnlyTheMax) {
  SamplingParams params;
  params.top_p = 1e-6f;
  params.temperature = 2.0f;
  Rng rng(9);
  for (int trial = 0; trial < 10; ++trial) {
    const std::vector<float> logits = RandomLogits(3000, 1.0, rng);
    ExpectSameDistribution(DistributionOf(params, logits), {{Argmax(logits), 1.0}}, 0.0);
  }
}

// Empirical frequencies over 20000 draws against the renormalised distribution, for each filter on
// the hand-made example. Tolerance: Pearson's chi-square below its 0.1% critical value.
TEST(SamplerTest, FrequenciesMatchTheDistribution) {
  const std::vector<float> logits = LogLogits(kBaseProbs);
  constexpr int kDraws = 20000;
  struct Case {
    const char* name;
    SamplingParams params;
    std::map<int, double> expected;
  };
  std::vector<Case> cases;
  {
    // T = 0.5 squares the probabilities: p_i^2 / sum_j p_j^2.
    SamplingParams p;
    p.temperature = 0.5f;
    std::map<int, double> expected;
    double sum = 0;
    for (double q : kBaseProbs) sum += q * q;
    for (int t = 0; t < 6; ++t) expected[t] = kBaseProbs[t] * kBaseProbs[t] / sum;
    cases.push_back({"temperature 0.5", p, expected});
  }
  {
    SamplingParams p;
    cases.push_back({"temperature 1", p, Renormalised({0, 1, 2, 3, 4, 5})});
  }
  {
    SamplingParams p;
    p.top_k = 3;
    cases.push_back({"top-k 3", p, Renormalised({1, 3, 4})});
  }
  {
    SamplingParams p;
    p.top_p = 0.6f;
    cases.push_back({"top-p 0.6", p, Renormalised({1, 3})});
  }
  {
    SamplingParams p;
    p.min_p = 0.2f;
    cases.push_back({"min-p 0.2", p, Renormalised({0, 1, 3, 4})});
  }
  for (Case& c : cases) {
    c.params.seed = 2024;
    Sampler sampler(c.params, {});
    std::vector<int> counts(logits.size(), 0);
    for (int i = 0; i < kDraws; ++i) ++counts[sampler.Sample(logits)];
    const double chi2 = ChiSquare(counts, c.expected, kDraws);
    EXPECT_LT(chi2, ChiSquareCritical(c.expected.size() - 1)) << c.name;
  }
}

TEST(SamplerTest, RepetitionPenaltyLowersSeenTokens) {
  // Tokens 0 (positive), 1 (negative) and 4 (zero) are in the prompt, token 0 twice.
  const std::vector<float> logits = {2.0f, -2.0f, 2.0f, -2.0f, 0.0f};
  SamplingParams params;
  params.repetition_penalty = 2.0f;
  // Penalised: {2 / 2, -2 * 2, 2, -2, 0}; at T = 1 the distribution is their softmax.
  const std::vector<double> penalised = {1.0, -4.0, 2.0, -2.0, 0.0};
  double sum = 0;
  for (double z : penalised) sum += std::exp(z);
  std::map<int, double> expected;
  for (int t = 0; t < 5; ++t) expected[t] = std::exp(penalised[t]) / sum;
  ExpectSameDistribution(DistributionOf(params, logits, {0, 1, 4, 0}), expected, 1e-9);
  // Without a prompt nothing changes.
  sum = 0;
  for (float z : logits) sum += std::exp(z);
  std::map<int, double> unpenalised;
  for (int t = 0; t < 5; ++t) unpenalised[t] = std::exp(logits[t]) / sum;
  ExpectSameDistribution(DistributionOf(params, logits), unpenalised, 1e-9);

  // Sampled tokens count as seen: greedy with penalty 1.5 on {3, 2.9, 2.8, ...} picks 0 first,
  // then 0 has 3 / 1.5 = 2 and token 1 wins, then token 2.
  params.temperature = 0;
  params.repetition_penalty = 1.5f;
  Sampler sampler(params, {});
  const std::vector<float> close = {3.0f, 2.9f, 2.8f, -1.0f};
  EXPECT_EQ(sampler.Sample(close), 0);
  EXPECT_EQ(sampler.Sample(close), 1);
  EXPECT_EQ(sampler.Sample(close), 2);
  // Negative seen logits are multiplied, moving away from zero: seen 0, 1, 2 become -1.5, -1.8,
  // -1.95, and the unseen token 3 (-1.1) wins; dividing instead (-0.67) would have picked token 0.
  EXPECT_EQ(sampler.Sample(std::vector<float>{-1.0f, -1.2f, -1.3f, -1.1f}), 3);

  // Prompt ids beyond V are harmless; the logits are not modified.
  params.temperature = 1;
  Sampler wide(params, std::vector<int>{0, 100});
  const std::vector<float> copy = logits;
  wide.Sample(logits);
  EXPECT_EQ(logits, copy);
}

TEST(SamplerTest, InvalidParamsNameTheField) {
  auto message = [](void (*edit)(SamplingParams&)) {
    SamplingParams params;
    edit(params);
    const std::string validate = ErrorMessage([&] { ValidateSamplingParams(params); });
    EXPECT_EQ(ErrorMessage([&] { Sampler(params, {}); }), validate);
    return validate;
  };
  EXPECT_THAT(message([](SamplingParams& p) { p.temperature = -0.5f; }),
              HasSubstr("temperature = -0.5 must be finite and >= 0"));
  EXPECT_THAT(message([](SamplingParams& p) { p.temperature = kNaN; }), HasSubstr("temperature"));
  EXPECT_THAT(message([](SamplingParams& p) { p.temperature = kInf; }), HasSubstr("temperature"));
  EXPECT_THAT(message([](SamplingParams& p) { p.top_k = -1; }),
              HasSubstr("top_k = -1 must be >= 0"));
  EXPECT_THAT(message([](SamplingParams& p) { p.top_p = 1.5f; }),
              HasSubstr("top_p = 1.5 must be in (0, 1]"));
  EXPECT_THAT(message([](SamplingParams& p) { p.top_p = 0.0f; }),
              HasSubstr("top_p = 0 must be in (0, 1]"));
  EXPECT_THAT(message([](SamplingParams& p) { p.top_p = kNaN; }), HasSubstr("top_p"));
  EXPECT_THAT(message([](SamplingParams& p) { p.min_p = -0.1f; }),
              HasSubstr("min_p = -0.1 must be in [0, 1]"));
  EXPECT_THAT(message([](SamplingParams& p) { p.min_p = 1.5f; }), HasSubstr("min_p = 1.5"));
  EXPECT_THAT(message([](SamplingParams& p) { p.min_p = kNaN; }), HasSubstr("min_p"));
  EXPECT_THAT(message([](SamplingParams& p) { p.repetition_penalty = 0.0f; }),
              HasSubstr("repetition_penalty = 0 must be finite and > 0"));
  EXPECT_THAT(message([](SamplingParams& p) { p.repetition_penalty = -1.0f; }),
              HasSubstr("repetition_penalty"));
  EXPECT_THAT(message([](SamplingParams& p) { p.repetition_penalty = kNaN; }),
              HasSubstr("repetition_penalty"));
  // The edges of the ranges are valid.
  SamplingParams edges;
  edges.temperature = 0;
  edges.top_p = 1;
  edges.min_p = 1;
  ValidateSamplingParams(edges);
  edges.min_p = 0;
  ValidateSamplingParams(edges);

  EXPECT_THAT(ErrorMessage([] {
                Sampler(SamplingParams{}, std::vector<int>{3, -2});
              }),
              HasSubstr("prompt token 1 has id -2"));
}

TEST(SamplerTest, RejectsLogitsWithNoFiniteToken) {
  for (float temperature : {0.0f, 1.0f}) {
    SamplingParams params;
    params.temperature = temperature;
    Sampler sampler(params, {});
    EXPECT_THAT(ErrorMessage([&] {
                  sampler.Sample(std::vector<float>{-kInf, -kInf, -kInf});
                }),
                HasSubstr("all 3 logits are -inf or NaN"));
    EXPECT_THAT(ErrorMessage([&] {
                  sampler.Sample(std::vector<float>{kNaN, -kInf});
                }),
                HasSubstr("-inf or NaN"));
    EXPECT_THAT(ErrorMessage([&] { sampler.Sample(std::vector<float>{}); }), HasSubstr("empty"));
    // After a rejection the sampler still works.
    EXPECT_EQ(sampler.Sample(std::vector<float>{kNaN, -kInf, 0.0f}), 2);
  }
}

TEST(SamplerTest, InfiniteLogitTakesAllTheMass) {
  SamplingParams params;
  ExpectSameDistribution(DistributionOf(params, {1.0f, kInf, 5.0f, kNaN}), {{1, 1.0}}, 0.0);
  ExpectSameDistribution(DistributionOf(params, {kInf, 0.0f, kInf}), {{0, 0.5}, {2, 0.5}}, 0.0);
}

// The fast path (nth_element, chunked top-p, one pass softmax) against the readable oracle above,
// over odd vocabulary sizes, every filter combination, penalties, and NaN / -inf logits.
TEST(SamplerTest, MatchesReferenceOnRandomSweep) {
  Rng rng(31);
  const size_t vocabs[] = {1, 2, 7, 63, 64, 65, 300, 5000};
  const float temperatures[] = {0.0f, 0.3f, 1.0f, 2.5f};
  const int top_ks[] = {0, 1, 5, 64, 200};
  const float top_ps[] = {1.0f, 0.95f, 0.5f, 0.01f};
  const float min_ps[] = {0.0f, 0.01f, 0.3f};
  const float penalties[] = {1.0f, 1.3f, 0.7f};
  for (int trial = 0; trial < 400; ++trial) {
    const size_t vocab = vocabs[rng.Below(std::size(vocabs))];
    SamplingParams params;
    params.temperature = temperatures[rng.Below(std::size(temperatures))];
    params.top_k = top_ks[rng.Below(std::size(top_ks))];
    params.top_p = top_ps[rng.Below(std::size(top_ps))];
    params.min_p = min_ps[rng.Below(std::size(min_ps))];
    params.repetition_penalty = penalties[rng.Below(std::size(penalties))];
    std::vector<float> logits = RandomLogits(vocab, 1.0 + 3.0 * rng.Uniform(), rng);
    for (size_t i = 0; i < vocab / 10; ++i)
      logits[rng.Below(vocab)] = rng.Uniform() < 0.5 ? -kInf : kNaN;
    logits[rng.Below(vocab)] = 0.5f;  // at least one finite logit
    std::vector<int> prompt;
    for (size_t i = 0; i < vocab / 4; ++i) prompt.push_back(static_cast<int>(rng.Below(vocab)));
    const std::set<int> seen(prompt.begin(), prompt.end());

    Sampler sampler(params, prompt);
    const std::map<int, double> actual = AsMap(sampler.Distribution(logits));
    const std::map<int, double> expected = ReferenceDistribution(params, logits, seen);
    ASSERT_EQ(actual.size(), expected.size()) << "trial " << trial << " V=" << vocab;
    double sum = 0;
    for (const auto& [token, prob] : expected) {
      ASSERT_TRUE(actual.count(token)) << "trial " << trial << " token " << token;
      EXPECT_NEAR(actual.at(token), prob, 1e-12) << "trial " << trial << " token " << token;
      sum += actual.at(token);
    }
    EXPECT_NEAR(sum, 1.0, 1e-12);
    // Sample draws one of the candidates.
    EXPECT_TRUE(actual.count(sampler.Sample(logits))) << "trial " << trial;
  }
}

TEST(SamplerTest, ReusesScratchAcrossCalls) {
  // The candidate view of a second call with the same V lives in the same buffer as the first:
  // no reallocation after the first call.
  Rng rng(3);
  const std::vector<float> logits = RandomLogits(4096, 1.0, rng);
  Sampler sampler(SamplingParams{}, {});
  const TokenProb* first = sampler.Distribution(logits).data();
  for (int i = 0; i < 10; ++i) sampler.Sample(logits);
  EXPECT_EQ(sampler.Distribution(logits).data(), first);
}

}  // namespace
}  // namespace mixattn
