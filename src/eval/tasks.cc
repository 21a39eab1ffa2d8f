#include "eval/tasks.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <set>
#include <utility>

#include "core/error.h"
#include "core/random.h"
#include "train/corpus.h"

namespace mixattn::eval {
namespace {

const std::vector<std::string> kTaskNames = {
    "niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe",
    "fwe",         "copy"};

// Ordinary English nouns for cwe's word lists.
constexpr std::array<const char*, 64> kWordPool = {
    "apple",  "bread",  "chair",   "dog",     "river",    "house",   "garden",  "window",
    "table",  "horse",  "church",  "letter",  "money",    "paper",   "stone",   "water",
    "field",  "market", "school",  "bridge",  "forest",   "island",  "summer",  "winter",
    "mother", "father", "doctor",  "soldier", "king",     "city",    "road",    "ship",
    "fire",   "wind",   "bird",    "flower",  "music",    "night",   "morning", "corn",
    "silver", "gold",   "iron",    "cloud",   "mountain", "valley",  "wheel",   "candle",
    "basket", "hammer", "shadow",  "sheep",   "tower",    "garment", "temple",  "harvest",
    "engine", "office", "village", "coffee",  "blanket",  "pocket",  "ladder",  "mirror"};

constexpr int kCommonWords = 10;      // cwe asks for these
constexpr int kFrequentWords = 3;     // fwe asks for these
constexpr int kCodedVocabulary = 40;  // fwe's coded words

// Numbers drawn for a sample, independent of the haystack slice: the haystack takes its own seed.
uint64_t SubSeed(uint64_t seed, uint64_t stream) {
  Rng rng(seed ^ (0x9e3779b97f4a7c15ull * (stream + 1)));
  return rng.NextU64();
}

std::vector<int> Append(std::vector<int> a, const std::vector<int>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// "a", "a and b", "a, b and c".
std::string JoinList(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += i + 1 == items.size() ? " and " : ", ";
    out += items[i];
  }
  return out;
}

struct Fact {
  std::vector<int> tokens;
  int64_t offset = 0;   // filler tokens before it
  bool anchor = false;  // the queried fact whose depth and distance are reported
};

// Samples with facts hidden in haystack text: BOS, filler with the facts inserted at their
// offsets, question. `place` gets the filler length and sets every fact's offset.
template <typename Place>
Sample NeedleSample(const Tokenizer& tokenizer, const Haystack& haystack, Task task, int64_t length,
                    double depth, uint64_t seed, std::vector<Fact> facts,
                    const std::string& question, std::vector<std::string> answers,
                    const std::string& continuation, Place place) {
  const std::vector<int> question_tokens = tokenizer.Encode(question);
  int64_t fixed = 1 + static_cast<int64_t>(question_tokens.size());
  for (const Fact& fact : facts) fixed += static_cast<int64_t>(fact.tokens.size());
  if (length < fixed) {
    Fail("context length ", length, " is too short for ", TaskName(task),
         ": its facts and question take ", fixed, " tokens");
  }
  const int64_t filler_total = length - fixed;
  place(filler_total, facts);
  std::stable_sort(facts.begin(), facts.end(),
                   [](const Fact& a, const Fact& b) { return a.offset < b.offset; });
  const std::vector<int> filler = haystack.Take(filler_total, SubSeed(seed, 1));

  Sample sample;
  sample.task = task;
  sample.length = length;
  sample.depth = depth;
  sample.answers = std::move(answers);
  sample.max_tokens = static_cast<int64_t>(tokenizer.Encode(continuation).size()) + 4;
  std::vector<int>& prompt = sample.prompt;
  prompt.reserve(static_cast<size_t>(length));
  prompt.push_back(tokenizer.bos_id());
  int64_t used = 0, anchor_end = 0;
  for (const Fact& fact : facts) {
    prompt.insert(prompt.end(), filler.begin() + used, filler.begin() + fact.offset);
    used = fact.offset;
    prompt.insert(prompt.end(), fact.tokens.begin(), fact.tokens.end());
    if (fact.anchor) anchor_end = static_cast<int64_t>(prompt.size());
  }
  prompt.insert(prompt.end(), filler.begin() + used, filler.end());
  sample.distance = static_cast<int64_t>(prompt.size()) - anchor_end;
  prompt.insert(prompt.end(), question_tokens.begin(), question_tokens.end());
  MIXATTN_CHECK(static_cast<int64_t>(prompt.size()) == length);
  return sample;
}

// The anchor at depth * filler, every other fact anywhere.
auto AnchorAtDepth(double depth, Rng& rng) {
  return [depth, &rng](int64_t filler_total, std::vector<Fact>& facts) {
    for (Fact& fact : facts) {
      fact.offset =
          fact.anchor
              ? static_cast<int64_t>(std::llround(depth * static_cast<double>(filler_total)))
              : static_cast<int64_t>(rng.Below(static_cast<uint64_t>(filler_total + 1)));
    }
  };
}

// BOS, haystack text with the span at depth * filler, the span again.
Sample CopySample(const Tokenizer& tokenizer, const Haystack& haystack, int64_t length,
                  double depth, uint64_t seed) {
  const int64_t fixed = 1 + 2 * kCopySpanTokens;
  if (length < fixed) {
    Fail("context length ", length, " is too short for copy: BOS and two copies of its ",
         kCopySpanTokens, "-token span take ", fixed, " tokens");
  }
  Rng rng(SubSeed(seed, 0));
  const std::vector<int> span = haystack.RandomTokens(kCopySpanTokens, rng);
  const int64_t filler_total = length - fixed;
  const auto offset = static_cast<int64_t>(std::llround(depth * static_cast<double>(filler_total)));
  const std::vector<int> filler = haystack.Take(filler_total, SubSeed(seed, 1));
  Sample sample;
  sample.task = Task::kCopy;
  sample.length = length;
  sample.depth = depth;
  sample.answers = {tokenizer.Decode(std::span<const int>(span).subspan(1))};
  std::vector<int>& prompt = sample.prompt;
  prompt.reserve(static_cast<size_t>(length));
  prompt.push_back(tokenizer.bos_id());
  prompt.insert(prompt.end(), filler.begin(), filler.begin() + offset);
  prompt.insert(prompt.end(), span.begin(), span.end());
  prompt.insert(prompt.end(), filler.begin() + offset, filler.end());
  sample.distance = filler_total - offset;
  sample.copy_begin = static_cast<int64_t>(prompt.size());
  prompt.insert(prompt.end(), span.begin(), span.end());
  MIXATTN_CHECK(static_cast<int64_t>(prompt.size()) == length);
  return sample;
}

// `count` distinct keys.
std::vector<std::string> DistinctKeys(int count, Rng& rng) {
  std::set<std::string> used;
  std::vector<std::string> keys;
  while (static_cast<int>(keys.size()) < count) {
    std::string key = MakeFactKey(rng);
    if (used.insert(key).second) keys.push_back(std::move(key));
  }
  return keys;
}

std::vector<std::string> DistinctValues(int count, Rng& rng) {
  std::set<std::string> used;
  std::vector<std::string> values;
  while (static_cast<int>(values.size()) < count) {
    std::string value = MakeFactValue(rng);
    if (used.insert(value).second) values.push_back(std::move(value));
  }
  return values;
}

// The pieces of a word-list prompt (cwe, fwe), each encoded once: the introduction, the
// question, every word (with its leading space) and the tokens left for the list in a prompt of
// `length` tokens.
struct WordList {
  std::vector<int> introduction, question;
  std::vector<std::vector<int>> word_tokens;  // [words]
  int64_t budget = 0;

  WordList(const Tokenizer& tokenizer, int64_t length, const std::string& introduction_text,
           const std::string& question_text, const std::vector<std::string>& words)
      : introduction(tokenizer.Encode(introduction_text)),
        question(tokenizer.Encode(question_text)) {
    for (const std::string& word : words) word_tokens.push_back(tokenizer.Encode(" " + word));
    budget = length - 1 - static_cast<int64_t>(introduction.size() + question.size());
  }
  // Tokens of a list holding counts[i] copies of word i.
  int64_t Tokens(const std::vector<int64_t>& counts) const {
    int64_t total = 0;
    for (size_t i = 0; i < counts.size(); ++i)
      total += counts[i] * static_cast<int64_t>(word_tokens[i].size());
    return total;
  }
};

// Word-list samples: BOS, the introduction, `counts[i]` copies of word i shuffled, newline
// padding to the exact length, the question.
Sample ListSample(const Tokenizer& tokenizer, Task task, int64_t length, uint64_t seed,
                  const WordList& list, const std::vector<int64_t>& counts,
                  std::vector<std::string> answers, const std::string& continuation) {
  std::vector<int> entries;
  for (size_t i = 0; i < counts.size(); ++i)
    entries.insert(entries.end(), counts[i], static_cast<int>(i));
  Rng rng(SubSeed(seed, 2));
  for (size_t i = entries.size(); i > 1; --i) std::swap(entries[i - 1], entries[rng.Below(i)]);

  Sample sample;
  sample.task = task;
  sample.length = length;
  sample.answers = std::move(answers);
  sample.max_tokens = static_cast<int64_t>(tokenizer.Encode(continuation).size()) + 4;
  std::vector<int>& prompt = sample.prompt;
  prompt.push_back(tokenizer.bos_id());
  prompt = Append(std::move(prompt), list.introduction);
  for (int entry : entries)
    prompt = Append(std::move(prompt), list.word_tokens[static_cast<size_t>(entry)]);
  const std::vector<int> newline = tokenizer.Encode("\n");
  MIXATTN_CHECK(!newline.empty());
  while (static_cast<int64_t>(prompt.size() + list.question.size()) < length)
    prompt.push_back(newline.back());
  prompt = Append(std::move(prompt), list.question);
  MIXATTN_CHECK(static_cast<int64_t>(prompt.size()) == length);
  return sample;
}

Sample CommonWordsSample(const Tokenizer& tokenizer, int64_t length, uint64_t seed) {
  Rng rng(SubSeed(seed, 0));
  std::vector<std::string> words(kWordPool.begin(), kWordPool.end());
  for (size_t i = words.size(); i > 1; --i) std::swap(words[i - 1], words[rng.Below(i)]);
  const std::string introduction =
      "\nBelow is a list of words. Some of them appear more often than the others.\n";
  const std::string question =
      "\nWhat are the 10 most common words in the list above? The 10 most "
      "common words are";
  const WordList list(tokenizer, length, introduction, question, words);
  // The common words take about half the list; each other word appears a quarter as often (at
  // least once, always fewer times than a common word), as many of them as fit.
  int64_t common_tokens = 0;
  for (int i = 0; i < kCommonWords; ++i)
    common_tokens += static_cast<int64_t>(list.word_tokens[static_cast<size_t>(i)].size());
  const int64_t common_count = std::max<int64_t>(2, list.budget / 2 / common_tokens);
  const int64_t rare_count = std::max<int64_t>(1, common_count / 4);
  std::vector<int64_t> counts(words.size(), 0);
  for (int i = 0; i < kCommonWords; ++i) counts[static_cast<size_t>(i)] = common_count;
  if (list.Tokens(counts) > list.budget) {
    Fail("context length ", length, " is too short for cwe: ", kCommonWords,
         " words twice each, the introduction and the question take ",
         length - list.budget + list.Tokens(counts), " tokens");
  }
  for (bool added = true; added;) {
    added = false;
    for (size_t i = kCommonWords; i < words.size(); ++i) {
      if (counts[i] < rare_count &&
          list.Tokens(counts) + static_cast<int64_t>(list.word_tokens[i].size()) <= list.budget) {
        ++counts[i];
        added = true;
      }
    }
  }
  std::vector<std::string> answers(words.begin(), words.begin() + kCommonWords);
  return ListSample(tokenizer, Task::kCwe, length, seed, list, counts, answers,
                    " " + JoinList(answers) + ".");
}

// A pronounceable nonsense word: consonant, vowel, consonant, vowel, consonant.
std::string CodedWord(Rng& rng) {
  static constexpr std::string_view kConsonants = "bdfgklmnprstvz";
  static constexpr std::string_view kVowels = "aeiou";
  std::string word;
  for (int i = 0; i < 5; ++i) {
    const std::string_view letters = i % 2 == 0 ? kConsonants : kVowels;
    word += letters[rng.Below(letters.size())];
  }
  return word;
}

Sample FrequentWordsSample(const Tokenizer& tokenizer, int64_t length, uint64_t seed) {
  Rng rng(SubSeed(seed, 0));
  std::set<std::string> used;
  std::vector<std::string> words;
  while (static_cast<int>(words.size()) < kCodedVocabulary) {
    std::string word = CodedWord(rng);
    if (used.insert(word).second) words.push_back(std::move(word));
  }
  const std::string introduction =
      "\nBelow is a coded text. Keep track of how often each coded word appears.\n";
  const std::string question =
      "\nWhat are the 3 most frequent coded words in the text above? The "
      "3 most frequent coded words are";
  const WordList list(tokenizer, length, introduction, question, words);
  // Zipf frequencies with exponent 2, as RULER draws them: the word of rank r appears
  // floor(K / r^2) times, for the largest K whose list fits. K >= 18 keeps the top three strictly
  // ahead of the fourth (18, 4, 2 vs 1).
  auto counts_for = [&](int64_t k) {
    std::vector<int64_t> counts(words.size());
    for (size_t r = 0; r < words.size(); ++r)
      counts[r] = k / static_cast<int64_t>((r + 1) * (r + 1));
    return counts;
  };
  int64_t k = 18;
  if (list.Tokens(counts_for(k)) > list.budget) {
    Fail("context length ", length,
         " is too short for fwe: its shortest list, the introduction "
         "and the question take ",
         length - list.budget + list.Tokens(counts_for(k)), " tokens");
  }
  while (list.Tokens(counts_for(k + 1)) <= list.budget) ++k;
  std::vector<std::string> answers(words.begin(), words.begin() + kFrequentWords);
  return ListSample(tokenizer, Task::kFwe, length, seed, list, counts_for(k), answers,
                    " " + JoinList(answers) + ".");
}

bool IsWordChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }

}  // namespace

const std::vector<std::string>& TaskNames() { return kTaskNames; }

std::string_view TaskName(Task task) { return kTaskNames[static_cast<size_t>(task)]; }

Task ParseTask(std::string_view name) {
  for (size_t i = 0; i < kTaskNames.size(); ++i) {
    if (kTaskNames[i] == name) return static_cast<Task>(i);
  }
  std::string known;
  for (const std::string& task : kTaskNames) known += (known.empty() ? "" : ", ") + task;
  Fail("unknown task '", name, "'; the tasks are ppl, ", known);
}

bool TaskHasDepth(Task task) { return task != Task::kCwe && task != Task::kFwe; }

Haystack::Haystack(const Tokenizer& tokenizer, std::vector<int> stream, int64_t min_tokens) {
  const std::vector<int> separator = tokenizer.Encode("\n\n");
  const std::vector<int> newline = tokenizer.Encode("\n");
  line_starts_.push_back(0);
  for (int id : stream) {
    if (id == tokenizer.bos_id()) {
      if (!text_.empty()) text_.insert(text_.end(), separator.begin(), separator.end());
      line_starts_.push_back(static_cast<int64_t>(text_.size()));
      continue;
    }
    if (id == tokenizer.eos_id()) continue;
    text_.push_back(id);
    if (newline.size() == 1 && id == newline[0])
      line_starts_.push_back(static_cast<int64_t>(text_.size()));
  }
  if (static_cast<int64_t>(text_.size()) < std::max<int64_t>(min_tokens, 1)) {
    Fail("the held-out text has ", text_.size(), " tokens; the evaluation needs at least ",
         std::max<int64_t>(min_tokens, 1));
  }
  while (!line_starts_.empty() && line_starts_.back() >= static_cast<int64_t>(text_.size()))
    line_starts_.pop_back();
  distinct_ = text_;
  std::sort(distinct_.begin(), distinct_.end());
  distinct_.erase(std::unique(distinct_.begin(), distinct_.end()), distinct_.end());
}

std::vector<int> Haystack::RandomTokens(int64_t count, Rng& rng) const {
  return mixattn::RandomTokens(distinct_, count, rng);
}

std::vector<int> Haystack::Take(int64_t count, uint64_t seed) const {
  Rng rng(seed);
  const int64_t n = size();
  int64_t at = line_starts_[rng.Below(line_starts_.size())];
  std::vector<int> out;
  out.reserve(static_cast<size_t>(std::max<int64_t>(count, 0)));
  while (static_cast<int64_t>(out.size()) < count) {
    out.push_back(text_[static_cast<size_t>(at)]);
    at = (at + 1) % n;
  }
  return out;
}

Sample MakeSample(const Tokenizer& tokenizer, const Haystack& haystack, Task task, int64_t length,
                  double depth, uint64_t seed) {
  if (!(depth >= 0.0 && depth <= 1.0)) Fail("needle depth ", depth, " must be in [0, 1]");
  Rng rng(SubSeed(seed, 0));
  auto facts_of = [&](const std::vector<std::pair<std::string, bool>>& texts) {
    std::vector<Fact> facts;
    for (const auto& [text, anchor] : texts) facts.push_back({tokenizer.Encode(text), 0, anchor});
    return facts;
  };
  switch (task) {
    case Task::kNiahSingle: {
      const std::string key = MakePassKey(rng);
      return NeedleSample(tokenizer, haystack, task, length, depth, seed,
                          facts_of({{PassKeyFact(key), true}}), PassKeyQuestion(), {key},
                          " " + key + ".", AnchorAtDepth(depth, rng));
    }
    case Task::kNiahMultikey: {
      const std::vector<std::string> keys = DistinctKeys(4, rng);
      const std::vector<std::string> values = DistinctValues(4, rng);
      std::vector<std::pair<std::string, bool>> texts;
      for (int i = 0; i < 4; ++i) texts.push_back({KeyValueFact(keys[i], values[i]), i == 0});
      return NeedleSample(tokenizer, haystack, task, length, depth, seed, facts_of(texts),
                          KeyValueQuestion(keys[0]), {values[0]}, " " + values[0] + ".",
                          AnchorAtDepth(depth, rng));
    }
    case Task::kNiahMultivalue: {
      const std::string key = DistinctKeys(1, rng)[0];
      const std::vector<std::string> values = DistinctValues(4, rng);
      std::vector<std::pair<std::string, bool>> texts;
      for (int i = 0; i < 4; ++i) texts.push_back({KeyValueFact(key, values[i]), i == 0});
      return NeedleSample(
          tokenizer, haystack, task, length, depth, seed, facts_of(texts),
          "\nWhat are all the values of key '" + key + "'? The values of key '" + key + "' are",
          values, " " + JoinList(values) + ".", AnchorAtDepth(depth, rng));
    }
    case Task::kNiahMultiquery: {
      const std::vector<std::string> keys = DistinctKeys(4, rng);
      const std::vector<std::string> values = DistinctValues(4, rng);
      std::vector<std::pair<std::string, bool>> texts;
      for (int i = 0; i < 4; ++i) texts.push_back({KeyValueFact(keys[i], values[i]), i == 0});
      return NeedleSample(
          tokenizer, haystack, task, length, depth, seed, facts_of(texts),
          "\nWhat are the values of keys '" + keys[0] + "' and '" + keys[1] + "'? The values are",
          {values[0], values[1]}, " " + values[0] + " and " + values[1] + ".",
          AnchorAtDepth(depth, rng));
    }
    case Task::kVt: {
      // a = value at the depth; b = a and c = b later, in order; two unrelated facts anywhere.
      const std::vector<std::string> keys = DistinctKeys(5, rng);
      const std::vector<std::string> values = DistinctValues(3, rng);
      auto assign = [](const std::string& to, const std::string& from) {
        return "\nThe value of key '" + to + "' is the value of key '" + from + "'.\n";
      };
      std::vector<Fact> facts = facts_of({{KeyValueFact(keys[0], values[0]), true},
                                          {assign(keys[1], keys[0]), false},
                                          {assign(keys[2], keys[1]), false},
                                          {KeyValueFact(keys[3], values[1]), false},
                                          {KeyValueFact(keys[4], values[2]), false}});
      auto place = [&](int64_t filler_total, std::vector<Fact>& placed) {
        const int64_t first =
            static_cast<int64_t>(std::llround(depth * static_cast<double>(filler_total)));
        int64_t hops[2];
        for (int64_t& hop : hops)
          hop = first +
                static_cast<int64_t>(rng.Below(static_cast<uint64_t>(filler_total - first + 1)));
        std::sort(hops, hops + 2);
        placed[0].offset = first;
        placed[1].offset = hops[0];
        placed[2].offset = hops[1];
        for (size_t i = 3; i < placed.size(); ++i)
          placed[i].offset =
              static_cast<int64_t>(rng.Below(static_cast<uint64_t>(filler_total + 1)));
      };
      return NeedleSample(tokenizer, haystack, task, length, depth, seed, std::move(facts),
                          KeyValueQuestion(keys[2]), {values[0]}, " " + values[0] + ".", place);
    }
    case Task::kCwe:
      return CommonWordsSample(tokenizer, length, seed);
    case Task::kFwe:
      return FrequentWordsSample(tokenizer, length, seed);
    case Task::kCopy:
      return CopySample(tokenizer, haystack, length, depth, seed);
  }
  MIXATTN_CHECK(false);
  return {};
}

double ScoreOutput(std::span<const std::string> answers, std::string_view output) {
  if (answers.empty()) return 0.0;
  int found = 0;
  for (const std::string& answer : answers) {
    for (size_t at = output.find(answer); at != std::string_view::npos;
         at = output.find(answer, at + 1)) {
      const bool starts = at == 0 || !IsWordChar(output[at - 1]);
      const size_t end = at + answer.size();
      const bool ends = end == output.size() || !IsWordChar(output[end]);
      if (starts && ends) {
        ++found;
        break;
      }
    }
  }
  return static_cast<double>(found) / static_cast<double>(answers.size());
}

}  // namespace mixattn::eval
