#include "train/corpus.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace mixattn {
namespace {

using testing::ErrorMessage;
using ::testing::HasSubstr;
using testing::TempDir;

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file << text;
}

// Documents of plain English-like lines, the same on every run: `documents` blocks of 3-8 lines,
// separated by blank lines.
std::string SampleCorpus(int documents) {
  static const char* const kWords[] = {
      "the",    "river", "was",    "cold",  "and",    "clear", "in",      "morning", "they",
      "walked", "along", "old",    "road",  "toward", "town",  "where",   "market",  "stood",
      "bread",  "costs", "twelve", "coins", "she",    "said",  "nothing", "more",    "than",
      "that",   "a",     "small",  "house", "on",     "hill",  "with",    "green",   "door"};
  constexpr int kWordCount = sizeof(kWords) / sizeof(kWords[0]);
  uint64_t state = 12345;
  const auto next = [&](int n) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<int>((state >> 33) % static_cast<uint64_t>(n));
  };
  std::string text;
  for (int d = 0; d < documents; ++d) {
    if (d > 0) text += "\n";
    const int lines = 3 + next(6);
    for (int l = 0; l < lines; ++l) {
      const int words = 6 + next(10);
      std::string line;
      for (int w = 0; w < words; ++w) {
        std::string word = kWords[next(kWordCount)];
        if (w == 0) word[0] = static_cast<char>(word[0] - 'a' + 'A');
        line += (w == 0 ? "" : " ") + word;
      }
      line += next(4) == 0 ? "? Is it " + std::to_string(next(100000)) + "." : ".";
      text += line + "\n";
    }
  }
  return text;
}

// One small tokenizer shared by the tests that need ids (training takes a moment).
class CorpusTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    WriteText(dir_->file("corpus.txt"), SampleCorpus(300));
    TokenizerTrainOptions options;
    options.vocab_size = 400;
    options.num_threads = 1;
    Tokenizer::Train({dir_->file("corpus.txt")}, dir_->file("tokenizer.model"), options);
    tokenizer_ = new Tokenizer(Tokenizer::Load(dir_->file("tokenizer.model")));
    documents_ = new std::vector<CorpusDocument>(ReadCorpus({dir_->file("corpus.txt")}));
  }
  static void TearDownTestSuite() {
    delete documents_;
    delete tokenizer_;
    delete dir_;
  }

  static TempDir* dir_;
  static Tokenizer* tokenizer_;
  static std::vector<CorpusDocument>* documents_;
};
TempDir* CorpusTokenizerTest::dir_ = nullptr;
Tokenizer* CorpusTokenizerTest::tokenizer_ = nullptr;
std::vector<CorpusDocument>* CorpusTokenizerTest::documents_ = nullptr;

// ---- documents ----------------------------------------------------------------------------

TEST(CorpusDocumentsTest, BlankLinesSeparateDocuments) {
  const std::vector<CorpusDocument> documents =
      SplitIntoDocuments("\n\nFirst line.\nSecond line.\n \t\nThird.\r\nFourth.\r\n\n\n", 3, "x");
  ASSERT_EQ(documents.size(), 2u);
  EXPECT_EQ(documents[0].text, "First line.\nSecond line.");
  EXPECT_EQ(documents[0].first_line, 3);
  EXPECT_EQ(documents[0].file_index, 3);
  EXPECT_EQ(documents[1].text, "Third.\nFourth.");  // CRLF read as LF
  EXPECT_EQ(documents[1].first_line, 6);
}

TEST(CorpusDocumentsTest, LongRunsAreCutAtMaxDocumentLines) {
  std::string text;
  for (int i = 1; i <= 7; ++i) text += "line " + std::to_string(i) + "\n";
  CorpusReadOptions options;
  options.max_document_lines = 3;
  const std::vector<CorpusDocument> documents = SplitIntoDocuments(text, 0, "x", options);
  ASSERT_EQ(documents.size(), 3u);
  EXPECT_EQ(documents[0].text, "line 1\nline 2\nline 3");
  EXPECT_EQ(documents[2].text, "line 7");
  EXPECT_EQ(documents[2].first_line, 7);
}

TEST(CorpusDocumentsTest, LastLineWithoutNewlineAndUtf8Text) {
  const std::vector<CorpusDocument> documents =
      SplitIntoDocuments("caf\xc3\xa9 \xe2\x80\x9cquoted\xe2\x80\x9d", 0, "x");
  ASSERT_EQ(documents.size(), 1u);
  EXPECT_EQ(documents[0].text, "caf\xc3\xa9 \xe2\x80\x9cquoted\xe2\x80\x9d");
}

TEST(CorpusDocumentsTest, InvalidUtf8NamesFileAndLine) {
  const std::string message =
      ErrorMessage([] { SplitIntoDocuments("fine\nalso fine\nLatin-1 caf\xe9\n", 0, "in.txt"); });
  EXPECT_THAT(message, HasSubstr("'in.txt' is not valid UTF-8: line 3"));
  EXPECT_THAT(message, HasSubstr("0xe9"));
  // Overlong encodings and surrogates are not UTF-8 either.
  EXPECT_THAT(ErrorMessage([] { SplitIntoDocuments("\xc0\xaf", 0, "x"); }), HasSubstr("UTF-8"));
  EXPECT_THAT(ErrorMessage([] { SplitIntoDocuments("\xed\xa0\x80", 0, "x"); }), HasSubstr("UTF-8"));
}

TEST(CorpusDocumentsTest, ReadCorpusErrorsNameTheFile) {
  TempDir dir;
  WriteText(dir.file("good.txt"), "Some text.\n\nMore text.\n");
  WriteText(dir.file("empty.txt"), "");
  WriteText(dir.file("blank.txt"), "\n  \n\t\n");
  EXPECT_THAT(ErrorMessage([&] {
                ReadCorpus({dir.file("good.txt"), dir.file("missing.txt")});
              }),
              HasSubstr("input '" + dir.file("missing.txt") + "' does not exist"));
  EXPECT_THAT(ErrorMessage([&] { ReadCorpus({dir.file("empty.txt")}); }),
              HasSubstr("input '" + dir.file("empty.txt") + "' is empty"));
  EXPECT_THAT(ErrorMessage([&] { ReadCorpus({dir.file("blank.txt")}); }),
              HasSubstr("holds only blank lines"));
  EXPECT_THAT(ErrorMessage([&] { ReadCorpus({dir.path()}); }), HasSubstr("is a directory"));
  EXPECT_THAT(ErrorMessage([&] { ReadCorpus({}); }), HasSubstr("no input files"));

  WriteText(dir.file("second.txt"), "Third document.\n");
  const std::vector<CorpusDocument> documents =
      ReadCorpus({dir.file("good.txt"), dir.file("second.txt")});
  ASSERT_EQ(documents.size(), 3u);
  EXPECT_EQ(documents[2].file_index, 1);
  EXPECT_EQ(documents[2].text, "Third document.");
}

// ---- the validation split -----------------------------------------------------------------

TEST(CorpusSplitTest, DeterministicForASeedAndDocumentDisjoint) {
  const DocumentSplit a = SplitDocuments(1000, 0.05, 7);
  const DocumentSplit b = SplitDocuments(1000, 0.05, 7);
  EXPECT_EQ(a.train, b.train);
  EXPECT_EQ(a.validation, b.validation);
  EXPECT_EQ(a.validation.size(), 50u);
  EXPECT_EQ(a.train.size(), 950u);
  // Every document exactly once: the split is a partition, so none straddles.
  std::vector<int64_t> all = a.train;
  all.insert(all.end(), a.validation.begin(), a.validation.end());
  std::sort(all.begin(), all.end());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(all[static_cast<size_t>(i)], i);
  // Another seed holds out other documents; training documents come out shuffled.
  const DocumentSplit c = SplitDocuments(1000, 0.05, 8);
  EXPECT_NE(a.validation, c.validation);
  EXPECT_FALSE(std::is_sorted(a.train.begin(), a.train.end()));
}

TEST(CorpusSplitTest, FixedValuesGuardAgainstGeneratorChanges) {
  // The split must be the same on every machine and build (a changed split would leak validation
  // documents into the training of a resumed run): pin one.
  const DocumentSplit split = SplitDocuments(10, 0.2, 1);
  EXPECT_EQ(split.validation, (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(split.train, (std::vector<int64_t>{8, 1, 9, 3, 0, 6, 7, 5}));
}

TEST(CorpusSplitTest, EdgeCases) {
  EXPECT_TRUE(SplitDocuments(10, 0.0, 1).validation.empty());
  EXPECT_EQ(SplitDocuments(10, 0.0, 1).train.size(), 10u);
  EXPECT_EQ(SplitDocuments(10, 0.001, 1).validation.size(), 1u);  // at least one
  EXPECT_EQ(SplitDocuments(2, 0.9, 1).train.size(), 1u);          // training keeps one
  EXPECT_EQ(SplitDocuments(1, 0.0, 1).train.size(), 1u);
  EXPECT_THAT(ErrorMessage([] { SplitDocuments(1, 0.1, 1); }), HasSubstr("at least 2 documents"));
  EXPECT_THAT(ErrorMessage([] { SplitDocuments(10, 1.0, 1); }), HasSubstr("[0, 1)"));
  EXPECT_THAT(ErrorMessage([] { SplitDocuments(10, -0.1, 1); }), HasSubstr("[0, 1)"));
}

// ---- tokenization -------------------------------------------------------------------------

TEST_F(CorpusTokenizerTest, DocumentsBecomeBosTokensEos) {
  int64_t last_done = -1, last_total = -1;
  const std::vector<std::vector<int>> tokens =
      TokenizeDocuments(*tokenizer_, *documents_, [&](int64_t done, int64_t total) {
        EXPECT_GE(done, last_done);
        last_done = done;
        last_total = total;
      });
  ASSERT_EQ(tokens.size(), documents_->size());
  int64_t total_bytes = 0;
  for (size_t d = 0; d < tokens.size(); ++d) {
    const std::string& text = (*documents_)[d].text;
    total_bytes += static_cast<int64_t>(text.size());
    ASSERT_GE(tokens[d].size(), 3u);
    EXPECT_EQ(tokens[d].front(), Tokenizer::kBosId);
    EXPECT_EQ(tokens[d].back(), Tokenizer::kEosId);
    const std::vector<int> encoded = tokenizer_->Encode(text);
    EXPECT_TRUE(std::equal(encoded.begin(), encoded.end(), tokens[d].begin() + 1));
    EXPECT_EQ(tokenizer_->Decode(tokens[d]), text);
  }
  EXPECT_EQ(last_done, total_bytes);
  EXPECT_EQ(last_total, total_bytes);
}

TEST_F(CorpusTokenizerTest, ConcatenationFollowsTheOrder) {
  const std::vector<std::vector<int>> documents = {{1, 10, 2}, {1, 11, 12, 2}, {1, 13, 2}};
  const std::vector<int64_t> order = {2, 0};
  EXPECT_EQ(ConcatenateDocuments(documents, order), (std::vector<int>{1, 13, 2, 1, 10, 2}));
}

// ---- long-range sequences -----------------------------------------------------------------

class CorpusLongRangeTest : public CorpusTokenizerTest {
 protected:
  static LongRangeOptions Options(int64_t length, int64_t count, int64_t min_distance,
                                  uint64_t seed,
                                  std::vector<LongRangeKind> kinds = LongRangeOptions{}.kinds) {
    LongRangeOptions options;
    options.sequence_length = length;
    options.count = count;
    options.min_distance = min_distance;
    options.kinds = std::move(kinds);
    options.seed = seed;
    return options;
  }
  // Sequences with the corpus's documents as filler.
  std::vector<LongRangeSequence> Make(const LongRangeOptions& options) {
    return MakeLongRangeSequences(*tokenizer_, TokenizeDocuments(*tokenizer_, *documents_),
                                  options);
  }
  std::vector<LongRangeSequence> Make(int64_t length, int64_t count, int64_t min_distance,
                                      uint64_t seed) {
    return Make(Options(length, count, min_distance, seed));
  }
  std::string Text(const LongRangeSequence& s, int64_t begin, int64_t end) {
    return tokenizer_->Decode(std::span<const int>(s.tokens).subspan(
        static_cast<size_t>(begin), static_cast<size_t>(end - begin)));
  }
};

TEST_F(CorpusLongRangeTest, ExactlyTTokensAndTheAnswerIsRecoverable) {
  const std::vector<LongRangeSequence> sequences = Make(300, 60, 0, 5);
  ASSERT_EQ(sequences.size(), 60u);
  int pass_keys = 0;
  for (const LongRangeSequence& s : sequences) {
    ASSERT_EQ(s.tokens.size(), 300u);
    EXPECT_EQ(s.tokens.front(), Tokenizer::kBosId);
    EXPECT_EQ(s.tokens.back(), Tokenizer::kEosId);
    EXPECT_EQ(s.answer_end, 299);
    EXPECT_LE(s.fact_end, s.query_begin);
    EXPECT_LT(s.query_begin, s.answer_begin);
    EXPECT_EQ(Text(s, s.answer_begin, s.answer_end), " " + s.answer + ".");
    // BOS and EOS occur only at the ends: filler dropped the documents' own markers.
    EXPECT_EQ(std::count(s.tokens.begin(), s.tokens.end(), Tokenizer::kBosId), 1);
    EXPECT_EQ(std::count(s.tokens.begin(), s.tokens.end(), Tokenizer::kEosId), 1);

    // Read the answer back from the planted text alone, as a model would have to.
    const std::string context = Text(s, 0, s.query_begin);
    const std::string fact = Text(s, s.fact_begin, s.fact_end);
    std::smatch match;
    if (s.kind == LongRangeKind::kPassKey) {
      ++pass_keys;
      EXPECT_TRUE(s.key.empty());
      EXPECT_EQ(fact, "\nThe pass key is " + s.answer + ". Remember it. " + s.answer +
                          " is the pass key.\n");
      ASSERT_TRUE(std::regex_search(context, match, std::regex("The pass key is (\\d{5})\\.")));
      EXPECT_EQ(match[1], s.answer);
      EXPECT_THAT(Text(s, s.query_begin, s.answer_begin),
                  HasSubstr("What is the pass key? The pass key is"));
    } else {
      EXPECT_EQ(fact, "\nThe value of key '" + s.key + "' is " + s.answer + ".\n");
      ASSERT_TRUE(std::regex_search(context, match,
                                    std::regex("The value of key '" + s.key + "' is (\\d{4})\\.")));
      EXPECT_EQ(match[1], s.answer);
      // The distractors are there too, each with a different key.
      const std::regex any_fact("The value of key '([a-z]+-[a-z]+)' is \\d{4}\\.");
      std::set<std::string> keys;
      for (auto it = std::sregex_iterator(context.begin(), context.end(), any_fact);
           it != std::sregex_iterator(); ++it) {
        keys.insert((*it)[1]);
      }
      EXPECT_EQ(keys.size(), 4u);
      EXPECT_EQ(keys.count(s.key), 1u);
      EXPECT_THAT(Text(s, s.query_begin, s.answer_begin),
                  HasSubstr("What is the value of key '" + s.key + "'?"));
    }
  }
  EXPECT_GT(pass_keys, 10);  // both kinds, about half each
  EXPECT_LT(pass_keys, 50);
}

TEST_F(CorpusLongRangeTest, DistancesCoverTheRequestedRange) {
  constexpr int64_t kLength = 512;
  const std::vector<LongRangeSequence> all = Make(kLength, 400, 0, 11);
  std::vector<int64_t> pass_key_distances;
  int64_t longest_possible = 0;
  for (const LongRangeSequence& s : all) {
    if (s.kind != LongRangeKind::kPassKey) continue;
    pass_key_distances.push_back(s.distance());
    // With the fact right after BOS, the distance is everything but BOS, fact, question, answer.
    longest_possible = kLength - 1 - (s.fact_end - s.fact_begin) - (kLength - s.query_begin);
    EXPECT_LE(s.distance(), longest_possible);
  }
  ASSERT_GT(pass_key_distances.size(), 100u);
  const auto [min, max] = std::minmax_element(pass_key_distances.begin(), pass_key_distances.end());
  EXPECT_LT(*min, longest_possible / 10) << "near facts";
  EXPECT_GT(*max, longest_possible * 9 / 10) << "far facts";
  // Roughly uniform: about a quarter in each quarter of the range.
  const auto in_top_quarter =
      std::count_if(pass_key_distances.begin(), pass_key_distances.end(),
                    [&](int64_t d) { return d > longest_possible * 3 / 4; });
  EXPECT_GT(in_top_quarter, static_cast<int64_t>(pass_key_distances.size()) / 8);

  // A minimum distance pushes every fact at least that far back (beyond a sliding window).
  for (const LongRangeSequence& s : Make(768, 100, 300, 12)) {
    EXPECT_GE(s.distance(), 300);
    EXPECT_EQ(s.tokens.size(), 768u);
  }
}

TEST_F(CorpusLongRangeTest, DeterministicForASeed) {
  const std::vector<LongRangeSequence> a = Make(256, 20, 0, 3);
  const std::vector<LongRangeSequence> b = Make(256, 20, 0, 3);
  const std::vector<LongRangeSequence> c = Make(256, 20, 0, 4);
  ASSERT_EQ(a.size(), b.size());
  bool any_different = false;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].tokens, b[i].tokens);
    EXPECT_EQ(a[i].answer, b[i].answer);
    any_different |= a[i].tokens != c[i].tokens;
  }
  EXPECT_TRUE(any_different);
}

TEST_F(CorpusLongRangeTest, RepeatSequencesRepeatSpansAtLeastMinDistanceLater) {
  LongRangeOptions options = Options(512, 40, 100, 7, {LongRangeKind::kRepeat});
  const std::vector<LongRangeSequence> sequences = Make(options);
  ASSERT_EQ(sequences.size(), 40u);
  for (const LongRangeSequence& s : sequences) {
    ASSERT_EQ(s.kind, LongRangeKind::kRepeat);
    ASSERT_EQ(s.tokens.size(), 512u);
    EXPECT_EQ(s.tokens.front(), Tokenizer::kBosId);
    EXPECT_EQ(s.tokens.back(), Tokenizer::kEosId);
    EXPECT_EQ(std::count(s.tokens.begin(), s.tokens.end(), Tokenizer::kBosId), 1);
    EXPECT_EQ(std::count(s.tokens.begin(), s.tokens.end(), Tokenizer::kEosId), 1);
    EXPECT_TRUE(s.key.empty());
    EXPECT_TRUE(s.answer.empty());
    // 6 spans of at most 40 tokens fit twice in 512 with 100 between.
    EXPECT_EQ(s.spans.size(), 6u);
    // The reported (farthest) repeat is a token-for-token copy of its first occurrence.
    const int64_t length = s.fact_end - s.fact_begin;
    EXPECT_GE(length, 8);
    EXPECT_LE(length, 40);
    EXPECT_EQ(s.answer_end - s.answer_begin, length);
    EXPECT_EQ(s.query_begin, s.answer_begin);
    EXPECT_GE(s.distance(), 100);
    EXPECT_TRUE(std::equal(s.tokens.begin() + s.fact_begin, s.tokens.begin() + s.fact_end,
                           s.tokens.begin() + s.answer_begin));
  }

  // Dense copying: the share of tokens that continue an exact earlier 8-gram, a lower bound of what
  // an induction head can predict, is far larger than in pass key sequences of the same filler.
  const auto copyable_share = [](const std::vector<LongRangeSequence>& all) {
    int64_t copyable = 0, total = 0;
    for (const LongRangeSequence& s : all) {
      std::set<std::vector<int>> seen;
      for (size_t i = 8; i < s.tokens.size(); ++i) {
        std::vector<int> gram(s.tokens.begin() + static_cast<int64_t>(i) - 8,
                              s.tokens.begin() + static_cast<int64_t>(i) + 1);
        copyable += seen.count(gram) > 0;
        seen.insert(gram);
        ++total;
      }
    }
    return static_cast<double>(copyable) / static_cast<double>(total);
  };
  LongRangeOptions pass_keys = options;
  pass_keys.kinds = {LongRangeKind::kPassKey};
  const double repeat_share = copyable_share(sequences);
  const double pass_key_share = copyable_share(Make(pass_keys));
  EXPECT_GT(repeat_share, pass_key_share + 0.15) << repeat_share << " vs " << pass_key_share;

  // A short T gets fewer or shorter spans; one too short for a single 8-token span fails clearly.
  options.sequence_length = 60;
  options.min_distance = 20;
  options.count = 20;
  for (const LongRangeSequence& s :
       MakeLongRangeSequences(*tokenizer_, TokenizeDocuments(*tokenizer_, *documents_), options)) {
    EXPECT_EQ(s.tokens.size(), 60u);
    EXPECT_GE(s.spans.size(), 1u);
    EXPECT_GE(s.distance(), 20);
  }
  options.sequence_length = 30;
  EXPECT_THAT(ErrorMessage([&] { Make(options); }), HasSubstr("so at least 38"));
}

// Every span a repeat sequence lists is repeated token for token at least min_distance later.
// When the spans fill nearly all of T (16 asked at 257 tokens leave about 17 filler tokens), the
// repeats must still come at widely different shifts (second copy's start minus the first's): if
// nearly all of them were shifted by about one constant, copying by position would predict the
// repeats and the model would never need to find an earlier occurrence of its current token
// (session 7's pilots learned exactly that shortcut: they copied at a shift of about 135 and at
// no other).
TEST_F(CorpusLongRangeTest, DenseRepeatsComeAtDifferentDistances) {
  LongRangeOptions options = Options(257, 200, 16, 5, {LongRangeKind::kRandomRepeat});
  options.repeat_spans = 16;
  std::vector<int64_t> shifts;  // second - first of every span
  for (const LongRangeSequence& s : Make(options)) {
    ASSERT_GE(s.spans.size(), 3u);
    for (const LongRangeSequence::RepeatedSpan& span : s.spans) {
      EXPECT_GE(span.second - (span.first + span.length), 16);
      EXPECT_TRUE(std::equal(s.tokens.begin() + span.first,
                             s.tokens.begin() + span.first + span.length,
                             s.tokens.begin() + span.second));
      shifts.push_back(span.second - span.first);
    }
  }
  std::sort(shifts.begin(), shifts.end());
  const int64_t q1 = shifts[shifts.size() / 4], q3 = shifts[shifts.size() * 3 / 4];
  // Before the copies at one offset went in random order the middle half of the shifts lay
  // within 16 tokens (120-136), now within about 50 (109-159).
  EXPECT_GE(q3 - q1, 40) << "shift quartiles " << q1 << ", " << q3;
}

// A periodic sequence is BOS, a block of random tokens repeated to the end, EOS; the period
// differs from sequence to sequence, so only copying from one period back predicts the repeats.
TEST_F(CorpusLongRangeTest, PeriodicSequencesRepeatOneBlockAtAPeriodOfTheirOwn) {
  std::set<int64_t> periods;
  for (const LongRangeSequence& s : Make(Options(257, 100, 16, 3, {LongRangeKind::kPeriodic}))) {
    ASSERT_EQ(s.kind, LongRangeKind::kPeriodic);
    ASSERT_EQ(s.tokens.size(), 257u);
    EXPECT_EQ(s.tokens.front(), Tokenizer::kBosId);
    EXPECT_EQ(s.tokens.back(), Tokenizer::kEosId);
    const int64_t period = s.fact_end - s.fact_begin;
    EXPECT_GE(period, 16);
    EXPECT_LE(period, 127);  // two blocks fit in 255 tokens
    EXPECT_EQ(s.fact_begin, 1);
    EXPECT_EQ(s.answer_begin, 1 + period);
    for (size_t t = static_cast<size_t>(1 + period); t + 1 < s.tokens.size(); ++t)
      ASSERT_EQ(s.tokens[t], s.tokens[t - static_cast<size_t>(period)]) << t;
    // The spans list every repeat of the block; together they cover all but the first block.
    int64_t covered = 0;
    for (const LongRangeSequence::RepeatedSpan& span : s.spans) {
      EXPECT_EQ(span.first, 1);
      EXPECT_EQ((span.second - 1) % period, 0);
      covered += span.length;
    }
    EXPECT_EQ(covered, 255 - period);
    periods.insert(period);
  }
  EXPECT_GT(periods.size(), 50u);  // 100 draws from 112 periods
  EXPECT_EQ(ParseLongRangeKinds("periodic,pass_key"),
            (std::vector<LongRangeKind>{LongRangeKind::kPeriodic, LongRangeKind::kPassKey}));
  EXPECT_THAT(ErrorMessage([&] { Make(Options(33, 1, 0, 3, {LongRangeKind::kPeriodic})); }),
              HasSubstr("too short for a periodic sequence"));
}

TEST_F(CorpusLongRangeTest, RandomRepeatSpansAreRandomTokensOfTheFiller) {
  const LongRangeOptions options = Options(256, 30, 10, 9, {LongRangeKind::kRandomRepeat});
  const std::vector<std::vector<int>> filler = TokenizeDocuments(*tokenizer_, *documents_);
  std::set<int> filler_ids;
  for (const std::vector<int>& document : filler)
    filler_ids.insert(document.begin(), document.end());
  std::set<int> span_ids;
  for (const LongRangeSequence& s : MakeLongRangeSequences(*tokenizer_, filler, options)) {
    ASSERT_EQ(s.kind, LongRangeKind::kRandomRepeat);
    ASSERT_EQ(s.tokens.size(), 256u);
    EXPECT_GE(s.distance(), 10);
    ASSERT_TRUE(std::equal(s.tokens.begin() + s.fact_begin, s.tokens.begin() + s.fact_end,
                           s.tokens.begin() + s.answer_begin));
    span_ids.insert(s.tokens.begin() + s.fact_begin, s.tokens.begin() + s.fact_end);
  }
  // Every span token is one the filler holds (never BOS or EOS: TokenizeDocuments' markers are
  // dropped), and the spans spread over the whole set, not the frequent few.
  for (const int id : span_ids) {
    EXPECT_TRUE(filler_ids.count(id) > 0) << id;
    EXPECT_NE(id, Tokenizer::kBosId);
    EXPECT_NE(id, Tokenizer::kEosId);
  }
  EXPECT_GT(span_ids.size(), filler_ids.size() / 2);
}

// --long-range-alphabet N: random spans use only the N most frequent filler ids, every one of
// them; a negative N is an error.
TEST_F(CorpusLongRangeTest, RandomAlphabetIsTheMostFrequentFillerIds) {
  const std::vector<std::vector<int>> filler = TokenizeDocuments(*tokenizer_, *documents_);
  std::map<int, int64_t> counts;
  for (const std::vector<int>& document : filler) {
    for (const int id : document)
      if (id != Tokenizer::kBosId && id != Tokenizer::kEosId) ++counts[id];
  }
  constexpr int64_t kAlphabet = 12;
  ASSERT_GT(static_cast<int64_t>(counts.size()), 2 * kAlphabet);
  std::vector<int64_t> sorted_counts;
  for (const auto& [id, count] : counts) sorted_counts.push_back(count);
  std::sort(sorted_counts.rbegin(), sorted_counts.rend());
  const int64_t threshold = sorted_counts[kAlphabet - 1];  // the 12th largest count

  for (const LongRangeKind kind : {LongRangeKind::kPeriodic, LongRangeKind::kRandomRepeat}) {
    LongRangeOptions options = Options(257, 40, 16, 4, {kind});
    options.random_alphabet = kAlphabet;
    std::set<int> span_ids;
    for (const LongRangeSequence& s : MakeLongRangeSequences(*tokenizer_, filler, options)) {
      for (const LongRangeSequence::RepeatedSpan& span : s.spans) {
        span_ids.insert(s.tokens.begin() + span.first, s.tokens.begin() + span.first + span.length);
      }
    }
    EXPECT_EQ(static_cast<int64_t>(span_ids.size()), kAlphabet) << LongRangeKindName(kind);
    for (const int id : span_ids) EXPECT_GE(counts[id], threshold) << id;
  }
  LongRangeOptions options = Options(257, 1, 16, 4, {LongRangeKind::kPeriodic});
  options.random_alphabet = -1;
  EXPECT_THAT(ErrorMessage([&] { MakeLongRangeSequences(*tokenizer_, filler, options); }),
              HasSubstr("random alphabet must be >= 0"));
}

TEST(LongRangeKindsTest, ParsesAListAndRejectsUnknownOrRepeatedKinds) {
  EXPECT_EQ(ParseLongRangeKinds("pass_key,key_value,repeat"),
            (std::vector<LongRangeKind>{LongRangeKind::kPassKey, LongRangeKind::kKeyValue,
                                        LongRangeKind::kRepeat}));
  EXPECT_EQ(ParseLongRangeKinds("repeat"), std::vector<LongRangeKind>{LongRangeKind::kRepeat});
  EXPECT_THAT(ErrorMessage([] { ParseLongRangeKinds("pass_key,copy"); }),
              HasSubstr("unknown long-range kind 'copy'"));
  EXPECT_THAT(ErrorMessage([] { ParseLongRangeKinds(""); }), HasSubstr("unknown long-range kind"));
  EXPECT_THAT(ErrorMessage([] { ParseLongRangeKinds("repeat,repeat"); }),
              HasSubstr("listed twice"));
  for (const LongRangeKind kind : {LongRangeKind::kPassKey, LongRangeKind::kKeyValue,
                                   LongRangeKind::kRepeat, LongRangeKind::kRandomRepeat}) {
    EXPECT_EQ(ParseLongRangeKinds(LongRangeKindName(kind)), std::vector<LongRangeKind>{kind});
  }
}

TEST_F(CorpusLongRangeTest, ClearErrors) {
  EXPECT_THAT(ErrorMessage([&] { Make(20, 1, 0, 1); }), HasSubstr("is too short"));
  EXPECT_THAT(ErrorMessage([&] { Make(200, 5, 190, 1); }), HasSubstr("so at least"));
  EXPECT_TRUE(Make(200, 0, 0, 1).empty());
  LongRangeOptions options;
  options.sequence_length = 100;
  options.count = 1;
  EXPECT_THAT(ErrorMessage([&] {
                MakeLongRangeSequences(*tokenizer_, {{1, 2}}, options);
              }),
              HasSubstr("filler"));
}

}  // namespace
}  // namespace mixattn
