// Evaluation tasks, scoring, intervals, perplexity and the engine run behind `mixattn eval`.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "engine/engine.h"
#include "eval/evaluator.h"
#include "eval/tasks.h"
#include "model/presets.h"
#include "model/reference_forward.h"
#include "model/weights.h"
#include "test_util.h"

namespace mixattn {
namespace {

using eval::Task;
using testing::ErrorMessage;
using ::testing::HasSubstr;
using testing::TempDir;

// A small tokenizer trained once on generated English-like text.
class EvalTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const std::string input = dir_->file("text.txt");
    std::ofstream out(input);
    const char* words[] = {"the",   "river", "was",  "cold", "and",  "a",     "king",
                           "of",    "old",   "city", "came", "to",   "house", "with",
                           "value", "key",   "pass", "is",   "what", "most",  "common"};
    Rng rng(7);
    for (int line = 0; line < 600; ++line) {
      for (int w = 0; w < 12; ++w) out << words[rng.Below(std::size(words))] << ' ';
      out << rng.Below(10000) << ".\n";
    }
    out.close();
    TokenizerTrainOptions options;
    options.vocab_size = 400;
    Tokenizer::Train({input}, dir_->file("tokenizer.model"), options);
    tokenizer_ = new Tokenizer(Tokenizer::Load(dir_->file("tokenizer.model")));
    // A validation-like stream: documents of text, BOS ... EOS.
    for (int document = 0; document < 20; ++document) {
      stream_.push_back(tokenizer_->bos_id());
      std::ostringstream text;
      for (int line = 0; line < 30; ++line) {
        for (int w = 0; w < 10; ++w) text << words[rng.Below(std::size(words))] << ' ';
        text << "end.\n";
      }
      const std::vector<int> ids = tokenizer_->Encode(text.str());
      stream_.insert(stream_.end(), ids.begin(), ids.end());
      stream_.push_back(tokenizer_->eos_id());
    }
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete dir_;
  }

  static const Tokenizer& tokenizer() { return *tokenizer_; }
  static eval::Haystack haystack() { return eval::Haystack(*tokenizer_, stream_, 100); }

  static inline TempDir* dir_ = nullptr;
  static inline Tokenizer* tokenizer_ = nullptr;
  static inline std::vector<int> stream_;
};

const Task kAllTasks[] = {
    Task::kNiahSingle, Task::kNiahMultikey, Task::kNiahMultivalue, Task::kNiahMultiquery, Task::kVt,
    Task::kCwe,        Task::kFwe};

TEST_F(EvalTest, TaskNamesRoundTripAndUnknownNamesAreRejected) {
  for (Task task : kAllTasks) EXPECT_EQ(eval::ParseTask(eval::TaskName(task)), task);
  EXPECT_EQ(eval::ParseTask("copy"), Task::kCopy);
  EXPECT_THAT(ErrorMessage([] { eval::ParseTask("niah"); }),
              HasSubstr("unknown task 'niah'; the tasks are ppl, niah_single"));
}

TEST_F(EvalTest, EverySampleHasExactlyTheAskedLengthAndItsAnswersInThePrompt) {
  const eval::Haystack hay = haystack();
  for (Task task : kAllTasks) {
    for (int64_t length : {400, 700, 1024}) {
      for (double depth : {0.0, 0.5, 1.0}) {
        const eval::Sample sample = eval::MakeSample(tokenizer(), hay, task, length, depth, 11);
        SCOPED_TRACE(std::string(eval::TaskName(task)) + " at " + std::to_string(length));
        ASSERT_EQ(static_cast<int64_t>(sample.prompt.size()), length);
        EXPECT_EQ(sample.prompt[0], tokenizer().bos_id());
        EXPECT_EQ(sample.depth.has_value(), eval::TaskHasDepth(task));
        ASSERT_FALSE(sample.answers.empty());
        EXPECT_GT(sample.max_tokens, 2);
        const std::string text = tokenizer().Decode(sample.prompt);
        // Every answer is in the context (cwe / fwe: as list words) and the question is last.
        for (const std::string& answer : sample.answers)
          EXPECT_EQ(eval::ScoreOutput(std::vector<std::string>{answer}, text), 1.0) << answer;
        EXPECT_NE(text.rfind('?'), std::string::npos);
        EXPECT_GT(text.rfind('?'), text.size() - 80);
      }
    }
  }
}

TEST_F(EvalTest, NeedleDepthMovesTheFactFromFarToNear) {
  const eval::Haystack hay = haystack();
  for (Task task : {Task::kNiahSingle, Task::kNiahMultikey, Task::kVt}) {
    const eval::Sample far = eval::MakeSample(tokenizer(), hay, task, 1024, 0.0, 3);
    const eval::Sample middle = eval::MakeSample(tokenizer(), hay, task, 1024, 0.5, 3);
    const eval::Sample near = eval::MakeSample(tokenizer(), hay, task, 1024, 1.0, 3);
    EXPECT_GT(far.distance, 850) << eval::TaskName(task);
    EXPECT_NEAR(middle.distance, far.distance / 2.0, 60) << eval::TaskName(task);
    // vt's two assignments follow the value, so they sit between it and the question.
    EXPECT_LT(near.distance, task == Task::kVt ? 150 : 60) << eval::TaskName(task);
  }
  // niah_single at depth 1: the fact sits right before the question.
  EXPECT_EQ(eval::MakeSample(tokenizer(), hay, Task::kNiahSingle, 512, 1.0, 5).distance, 0);
}

TEST_F(EvalTest, SamplesAreDeterministicInTheSeed) {
  const eval::Haystack hay = haystack();
  for (Task task : kAllTasks) {
    const eval::Sample a = eval::MakeSample(tokenizer(), hay, task, 512, 0.25, 9);
    const eval::Sample b = eval::MakeSample(tokenizer(), hay, task, 512, 0.25, 9);
    const eval::Sample c = eval::MakeSample(tokenizer(), hay, task, 512, 0.25, 10);
    EXPECT_EQ(a.prompt, b.prompt);
    EXPECT_EQ(a.answers, b.answers);
    EXPECT_NE(a.prompt, c.prompt) << eval::TaskName(task);
  }
}

// Word counts of the list between the introduction's last line and the question.
std::map<std::string, int> ListCounts(const std::string& text) {
  const size_t begin = text.find(".\n", text.find("appear")) + 2;
  const size_t end = text.rfind("\nWhat");
  std::istringstream list(text.substr(begin, end - begin));
  std::map<std::string, int> counts;
  for (std::string word; list >> word;) ++counts[word];
  return counts;
}

TEST_F(EvalTest, WordTasksAskForTheWordsThatReallyAreMostFrequent) {
  const eval::Haystack hay = haystack();
  for (Task task : {Task::kCwe, Task::kFwe}) {
    for (int64_t length : {300, 1000, 3000}) {
      const eval::Sample sample = eval::MakeSample(tokenizer(), hay, task, length, 0, 4);
      const std::map<std::string, int> counts = ListCounts(tokenizer().Decode(sample.prompt));
      int least_answer = 1 << 30, most_other = 0;
      for (const auto& [word, count] : counts) {
        const bool answer =
            std::find(sample.answers.begin(), sample.answers.end(), word) != sample.answers.end();
        if (answer) least_answer = std::min(least_answer, count);
        if (!answer) most_other = std::max(most_other, count);
      }
      EXPECT_EQ(sample.answers.size(), task == Task::kCwe ? 10u : 3u);
      for (const std::string& answer : sample.answers) EXPECT_TRUE(counts.contains(answer));
      EXPECT_GT(least_answer, most_other) << eval::TaskName(task) << " at " << length;
      EXPECT_GT(counts.size(), sample.answers.size());
    }
  }
}

TEST_F(EvalTest, TooShortLengthsAndBadDepthsAreErrors) {
  const eval::Haystack hay = haystack();
  EXPECT_THAT(
      ErrorMessage([&] { eval::MakeSample(tokenizer(), hay, Task::kNiahMultikey, 20, 0, 1); }),
      HasSubstr("context length 20 is too short for niah_multikey"));
  EXPECT_THAT(ErrorMessage([&] { eval::MakeSample(tokenizer(), hay, Task::kCwe, 30, 0, 1); }),
              HasSubstr("too short for cwe"));
  EXPECT_THAT(ErrorMessage([&] { eval::MakeSample(tokenizer(), hay, Task::kFwe, 30, 0, 1); }),
              HasSubstr("too short for fwe"));
  EXPECT_THAT(ErrorMessage([&] { eval::MakeSample(tokenizer(), hay, Task::kVt, 512, 1.5, 1); }),
              HasSubstr("needle depth 1.5 must be in [0, 1]"));
  EXPECT_THAT(ErrorMessage([&] {
                eval::Haystack(tokenizer(), {1, 5, 6, 2}, 100);
              }),
              HasSubstr("the held-out text has 2 tokens; the evaluation needs at least 100"));
}

TEST(EvalScoreTest, AnswersCountOnlyAsWholeWords) {
  const std::vector<std::string> one = {"58213"};
  EXPECT_EQ(eval::ScoreOutput(one, " 58213."), 1.0);
  EXPECT_EQ(eval::ScoreOutput(one, "58213"), 1.0);
  EXPECT_EQ(eval::ScoreOutput(one, " 158213."), 0.0);
  EXPECT_EQ(eval::ScoreOutput(one, " 582134 and 58213"), 1.0);
  EXPECT_EQ(eval::ScoreOutput(one, ""), 0.0);
  const std::vector<std::string> four = {"1234", "5678", "river", "king"};
  EXPECT_EQ(eval::ScoreOutput(four, " 1234, rivers and king."), 0.5);
}

TEST(EvalScoreTest, WilsonIntervalMatchesKnownValues) {
  // Wilson 95% for 5/10: [0.2366, 0.7634]; for 0/20: [0, 0.1611]; for 20/20: [0.8389, 1].
  eval::Interval half = eval::WilsonInterval(0.5, 10);
  EXPECT_NEAR(half.low, 0.2366, 1e-4);
  EXPECT_NEAR(half.high, 0.7634, 1e-4);
  eval::Interval none = eval::WilsonInterval(0.0, 20);
  EXPECT_NEAR(none.low, 0.0, 1e-12);
  EXPECT_NEAR(none.high, 0.1611, 1e-4);
  eval::Interval all = eval::WilsonInterval(1.0, 20);
  EXPECT_NEAR(all.low, 0.8389, 1e-4);
  EXPECT_NEAR(all.high, 1.0, 1e-12);
}

TEST(EvalSummaryTest, MeansPerLengthAndPerDepth) {
  std::vector<eval::Sample> samples(4);
  std::vector<eval::SampleOutcome> outcomes(4);
  for (int i = 0; i < 4; ++i) {
    samples[i].task = Task::kNiahSingle;
    samples[i].length = 512;
    samples[i].depth = i % 2 == 0 ? 0.0 : 1.0;
    samples[i].distance = i % 2 == 0 ? 400 : 0;
    outcomes[i].score = i < 2 ? 1.0 : 0.0;  // depth 0: 1, 0; depth 1: 1, 0
  }
  samples[3].depth = 1.0;
  outcomes[1].score = 1.0;
  outcomes[3].score = 1.0;  // depth 1: both right
  const std::vector<eval::TaskScore> by_length = eval::Summarize(samples, outcomes, false);
  ASSERT_EQ(by_length.size(), 1u);
  EXPECT_EQ(by_length[0].samples, 4);
  EXPECT_DOUBLE_EQ(by_length[0].accuracy, 0.75);
  EXPECT_DOUBLE_EQ(by_length[0].mean_distance, 200);
  const std::vector<eval::TaskScore> by_depth = eval::Summarize(samples, outcomes, true);
  ASSERT_EQ(by_depth.size(), 2u);
  EXPECT_EQ(*by_depth[0].depth, 0.0);
  EXPECT_DOUBLE_EQ(by_depth[0].accuracy, 0.5);
  EXPECT_EQ(*by_depth[1].depth, 1.0);
  EXPECT_DOUBLE_EQ(by_depth[1].accuracy, 1.0);
}

// copy outcomes carry a loss; the summary gives its mean and a normal 95% interval, and tasks
// without one have none.
TEST(EvalSummaryTest, CopyLossMeanAndInterval) {
  std::vector<eval::Sample> samples(5);
  std::vector<eval::SampleOutcome> outcomes(5);
  const double losses[4] = {1.0, 2.0, 3.0, 6.0};  // mean 3, sample variance 14/3
  for (int i = 0; i < 4; ++i) {
    samples[i].task = Task::kCopy;
    samples[i].length = 256;
    outcomes[i].nll = losses[i];
  }
  samples[4].task = Task::kNiahSingle;
  samples[4].length = 256;
  const std::vector<eval::TaskScore> scores = eval::Summarize(samples, outcomes, false);
  ASSERT_EQ(scores.size(), 2u);
  ASSERT_TRUE(scores[0].nll.has_value());
  EXPECT_DOUBLE_EQ(*scores[0].nll, 3.0);
  const double half = 1.959963984540054 * std::sqrt(14.0 / 3.0 / 4.0);
  EXPECT_NEAR(scores[0].nll_interval.low, 3.0 - half, 1e-12);
  EXPECT_NEAR(scores[0].nll_interval.high, 3.0 + half, 1e-12);
  EXPECT_FALSE(scores[1].nll.has_value());
}

TEST_F(EvalTest, CopySamplesRepeatARandomSpanFromTheDepth) {
  const eval::Haystack hay = haystack();
  constexpr int64_t kSpan = eval::kCopySpanTokens;
  for (double depth : {0.0, 0.5, 1.0}) {
    const eval::Sample sample = eval::MakeSample(tokenizer(), hay, Task::kCopy, 300, depth, 4);
    ASSERT_EQ(sample.prompt.size(), 300u);
    EXPECT_EQ(sample.prompt[0], tokenizer().bos_id());
    EXPECT_EQ(sample.copy_begin, 300 - kSpan);
    const std::vector<int> repeat(sample.prompt.end() - kSpan, sample.prompt.end());
    // The first copy sits at depth x filler: right after BOS at 0, right before the repeat at 1.
    const int64_t filler = 300 - 1 - 2 * kSpan;
    const int64_t first = 1 + std::llround(depth * static_cast<double>(filler));
    EXPECT_TRUE(std::equal(repeat.begin(), repeat.end(), sample.prompt.begin() + first));
    EXPECT_EQ(sample.distance, filler - (first - 1));
    ASSERT_EQ(sample.answers.size(), 1u);
    EXPECT_EQ(sample.answers[0], tokenizer().Decode(std::span<const int>(repeat).subspan(1)));
  }
  EXPECT_EQ(eval::MakeSample(tokenizer(), hay, Task::kCopy, 300, 1.0, 4).distance, 0);
  // Random spans: uniform over the held-out text's ids, so 20 spans use nearly all of them.
  std::set<int> ids;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const eval::Sample sample = eval::MakeSample(tokenizer(), hay, Task::kCopy, 100, 0.5, seed);
    ids.insert(sample.prompt.end() - kSpan, sample.prompt.end());
  }
  std::set<int> text_ids(stream_.begin(), stream_.end());
  text_ids.erase(tokenizer().bos_id());
  text_ids.erase(tokenizer().eos_id());
  for (const int id : ids) EXPECT_EQ(text_ids.count(id), 1u) << id;
  EXPECT_GE(ids.size(), text_ids.size() * 9 / 10);  // 320 uniform draws cover nearly all
  EXPECT_THAT(ErrorMessage([&] { eval::MakeSample(tokenizer(), hay, Task::kCopy, 32, 0, 1); }),
              HasSubstr("context length 32 is too short for copy"));
}

// A copy sample's score is the share of its repeat (after the first token) that the greedy
// prediction of the reference forward gets right; its output is those predictions.
TEST_F(EvalTest, CopyScoreIsTheGreedyHitRateOfTheReferenceForward) {
  const ModelConfig config =
      MakePresetConfig("ma-pairs", testing::TinyShape(8, 16, tokenizer().vocab_size(), 512));
  const ModelWeights weights = RandomWeights(config, 10);
  const eval::Haystack hay = haystack();
  std::vector<eval::Sample> samples;
  for (int64_t length : {64, 150})
    for (uint64_t seed = 0; seed < 3; ++seed)
      samples.push_back(eval::MakeSample(tokenizer(), hay, Task::kCopy, length, 0.3, seed));
  samples.push_back(eval::MakeSample(tokenizer(), hay, Task::kNiahSingle, 150, 0.5, 1));
  EngineOptions options;
  options.weights_dtype = DType::kF32;
  options.kv_dtype = DType::kF32;
  options.prefill_chunk = 32;
  const std::vector<eval::SampleOutcome> outcomes =
      eval::RunSamples(config, weights, tokenizer(), samples, options);
  ASSERT_EQ(outcomes.size(), samples.size());
  for (size_t i = 0; i + 1 < samples.size(); ++i) {
    const eval::Sample& sample = samples[i];
    const Tensor logits = ReferenceForward(config, weights, sample.prompt);
    const int64_t vocab = config.vocab_size;
    std::vector<int> predicted;
    int64_t correct = 0;
    double nll = 0;
    for (int64_t t = sample.copy_begin; t + 1 < sample.length; ++t) {
      const float* row = logits.data.data() + t * vocab;
      predicted.push_back(static_cast<int>(std::max_element(row, row + vocab) - row));
      const int target = sample.prompt[static_cast<size_t>(t + 1)];
      correct += predicted.back() == target;
      double partition = 0;
      for (int64_t v = 0; v < vocab; ++v) partition += std::exp(static_cast<double>(row[v]));
      nll += std::log(partition) - row[target];
    }
    EXPECT_EQ(outcomes[i].output, tokenizer().Decode(predicted)) << i;
    EXPECT_DOUBLE_EQ(outcomes[i].score, static_cast<double>(correct) / (eval::kCopySpanTokens - 1));
    ASSERT_TRUE(outcomes[i].nll.has_value()) << i;
    EXPECT_NEAR(*outcomes[i].nll, nll / (eval::kCopySpanTokens - 1), 1e-3) << i;
  }
  EXPECT_FALSE(outcomes.back().nll.has_value()) << "only copy samples have a copy loss";
  // The question task in the same run still generates greedily: its answer starts with the
  // reference forward's argmax after the prompt (the weights are chosen so that it is neither EOS
  // nor the newline that ends an answer).
  const std::vector<int>& question = samples.back().prompt;
  const Tensor logits = ReferenceForward(config, weights, question);
  const float* last =
      logits.data.data() + (static_cast<int64_t>(question.size()) - 1) * config.vocab_size;
  const int first = static_cast<int>(std::max_element(last, last + config.vocab_size) - last);
  ASSERT_NE(first, tokenizer().eos_id());
  const std::vector<int> first_token = {first};
  const std::string first_text = tokenizer().Decode(first_token);
  ASSERT_EQ(first_text.find('\n'), std::string::npos);
  EXPECT_THAT(outcomes.back().output, HasSubstr(first_text));
}

// Perplexity through the engine's runner and paged cache equals the double-precision reference
// forward's cross-entropy on the same windows, for a layout with sliding and shared layers.
TEST(EvalPerplexityTest, MatchesTheReferenceForward) {
  const ModelConfig config = MakePresetConfig("ma-pairs", testing::TinyShape(8, 5, 41, 256));
  const ModelWeights weights = RandomWeights(config, 3);
  const std::vector<int> stream = testing::RandomTokens(300, 41, 8);
  EngineOptions options;
  options.weights_dtype = DType::kF32;
  options.kv_dtype = DType::kF32;
  options.prefill_chunk = 7;  // windows span several chunks
  options.max_batch_tokens = 21;
  const int64_t length = 40, windows = 5;
  const eval::PerplexityResult result =
      eval::Perplexity(config, weights, stream, length, windows, options);
  double expected = 0;
  std::vector<double> per_window;
  for (int64_t w = 0; w < windows; ++w) {
    const int64_t start = w * (300 - length - 1) / (windows - 1);
    const std::span<const int> window(stream.data() + start, static_cast<size_t>(length));
    const Tensor logits = ReferenceForward(config, weights, window);
    double sum = 0;
    for (int64_t t = 0; t < length; ++t) {
      const float* row = logits.data.data() + t * 41;
      double top = row[0], total = 0;
      for (int v = 1; v < 41; ++v) top = std::max(top, static_cast<double>(row[v]));
      for (int v = 0; v < 41; ++v) total += std::exp(row[v] - top);
      sum += top + std::log(total) - row[stream[static_cast<size_t>(start + t + 1)]];
    }
    per_window.push_back(sum / length);
    expected += sum / length / windows;
  }
  EXPECT_EQ(result.tokens, windows * length);
  EXPECT_NEAR(result.nll, expected, 1e-4);
  EXPECT_NEAR(result.perplexity(), std::exp(expected), 1e-3 * std::exp(expected));
  EXPECT_LT(result.nll_interval.low, result.nll);
  EXPECT_GT(result.nll_interval.high, result.nll);
  EXPECT_THAT(ErrorMessage([&] { eval::Perplexity(config, weights, stream, 300, 1, options); }),
              HasSubstr("needs 301 held-out tokens, but the validation split has 300"));
}

// Batched evaluation gives every sample the output it gets alone.
TEST_F(EvalTest, RunSamplesMatchesOneRequestAtATime) {
  ModelShape shape = testing::TinyShape(8, 16, tokenizer().vocab_size(), 1200);
  const ModelConfig config = MakePresetConfig("ma-pairs", shape);
  const ModelWeights weights = RandomWeights(config, 5);
  const eval::Haystack hay = haystack();
  std::vector<eval::Sample> samples;
  for (Task task : {Task::kNiahSingle, Task::kVt, Task::kCwe})
    for (int64_t length : {300, 700})
      samples.push_back(eval::MakeSample(tokenizer(), hay, task, length, 0.5, 2));
  EngineOptions options;
  options.weights_dtype = DType::kF32;
  options.kv_dtype = DType::kF32;
  int64_t last_done = -1;
  const std::vector<eval::SampleOutcome> together = eval::RunSamples(
      config, weights, tokenizer(), samples, options, [&](int64_t done, int64_t total) {
        EXPECT_EQ(total, 6);
        EXPECT_GE(done, last_done);
        last_done = done;
      });
  EXPECT_EQ(last_done, 6);
  ASSERT_EQ(together.size(), samples.size());
  for (size_t i = 0; i < samples.size(); ++i) {
    const std::vector<eval::SampleOutcome> alone =
        eval::RunSamples(config, weights, tokenizer(), std::span(&samples[i], 1), options);
    EXPECT_EQ(together[i].output, alone[0].output) << i;
    EXPECT_EQ(together[i].score, eval::ScoreOutput(samples[i].answers, together[i].output));
  }
}

}  // namespace
}  // namespace mixattn
