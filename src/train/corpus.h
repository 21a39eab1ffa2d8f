// The training corpus: text files read as documents, a seeded train/validation split by document,
// tokenization into BOS + ids + EOS, and the synthetic long-range retrieval sequences that issue 3
// mixes into training. `mixattn data` (src/cli/data_command.cc) strings these together and writes
// the results as token shards (token_shards.h).
//
// Text files are UTF-8 with one paragraph per line (scripts/fetch-corpus.sh writes them so). A
// document ends at a blank line (empty or only whitespace) or after max_document_lines lines, so
// a file without blank lines still splits into documents of bounded size. Documents are the unit
// of the validation split, so no document straddles train and validation, and each is encoded as
// BOS + Encode(lines joined with "\n") + EOS.
//
// Legend: D = documents, N = tokens, T = long-range sequence length.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/random.h"

namespace mixattn {

class Tokenizer;

struct CorpusDocument {
  int file_index = 0;      // index into the input paths
  int64_t first_line = 0;  // 1-based line of that file where the document starts
  std::string text;        // its lines joined with "\n", without a trailing newline
};

struct CorpusReadOptions {
  // A document is cut after this many lines even without a blank line. A Bible chapter is about
  // 30 lines, a Brown sample about 30, a State of the Union address up to 250.
  int max_document_lines = 256;
};

// Splits one file's text into documents (see the top of this file). "\r\n" line ends are read as
// "\n"; `file_index` is stored in each document. Throws Error naming `path` and the line when the
// text is not valid UTF-8.
std::vector<CorpusDocument> SplitIntoDocuments(std::string_view text, int file_index,
                                               const std::string& path,
                                               const CorpusReadOptions& options = {});

// Reads every file of `paths` as documents, in order. Throws Error naming the file when one is
// missing, a directory, unreadable, not UTF-8, or holds no text at all.
std::vector<CorpusDocument> ReadCorpus(const std::vector<std::string>& paths,
                                       const CorpusReadOptions& options = {});

// Which documents are held out. Both lists are document indices in the order they are written.
struct DocumentSplit {
  std::vector<int64_t> train;
  std::vector<int64_t> validation;
};

// A seeded permutation of [0, D): its first round(validation_fraction * D) indices (at least 1
// when the fraction is > 0, and always leaving 1 for training) are validation, the rest training.
// The same D, fraction and seed give the same split on every machine (core/random.h). Training
// documents come out shuffled, so even a sequential reader sees the sources mixed. Throws Error
// unless validation_fraction is in [0, 1) and, when it is > 0, D >= 2.
DocumentSplit SplitDocuments(int64_t num_documents, double validation_fraction, uint64_t seed);

// Encodes every document as BOS + tokenizer.Encode(text) + EOS [D][n_d], spread over OpenMP
// threads; the result does not depend on the thread count. `progress`, when set, is called on the
// calling thread now and then with (bytes of text encoded so far, total bytes).
std::vector<std::vector<int>> TokenizeDocuments(
    const Tokenizer& tokenizer, const std::vector<CorpusDocument>& documents,
    const std::function<void(int64_t done_bytes, int64_t total_bytes)>& progress = {});

// Documents [D][n_d] laid end to end in the given order [D'] (the token stream of a shard).
std::vector<int> ConcatenateDocuments(const std::vector<std::vector<int>>& documents,
                                      std::span<const int64_t> order);

// ---- Synthetic long-range retrieval -------------------------------------------------------
//
// Each sequence is natural filler text (slices of training documents, starting at a line start)
// with facts planted in it and a question about one of them at the end, exactly T tokens:
//
//   BOS filler... "\nThe pass key is 58213. Remember it. 58213 is the pass key.\n" filler...
//       "\nWhat is the pass key? The pass key is" " 58213." EOS
//
//   BOS filler... "\nThe value of key 'amber-falcon' is 7391.\n" filler... (more key/value facts
//       at random depths, distractors) ... "\nWhat is the value of key 'amber-falcon'? The value
//       of key 'amber-falcon' is" " 7391." EOS
//
// The gap of filler between the queried fact and the question is drawn uniformly from
// [min_distance, all the filler there is], so distances cover the whole range a length-T
// sequence allows; distractor facts land anywhere. A model that predicts the answer tokens must
// retrieve them from far back, beyond a sliding window when min_distance exceeds it.
//
// A third kind, `repeat`, makes copying dense: several spans of filler text (8-40 tokens each)
// each appear twice, the second time at least min_distance tokens after the first:
//
//   BOS filler... [span A] filler... [span B] ... [span A again] ... [span B again] ... EOS
//
// Every token of a repeat after its first is predictable only by finding the earlier copy, the
// induction-head mechanism that the pass key and key/value questions rely on. The sparse signal of
// one question per sequence alone did not teach a small model to copy (docs/results.md).
// `random_repeat` is the same with spans of random tokens (uniform over the ids the filler holds),
// which nothing but the earlier copy predicts.

// The phrasing of facts and questions, shared with the evaluation tasks (eval/tasks.h) so that
// they ask what training taught. Keys are "adjective-noun" (1024 of them), values 4 digits, pass
// keys 5 digits.
std::string MakePassKey(Rng& rng);
std::string MakeFactKey(Rng& rng);
std::string MakeFactValue(Rng& rng);
std::string PassKeyFact(const std::string& pass_key);
std::string PassKeyQuestion();  // the answer follows as " 58213."
std::string KeyValueFact(const std::string& key, const std::string& value);
std::string KeyValueQuestion(const std::string& key);  // the answer follows as " 7391."

// `count` ids drawn independently and uniformly from `alphabet` (distinct ids, not empty): text
// that nothing but an earlier copy predicts (random_repeat spans; eval's copy task).
std::vector<int> RandomTokens(std::span<const int> alphabet, int64_t count, Rng& rng);

enum class LongRangeKind { kPassKey, kKeyValue, kRepeat, kRandomRepeat, kPeriodic };
// "pass_key", "key_value", "repeat", "random_repeat", "periodic"
const char* LongRangeKindName(LongRangeKind kind);
// "pass_key,key_value,repeat" -> the kinds, in that order; throws Error naming an unknown or
// repeated kind, or an empty list.
std::vector<LongRangeKind> ParseLongRangeKinds(std::string_view list);

struct LongRangeOptions {
  int64_t sequence_length = 0;  // T, tokens per sequence, BOS and EOS included
  int64_t count = 0;            // sequences to make
  int64_t min_distance = 0;     // least filler between the queried fact and the question
  int key_value_pairs = 4;      // facts planted in a key/value sequence, one of them asked for
  int repeat_spans = 6;         // spans repeated in a repeat sequence (fewer when T is short)
  // Ids random spans (random_repeat, periodic) are drawn from: the N most frequent ids of the
  // filler (ties to the smaller id), or every id the filler holds when 0 or >= that many. With a
  // small alphabet every id of the copied spans is seen at every step (docs/results.md).
  int64_t random_alphabet = 0;
  // The kinds to make, each sequence's drawn uniformly from this list.
  std::vector<LongRangeKind> kinds = {LongRangeKind::kPassKey, LongRangeKind::kKeyValue};
  uint64_t seed = 0;
};

struct LongRangeSequence {
  LongRangeKind kind = LongRangeKind::kPassKey;
  std::vector<int> tokens;  // [T]: BOS ... answer EOS
  std::string key;          // the key asked for ("amber-falcon"); empty for a pass key or repeat
  std::string answer;       // the number the question asks for ("58213"); empty for a repeat
  // Token spans [begin, end) within tokens. A repeat sequence reports its farthest repeat: the
  // span's first copy is the "fact", its second copy both the "question" and the "answer".
  int64_t fact_begin = 0;  // the queried fact
  int64_t fact_end = 0;
  int64_t query_begin = 0;   // the question
  int64_t answer_begin = 0;  // " 58213." ; answer_end == T - 1, the EOS (not so for a repeat)
  int64_t answer_end = 0;
  // A repeat or periodic sequence's repeated spans: where each one's first and second copy
  // begin, and its length; empty for other kinds.
  struct RepeatedSpan {
    int64_t first = 0, second = 0, length = 0;
  };
  std::vector<RepeatedSpan> spans;
  // Tokens between the end of the queried fact and the start of the question.
  int64_t distance() const { return query_begin - fact_end; }
};

// Makes options.count sequences, deterministic for options.seed, drawing filler from
// `filler_documents` (tokenized documents [D][n_d], BOS/EOS are dropped; pass the training split
// only, so validation text never leaks). Throws Error when T cannot hold the facts, question,
// answer and min_distance tokens of filler (the message says how many T needs), or when the
// filler documents hold no tokens.
std::vector<LongRangeSequence> MakeLongRangeSequences(
    const Tokenizer& tokenizer, const std::vector<std::vector<int>>& filler_documents,
    const LongRangeOptions& options);

}  // namespace mixattn
