#include "train/corpus.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <set>
#include <tuple>
#include <utility>

#include "core/error.h"
#include "core/random.h"
#include "tokenizer/tokenizer.h"

namespace mixattn {
namespace {

namespace fs = std::filesystem;

// Length of the valid UTF-8 character at the start of `text` (RFC 3629: no overlong forms, no
// surrogates, nothing above U+10FFFF), or 0 when the bytes there are not one.
size_t Utf8CharLength(std::string_view text) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte(0);
  if (lead < 0x80) return 1;
  size_t length = 0;
  unsigned char low = 0x80, high = 0xBF;  // allowed range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) low = 0xA0;   // overlong
    if (lead == 0xED) high = 0x9F;  // surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) low = 0x90;   // overlong
    if (lead == 0xF4) high = 0x8F;  // above U+10FFFF
  } else {
    return 0;
  }
  if (text.size() < length || byte(1) < low || byte(1) > high) return 0;
  for (size_t i = 2; i < length; ++i) {
    if ((byte(i) & 0xC0) != 0x80) return 0;
  }
  return length;
}

// Byte offset of the first invalid UTF-8 sequence in `text`, or npos.
size_t FindInvalidUtf8(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const size_t length = Utf8CharLength(text.substr(i));
    if (length == 0) return i;
    i += length;
  }
  return std::string_view::npos;
}

bool IsBlank(std::string_view line) {
  return line.find_first_not_of(" \t\r\f\v") == std::string_view::npos;
}

std::string ReadWholeFile(const std::string& path) {
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (status.type() == fs::file_type::not_found) Fail("input '", path, "' does not exist");
  if (error) Fail("cannot access input '", path, "': ", error.message());
  if (fs::is_directory(status)) Fail("input '", path, "' is a directory, expected a text file");
  if (!fs::is_regular_file(status)) Fail("input '", path, "' is not a regular file");
  std::ifstream file(path, std::ios::binary);
  if (!file) Fail("cannot open input '", path, "': ", std::strerror(errno));
  std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (file.bad()) Fail("cannot read input '", path, "'");
  return text;
}

// ---- long-range sequences -----------------------------------------------------------------

// Keys are "adjective-noun": 32 x 32 = 1024 distinct keys, each a few ordinary word pieces.
constexpr std::array<const char*, 32> kKeyAdjectives = {
    "amber", "azure",  "bold",   "brisk",  "calm",  "crimson", "dusty", "eager",
    "faint", "gentle", "golden", "hollow", "ivory", "jade",    "keen",  "lunar",
    "misty", "noble",  "olive",  "pale",   "quiet", "rapid",   "rusty", "silver",
    "tawny", "tidy",   "umber",  "vivid",  "warm",  "wild",    "young", "zesty"};
constexpr std::array<const char*, 32> kKeyNouns = {
    "falcon", "river",  "cedar",  "harbor",  "lantern", "meadow",  "otter",   "pebble",
    "quarry", "raven",  "summit", "thistle", "valley",  "willow",  "anchor",  "beacon",
    "canyon", "delta",  "ember",  "fern",    "glacier", "heron",   "island",  "juniper",
    "kettle", "lagoon", "maple",  "nectar",  "orchard", "prairie", "sparrow", "tundra"};

// One fact to plant: its tokens and whether it is the one asked about.
struct PlantedFact {
  std::vector<int> tokens;
  bool queried = false;
  int64_t offset = 0;  // filler tokens before it
};

// Filler text for long-range sequences: training documents without BOS/EOS, with the positions
// where their lines start so a slice can begin at a line, not mid-word.
class FillerSource {
 public:
  FillerSource(const Tokenizer& tokenizer, const std::vector<std::vector<int>>& documents,
               int64_t random_alphabet) {
    const std::vector<int> newline = tokenizer.Encode("\n");
    separator_ = tokenizer.Encode("\n\n");
    for (const std::vector<int>& document : documents) {
      auto begin = document.begin();
      auto end = document.end();
      if (begin != end && *begin == tokenizer.bos_id()) ++begin;
      if (begin != end && *(end - 1) == tokenizer.eos_id()) --end;
      if (begin == end) continue;
      Document filler;
      filler.tokens.assign(begin, end);
      filler.line_starts.push_back(0);
      if (newline.size() == 1) {
        for (size_t i = 0; i + 1 < filler.tokens.size(); ++i) {
          if (filler.tokens[i] == newline[0])
            filler.line_starts.push_back(static_cast<int64_t>(i) + 1);
        }
      }
      documents_.push_back(std::move(filler));
    }
    if (documents_.empty())
      Fail("long-range sequences need filler text, but the documents hold no tokens");
    std::vector<int64_t> counts;  // [largest id + 1]
    for (const Document& document : documents_) {
      for (const int token : document.tokens) {
        if (token >= static_cast<int>(counts.size())) counts.resize(token + 1);
        ++counts[token];
      }
    }
    std::vector<std::pair<int64_t, int>> by_count;  // (-count, id) of the ids present
    for (int token = 0; token < static_cast<int>(counts.size()); ++token)
      if (counts[token] > 0) by_count.emplace_back(-counts[token], token);
    std::sort(by_count.begin(), by_count.end());  // most frequent first, ties to the smaller id
    if (random_alphabet > 0 && random_alphabet < static_cast<int64_t>(by_count.size()))
      by_count.resize(static_cast<size_t>(random_alphabet));
    for (const auto& [negated_count, token] : by_count) alphabet_.push_back(token);
    std::sort(alphabet_.begin(), alphabet_.end());
  }

  // `length` tokens drawn independently and uniformly from the random-span alphabet (every
  // distinct token of the documents, or the most frequent ones): text that no language model
  // predicts.
  std::vector<int> Random(int64_t length, Rng& rng) const {
    return RandomTokens(alphabet_, length, rng);
  }

  // `length` tokens: a random document from a random line start on, continued by further random
  // documents (after a blank line) until long enough.
  std::vector<int> Take(int64_t length, Rng& rng) const {
    std::vector<int> filler;
    filler.reserve(static_cast<size_t>(length));
    bool first = true;
    while (static_cast<int64_t>(filler.size()) < length) {
      const Document& document = documents_[rng.Below(documents_.size())];
      int64_t start = 0;
      if (first) {
        start = document.line_starts[rng.Below(document.line_starts.size())];
        first = false;
      } else {
        filler.insert(filler.end(), separator_.begin(), separator_.end());
      }
      const int64_t take = std::min<int64_t>(static_cast<int64_t>(document.tokens.size()) - start,
                                             length - static_cast<int64_t>(filler.size()));
      if (take > 0) {
        filler.insert(filler.end(), document.tokens.begin() + start,
                      document.tokens.begin() + start + take);
      }
    }
    filler.resize(static_cast<size_t>(length));  // the separator may have overshot
    return filler;
  }

 private:
  struct Document {
    std::vector<int> tokens;
    std::vector<int64_t> line_starts;
  };
  std::vector<Document> documents_;
  std::vector<int> alphabet_;  // the ids random spans are drawn from, ascending
  std::vector<int> separator_;
};

// Lengths of the spans a repeat sequence repeats.
constexpr int64_t kRepeatSpanMin = 8;
constexpr int64_t kRepeatSpanMax = 40;

// A repeat or random_repeat sequence (corpus.h): options.repeat_spans spans of filler (or random
// tokens), each twice, the second copy at least min_distance tokens after the end of the first.
LongRangeSequence MakeRepeatSequence(const Tokenizer& tokenizer, const FillerSource& filler,
                                     const LongRangeOptions& options, LongRangeKind kind,
                                     Rng& rng) {
  LongRangeSequence sequence;
  sequence.kind = kind;
  const int64_t T = options.sequence_length;
  // Span lengths, cut short (and fewer spans) where T cannot hold them all twice.
  std::vector<int64_t> lengths;
  int64_t span_total = 0;
  for (int i = 0; i < options.repeat_spans; ++i) {
    const int64_t fits = (T - 2 - options.min_distance) / 2 - span_total;
    if (fits < kRepeatSpanMin) break;
    const int64_t drawn =
        kRepeatSpanMin +
        static_cast<int64_t>(rng.Below(static_cast<uint64_t>(kRepeatSpanMax - kRepeatSpanMin + 1)));
    lengths.push_back(std::min(drawn, fits));
    span_total += lengths.back();
  }
  if (lengths.empty()) {
    Fail("long-range sequence length ", T,
         " is too short: a repeat sequence needs two copies of a ", kRepeatSpanMin,
         "-token span, BOS and EOS plus a distance of ", options.min_distance,
         " tokens of filler, so at least ", 2 + 2 * kRepeatSpanMin + options.min_distance);
  }
  const int64_t filler_total = T - 2 - 2 * span_total;

  // Both copies are placed in the filler: the first at a uniform offset, the second uniformly
  // between min_distance filler tokens later and the end. Copies at the same offset go in a
  // random order. That matters when the spans fill most of T and the filler is short: then
  // nearly every first copy sits at offset 0 and every repeat at the end, and in a fixed order
  // (by span) the second half of the sequence would be the first half shifted by one constant
  // distance, which a model learns to copy by position instead of by content (docs/results.md,
  // session 7). In a random order each span's repeat is at its own distance.
  struct Copy {
    int64_t offset;  // filler tokens before it
    uint64_t order;  // random rank among copies at the same offset
    size_t span;
  };
  std::vector<Copy> copies;
  for (size_t i = 0; i < lengths.size(); ++i) {
    const int64_t first = static_cast<int64_t>(
        rng.Below(static_cast<uint64_t>(filler_total - options.min_distance + 1)));
    const int64_t second =
        first + options.min_distance +
        static_cast<int64_t>(
            rng.Below(static_cast<uint64_t>(filler_total - first - options.min_distance + 1)));
    copies.push_back({first, rng.NextU64(), i});
    copies.push_back({second, rng.NextU64(), i});
  }
  // A span's second copy is always later: its offset is at least min_distance >= 0 greater, and
  // on a tie (min_distance 0) the span's copies swap places, which leaves the sequence the same.
  std::sort(copies.begin(), copies.end(), [](const Copy& a, const Copy& b) {
    return std::tie(a.offset, a.order, a.span) < std::tie(b.offset, b.order, b.span);
  });

  std::vector<std::vector<int>> spans;
  for (const int64_t length : lengths) {
    spans.push_back(kind == LongRangeKind::kRandomRepeat ? filler.Random(length, rng)
                                                         : filler.Take(length, rng));
  }
  const std::vector<int> text = filler.Take(filler_total, rng);
  std::vector<int>& tokens = sequence.tokens;
  tokens.reserve(static_cast<size_t>(T));
  tokens.push_back(tokenizer.bos_id());
  std::vector<std::array<int64_t, 2>> begins(lengths.size());  // [span][copy]
  std::vector<int> placed(lengths.size(), 0);                  // copies of each span so far
  int64_t filler_used = 0;
  for (const Copy& copy : copies) {
    tokens.insert(tokens.end(), text.begin() + filler_used, text.begin() + copy.offset);
    filler_used = copy.offset;
    begins[copy.span][static_cast<size_t>(placed[copy.span]++)] =
        static_cast<int64_t>(tokens.size());
    tokens.insert(tokens.end(), spans[copy.span].begin(), spans[copy.span].end());
  }
  tokens.insert(tokens.end(), text.begin() + filler_used, text.end());
  tokens.push_back(tokenizer.eos_id());
  MIXATTN_CHECK(static_cast<int64_t>(tokens.size()) == T);

  // Report every span, and the farthest repeat as the fact and answer.
  for (size_t i = 0; i < lengths.size(); ++i)
    sequence.spans.push_back({begins[i][0], begins[i][1], lengths[i]});
  int64_t farthest = -1;
  for (const LongRangeSequence::RepeatedSpan& span : sequence.spans) {
    const int64_t distance = span.second - (span.first + span.length);
    if (distance <= farthest) continue;
    farthest = distance;
    sequence.fact_begin = span.first;
    sequence.fact_end = span.first + span.length;
    sequence.query_begin = sequence.answer_begin = span.second;
    sequence.answer_end = span.second + span.length;
  }
  return sequence;
}

// Periods of a periodic sequence.
constexpr int64_t kPeriodMin = 16;
constexpr int64_t kPeriodMax = 128;

// A periodic sequence (corpus.h): BOS, a block of n random tokens of the filler, repeated until
// T - 1 tokens, EOS; n is drawn uniformly from [kPeriodMin, min(kPeriodMax, (T - 2) / 2)], so
// every sequence repeats its block at least once, each at its own shift. All but the first
// block is predictable by copying, and only by copying from n tokens back, which position alone
// cannot tell from one sequence to the next: the classic data on which small transformers form
// induction heads (Olsson et al. 2022). min_distance does not apply (copies are adjacent).
LongRangeSequence MakePeriodicSequence(const Tokenizer& tokenizer, const FillerSource& filler,
                                       const LongRangeOptions& options, Rng& rng) {
  const int64_t T = options.sequence_length;
  const int64_t longest = std::min(kPeriodMax, (T - 2) / 2);
  if (longest < kPeriodMin) {
    Fail("long-range sequence length ", T,
         " is too short for a periodic sequence: BOS, EOS and two ", kPeriodMin,
         "-token blocks take ", 2 + 2 * kPeriodMin);
  }
  const int64_t period =
      kPeriodMin + static_cast<int64_t>(rng.Below(static_cast<uint64_t>(longest - kPeriodMin + 1)));
  const std::vector<int> block = filler.Random(period, rng);
  LongRangeSequence sequence;
  sequence.kind = LongRangeKind::kPeriodic;
  std::vector<int>& tokens = sequence.tokens;
  tokens.reserve(static_cast<size_t>(T));
  tokens.push_back(tokenizer.bos_id());
  for (int64_t i = 0; i < T - 2; ++i) tokens.push_back(block[static_cast<size_t>(i % period)]);
  tokens.push_back(tokenizer.eos_id());
  for (int64_t begin = 1 + period; begin < T - 1; begin += period) {
    sequence.spans.push_back({1, begin, std::min(period, T - 1 - begin)});
  }
  sequence.fact_begin = 1;
  sequence.fact_end = 1 + period;
  sequence.query_begin = sequence.answer_begin = 1 + period;
  sequence.answer_end = 1 + period + sequence.spans.front().length;
  return sequence;
}

LongRangeSequence MakeOneLongRangeSequence(const Tokenizer& tokenizer, const FillerSource& filler,
                                           const LongRangeOptions& options, Rng& rng) {
  const LongRangeKind kind = options.kinds[rng.Below(options.kinds.size())];
  if (kind == LongRangeKind::kRepeat || kind == LongRangeKind::kRandomRepeat) {
    return MakeRepeatSequence(tokenizer, filler, options, kind, rng);
  }
  if (kind == LongRangeKind::kPeriodic)
    return MakePeriodicSequence(tokenizer, filler, options, rng);
  LongRangeSequence sequence;
  sequence.kind = kind;
  std::vector<PlantedFact> facts;
  std::string question;
  if (sequence.kind == LongRangeKind::kPassKey) {
    sequence.answer = MakePassKey(rng);
    facts.push_back({tokenizer.Encode(PassKeyFact(sequence.answer)), true});
    question = PassKeyQuestion();
  } else {
    // Distinct keys; the values may repeat, the keys tell the facts apart.
    std::set<std::string> used;
    const int queried = static_cast<int>(rng.Below(static_cast<uint64_t>(options.key_value_pairs)));
    for (int i = 0; i < options.key_value_pairs; ++i) {
      std::string key;
      do {
        key = MakeFactKey(rng);
      } while (!used.insert(key).second);
      const std::string value = MakeFactValue(rng);
      facts.push_back({tokenizer.Encode(KeyValueFact(key, value)), i == queried});
      if (i == queried) {
        sequence.key = key;
        sequence.answer = value;
      }
    }
    question = KeyValueQuestion(sequence.key);
  }
  const std::vector<int> question_tokens = tokenizer.Encode(question);
  const std::vector<int> answer_tokens = tokenizer.Encode(" " + sequence.answer + ".");

  const int64_t T = options.sequence_length;
  int64_t fixed =
      2 + static_cast<int64_t>(question_tokens.size() + answer_tokens.size());  // BOS, EOS
  for (const PlantedFact& fact : facts) fixed += static_cast<int64_t>(fact.tokens.size());
  const int64_t filler_total = T - fixed;
  if (filler_total < options.min_distance) {
    Fail("long-range sequence length ", T, " is too short: a ", LongRangeKindName(sequence.kind),
         " sequence needs ", fixed,
         " tokens for its facts, question and answer plus a distance of ", options.min_distance,
         " tokens of filler, so at least ", fixed + options.min_distance);
  }

  // The gap after the queried fact is uniform in [min_distance, filler_total]; distractors land
  // anywhere in the filler. Ties keep the facts' order, so the layout is deterministic.
  for (PlantedFact& fact : facts) {
    if (fact.queried) {
      const int64_t gap_after =
          options.min_distance + static_cast<int64_t>(rng.Below(static_cast<uint64_t>(
                                     filler_total - options.min_distance + 1)));
      fact.offset = filler_total - gap_after;
    } else {
      fact.offset = static_cast<int64_t>(rng.Below(static_cast<uint64_t>(filler_total + 1)));
    }
  }
  std::stable_sort(facts.begin(), facts.end(),
                   [](const PlantedFact& a, const PlantedFact& b) { return a.offset < b.offset; });

  const std::vector<int> text = filler.Take(filler_total, rng);
  std::vector<int>& tokens = sequence.tokens;
  tokens.reserve(static_cast<size_t>(T));
  tokens.push_back(tokenizer.bos_id());
  int64_t filler_used = 0;
  for (const PlantedFact& fact : facts) {
    tokens.insert(tokens.end(), text.begin() + filler_used, text.begin() + fact.offset);
    filler_used = fact.offset;
    if (fact.queried) sequence.fact_begin = static_cast<int64_t>(tokens.size());
    tokens.insert(tokens.end(), fact.tokens.begin(), fact.tokens.end());
    if (fact.queried) sequence.fact_end = static_cast<int64_t>(tokens.size());
  }
  tokens.insert(tokens.end(), text.begin() + filler_used, text.end());
  sequence.query_begin = static_cast<int64_t>(tokens.size());
  tokens.insert(tokens.end(), question_tokens.begin(), question_tokens.end());
  sequence.answer_begin = static_cast<int64_t>(tokens.size());
  tokens.insert(tokens.end(), answer_tokens.begin(), answer_tokens.end());
  sequence.answer_end = static_cast<int64_t>(tokens.size());
  tokens.push_back(tokenizer.eos_id());
  MIXATTN_CHECK(static_cast<int64_t>(tokens.size()) == T);
  return sequence;
}

}  // namespace

std::vector<CorpusDocument> SplitIntoDocuments(std::string_view text, int file_index,
                                               const std::string& path,
                                               const CorpusReadOptions& options) {
  if (options.max_document_lines <= 0) {
    Fail("max_document_lines must be > 0, got ", options.max_document_lines);
  }
  const size_t invalid = FindInvalidUtf8(text);
  if (invalid != std::string_view::npos) {
    const int64_t line =
        1 + std::count(text.begin(), text.begin() + static_cast<int64_t>(invalid), '\n');
    Fail("input '", path, "' is not valid UTF-8: line ", line, " has a bad byte 0x", std::hex,
         static_cast<int>(static_cast<unsigned char>(text[invalid])),
         " (convert the file, e.g. iconv -f latin1 -t utf-8)");
  }
  std::vector<CorpusDocument> documents;
  CorpusDocument current;
  int lines_in_current = 0;
  const auto finish = [&]() {
    if (lines_in_current > 0) documents.push_back(std::move(current));
    current = CorpusDocument{};
    lines_in_current = 0;
  };
  int64_t line_number = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (IsBlank(line)) {
      finish();
      continue;
    }
    if (lines_in_current == 0) {
      current.file_index = file_index;
      current.first_line = line_number;
    } else {
      current.text += '\n';
    }
    current.text += line;
    if (++lines_in_current == options.max_document_lines) finish();
  }
  finish();
  return documents;
}

std::vector<CorpusDocument> ReadCorpus(const std::vector<std::string>& paths,
                                       const CorpusReadOptions& options) {
  if (paths.empty()) Fail("no input files given");
  std::vector<CorpusDocument> documents;
  for (size_t i = 0; i < paths.size(); ++i) {
    const std::string text = ReadWholeFile(paths[i]);
    std::vector<CorpusDocument> file_documents =
        SplitIntoDocuments(text, static_cast<int>(i), paths[i], options);
    if (file_documents.empty()) {
      Fail("input '", paths[i], "' ", text.empty() ? "is empty" : "holds only blank lines",
           ": no text to train on");
    }
    documents.insert(documents.end(), std::make_move_iterator(file_documents.begin()),
                     std::make_move_iterator(file_documents.end()));
  }
  return documents;
}

DocumentSplit SplitDocuments(int64_t num_documents, double validation_fraction, uint64_t seed) {
  if (!(validation_fraction >= 0.0 && validation_fraction < 1.0)) {
    Fail("validation fraction must be in [0, 1), got ", validation_fraction);
  }
  if (num_documents < 0) Fail("number of documents must be >= 0, got ", num_documents);
  int64_t validation_count = 0;
  if (validation_fraction > 0.0) {
    if (num_documents < 2) {
      Fail("a validation split needs at least 2 documents (one each for training and validation), ",
           "got ", num_documents, "; separate documents with blank lines or pass --val-fraction 0");
    }
    validation_count = std::llround(validation_fraction * static_cast<double>(num_documents));
    validation_count = std::clamp<int64_t>(validation_count, 1, num_documents - 1);
  }
  // Fisher-Yates with the project's own generator, so the split is the same everywhere.
  std::vector<int64_t> order(static_cast<size_t>(num_documents));
  for (int64_t i = 0; i < num_documents; ++i) order[static_cast<size_t>(i)] = i;
  Rng rng(seed);
  for (int64_t i = num_documents - 1; i > 0; --i) {
    std::swap(order[static_cast<size_t>(i)], order[rng.Below(static_cast<uint64_t>(i) + 1)]);
  }
  DocumentSplit split;
  split.validation.assign(order.begin(), order.begin() + validation_count);
  split.train.assign(order.begin() + validation_count, order.end());
  return split;
}

std::vector<std::vector<int>> TokenizeDocuments(
    const Tokenizer& tokenizer, const std::vector<CorpusDocument>& documents,
    const std::function<void(int64_t done_bytes, int64_t total_bytes)>& progress) {
  const auto count = static_cast<int64_t>(documents.size());
  int64_t total_bytes = 0;
  for (const CorpusDocument& document : documents)
    total_bytes += static_cast<int64_t>(document.text.size());
  std::vector<std::vector<int>> tokens(documents.size());
  std::atomic<int64_t> done_bytes{0};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  if (progress) progress(0, total_bytes);
    // Dynamic schedule: document sizes differ by 100x (a Bible chapter, a whole speech).
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t d = 0; d < count; ++d) {
    try {
      const CorpusDocument& document = documents[static_cast<size_t>(d)];
      std::vector<int>& ids = tokens[static_cast<size_t>(d)];
      ids.push_back(tokenizer.bos_id());
      const std::vector<int> encoded = tokenizer.Encode(document.text);
      ids.insert(ids.end(), encoded.begin(), encoded.end());
      ids.push_back(tokenizer.eos_id());
      const int64_t done = done_bytes += static_cast<int64_t>(document.text.size());
#ifdef _OPENMP
      const bool on_calling_thread = omp_get_thread_num() == 0;
#else
      const bool on_calling_thread = true;
#endif
      if (progress && on_calling_thread) progress(done, total_bytes);
    } catch (...) {
      // An exception must not leave an OpenMP region; keep the first and rethrow after it.
      const std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
  if (progress) progress(total_bytes, total_bytes);
  return tokens;
}

std::vector<int> ConcatenateDocuments(const std::vector<std::vector<int>>& documents,
                                      std::span<const int64_t> order) {
  size_t total = 0;
  for (const int64_t d : order) total += documents[static_cast<size_t>(d)].size();
  std::vector<int> stream;
  stream.reserve(total);
  for (const int64_t d : order) {
    const std::vector<int>& document = documents[static_cast<size_t>(d)];
    stream.insert(stream.end(), document.begin(), document.end());
  }
  return stream;
}

std::string MakePassKey(Rng& rng) { return std::to_string(10000 + rng.Below(90000)); }

std::string MakeFactKey(Rng& rng) {
  return std::string(kKeyAdjectives[rng.Below(kKeyAdjectives.size())]) + "-" +
         kKeyNouns[rng.Below(kKeyNouns.size())];
}

std::string MakeFactValue(Rng& rng) { return std::to_string(1000 + rng.Below(9000)); }

std::string PassKeyFact(const std::string& pass_key) {
  return "\nThe pass key is " + pass_key + ". Remember it. " + pass_key + " is the pass key.\n";
}

std::string PassKeyQuestion() { return "\nWhat is the pass key? The pass key is"; }

std::string KeyValueFact(const std::string& key, const std::string& value) {
  return "\nThe value of key '" + key + "' is " + value + ".\n";
}

std::string KeyValueQuestion(const std::string& key) {
  return "\nWhat is the value of key '" + key + "'? The value of key '" + key + "' is";
}

std::vector<int> RandomTokens(std::span<const int> alphabet, int64_t count, Rng& rng) {
  MIXATTN_CHECK(!alphabet.empty());
  std::vector<int> tokens(static_cast<size_t>(std::max<int64_t>(count, 0)));
  for (int& token : tokens) token = alphabet[rng.Below(alphabet.size())];
  return tokens;
}

const char* LongRangeKindName(LongRangeKind kind) {
  switch (kind) {
    case LongRangeKind::kPassKey:
      return "pass_key";
    case LongRangeKind::kKeyValue:
      return "key_value";
    case LongRangeKind::kRepeat:
      return "repeat";
    case LongRangeKind::kRandomRepeat:
      return "random_repeat";
    case LongRangeKind::kPeriodic:
      return "periodic";
  }
  return "unknown";
}

std::vector<LongRangeKind> ParseLongRangeKinds(std::string_view list) {
  std::vector<LongRangeKind> kinds;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t comma = std::min(list.find(',', start), list.size());
    const std::string_view name = list.substr(start, comma - start);
    start = comma + 1;
    LongRangeKind kind;
    if (name == "pass_key") {
      kind = LongRangeKind::kPassKey;
    } else if (name == "key_value") {
      kind = LongRangeKind::kKeyValue;
    } else if (name == "repeat") {
      kind = LongRangeKind::kRepeat;
    } else if (name == "random_repeat") {
      kind = LongRangeKind::kRandomRepeat;
    } else if (name == "periodic") {
      kind = LongRangeKind::kPeriodic;
    } else {
      Fail("unknown long-range kind '", name, "' in '", list,
           "': expected a comma-separated list of pass_key, key_value, repeat, random_repeat, "
           "periodic");
    }
    if (std::find(kinds.begin(), kinds.end(), kind) != kinds.end()) {
      Fail("long-range kind '", name, "' is listed twice in '", list, "'");
    }
    kinds.push_back(kind);
  }
  return kinds;
}

std::vector<LongRangeSequence> MakeLongRangeSequences(
    const Tokenizer& tokenizer, const std::vector<std::vector<int>>& filler_documents,
    const LongRangeOptions& options) {
  if (options.sequence_length <= 0) {
    Fail("long-range sequence length must be > 0, got ", options.sequence_length);
  }
  if (options.count < 0) Fail("long-range sequence count must be >= 0, got ", options.count);
  if (options.min_distance < 0) {
    Fail("long-range min distance must be >= 0, got ", options.min_distance);
  }
  if (options.kinds.empty()) Fail("long-range sequences need at least one kind");
  if (options.repeat_spans < 1) {
    Fail("long-range repeat spans must be >= 1, got ", options.repeat_spans);
  }
  if (options.random_alphabet < 0) {
    Fail("long-range random alphabet must be >= 0 (0 = every filler id), got ",
         options.random_alphabet);
  }
  if (options.key_value_pairs < 1 ||
      options.key_value_pairs > static_cast<int>(kKeyAdjectives.size() * kKeyNouns.size())) {
    Fail("long-range key/value pairs must be in [1, ", kKeyAdjectives.size() * kKeyNouns.size(),
         "], got ", options.key_value_pairs);
  }
  std::vector<LongRangeSequence> sequences;
  if (options.count == 0) return sequences;
  const FillerSource filler(tokenizer, filler_documents, options.random_alphabet);
  Rng rng(options.seed);
  sequences.reserve(static_cast<size_t>(options.count));
  for (int64_t i = 0; i < options.count; ++i) {
    sequences.push_back(MakeOneLongRangeSequence(tokenizer, filler, options, rng));
  }
  return sequences;
}

}  // namespace mixattn
