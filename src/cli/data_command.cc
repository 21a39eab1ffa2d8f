// mixattn data: text files -> tokenizer + token shards, the training data of `mixattn train`.
//
//   DIR/tokenizer.model     SentencePiece model, trained on the inputs (or a copy of --tokenizer)
//   DIR/train.bin, val.bin  token shards (train/token_shards.h): documents, BOS + ids + EOS each,
//                           split by document with a seeded permutation (train/corpus.h)
//   DIR/train_longrange.bin with --long-range-ratio: synthetic retrieval sequences of exactly
//                           --long-range-length tokens each
//   DIR/data.json           inputs (sha256, bytes), tokenizer sha256, token counts, the command
//
// Every file appears atomically, so an interrupted run never leaves a half-written shard. Progress
// goes to stderr, the summary to stdout.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "core/units.h"
#include "tokenizer/tokenizer.h"
#include "train/corpus.h"
#include "train/token_shards.h"

namespace mixattn::cli {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

// 4 special ids + 256 byte-fallback pieces; SentencePiece also needs one piece per character.
constexpr int kMinVocabSize = 4 + 256 + 1;

struct DataOptions {
  std::vector<std::string> inputs;
  std::string out;
  int vocab_size = 8192;
  bool vocab_size_given = false;
  double val_fraction = 0.01;
  uint64_t seed = 1;
  std::string tokenizer;
  int max_document_lines = CorpusReadOptions{}.max_document_lines;
  double long_range_ratio = 0.0;
  int64_t long_range_length = 0;
  int64_t long_range_min_distance = 0;
  int long_range_repeat_spans = LongRangeOptions{}.repeat_spans;
  int64_t long_range_alphabet = 0;
  std::string long_range_kinds = "pass_key,key_value";
};

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// "tokenizing 12.3 MiB / 40.1 MiB (31%)": rewritten in place on a terminal, a line every few
// seconds in a log file.
class ProgressLine {
 public:
  explicit ProgressLine(std::string what) : what_(std::move(what)), tty_(::isatty(2) == 1) {}

  void Update(int64_t done, int64_t total) {
    const Clock::time_point now = Clock::now();
    const double interval = tty_ ? 0.2 : 5.0;
    if (finished_) return;
    if (done < total && std::chrono::duration<double>(now - last_).count() < interval) return;
    finished_ = done >= total;
    last_ = now;
    const int percent = total > 0 ? static_cast<int>(100 * done / total) : 100;
    std::fprintf(stderr, "%s%s %s / %s (%d%%)%s", tty_ ? "\r" : "", what_.c_str(),
                 FormatBytes(done).c_str(), FormatBytes(total).c_str(), percent,
                 tty_ ? "\x1b[K" : "\n");
    if (tty_ && done >= total) std::fputc('\n', stderr);
    std::fflush(stderr);
  }

 private:
  std::string what_;
  bool tty_;
  bool finished_ = false;
  Clock::time_point last_{};
};

// The flags as given, in canonical order, so data.json says how to make the directory again.
std::string CommandLine(const DataOptions& options) {
  std::ostringstream line;
  line << "mixattn data --in";
  for (const std::string& input : options.inputs) line << " " << input;
  line << " --out " << options.out;
  if (options.tokenizer.empty()) {
    line << " --vocab-size " << options.vocab_size;
  } else {
    line << " --tokenizer " << options.tokenizer;
  }
  line << " --val-fraction " << options.val_fraction << " --seed " << options.seed;
  if (options.max_document_lines != CorpusReadOptions{}.max_document_lines) {
    line << " --max-document-lines " << options.max_document_lines;
  }
  if (options.long_range_ratio > 0) {
    line << " --long-range-ratio " << options.long_range_ratio << " --long-range-length "
         << options.long_range_length;
    if (options.long_range_min_distance > 0) {
      line << " --long-range-min-distance " << options.long_range_min_distance;
    }
    if (options.long_range_repeat_spans != DataOptions{}.long_range_repeat_spans) {
      line << " --long-range-repeat-spans " << options.long_range_repeat_spans;
    }
    if (options.long_range_alphabet > 0) {
      line << " --long-range-alphabet " << options.long_range_alphabet;
    }
    if (options.long_range_kinds != DataOptions{}.long_range_kinds) {
      line << " --long-range-kinds " << options.long_range_kinds;
    }
  }
  return line.str();
}

void PrepareOutputDirectory(const std::string& out) {
  std::error_code error;
  const fs::file_status status = fs::status(out, error);
  if (status.type() != fs::file_type::not_found) {
    if (error) Fail("cannot access --out '", out, "': ", error.message());
    if (!fs::is_directory(status)) Fail("--out '", out, "' exists and is not a directory");
    return;
  }
  fs::create_directories(out, error);
  if (error) Fail("cannot create --out directory '", out, "': ", error.message());
}

// Trains DIR/tokenizer.model on the inputs, or copies --tokenizer there; returns it loaded.
Tokenizer MakeTokenizer(const DataOptions& options, const std::string& model_path) {
  if (options.tokenizer.empty()) {
    TokenizerTrainOptions train;
    train.vocab_size = options.vocab_size;
    Tokenizer::Train(options.inputs, model_path, train);
    return Tokenizer::Load(model_path);
  }
  Tokenizer tokenizer = Tokenizer::Load(options.tokenizer);
  if (options.vocab_size_given && options.vocab_size != tokenizer.vocab_size()) {
    Fail("--vocab-size ", options.vocab_size, " disagrees with --tokenizer '", options.tokenizer,
         "', which has ", tokenizer.vocab_size(), " pieces (leave out --vocab-size)");
  }
  if (tokenizer.bos_id() < 0 || tokenizer.eos_id() < 0) {
    Fail("--tokenizer '", options.tokenizer, "' defines no BOS or EOS piece; documents need both ",
         "(train one with `mixattn data` instead)");
  }
  std::error_code error;
  if (!fs::exists(model_path) || !fs::equivalent(options.tokenizer, model_path, error)) {
    std::ifstream file(options.tokenizer, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(file)),
                            std::istreambuf_iterator<char>());
    if (!file.good() && !file.eof()) Fail("cannot read --tokenizer '", options.tokenizer, "'");
    WriteBytesAtomically(model_path, bytes);
  }
  return tokenizer;
}

Json ShardJson(const std::string& file, int64_t tokens, int64_t documents) {
  return {{"file", file}, {"tokens", tokens}, {"documents", documents}};
}

void RunData(const DataOptions& options) {
  const Clock::time_point run_start = Clock::now();
  if (options.tokenizer.empty() && options.vocab_size < kMinVocabSize) {
    Fail("--vocab-size ", options.vocab_size, " is too small: the tokenizer needs at least ",
         kMinVocabSize, " (4 special ids, 256 byte pieces, and one piece per character of the ",
         "text), and a useful one a few thousand");
  }
  if (options.long_range_ratio > 0 && options.long_range_length <= 0) {
    Fail("--long-range-ratio needs --long-range-length, the tokens per synthetic sequence");
  }
  std::vector<LongRangeKind> long_range_kinds;
  try {
    long_range_kinds = ParseLongRangeKinds(options.long_range_kinds);
  } catch (const Error& error) {
    Fail("--long-range-kinds: ", error.what());
  }
  PrepareOutputDirectory(options.out);
  const fs::path out_dir(options.out);

  // 1. Read the inputs first: a missing or empty file fails before minutes of training.
  Clock::time_point step_start = Clock::now();
  CorpusReadOptions read_options;
  read_options.max_document_lines = options.max_document_lines;
  const std::vector<CorpusDocument> documents = ReadCorpus(options.inputs, read_options);
  Json inputs = Json::array();
  int64_t input_bytes = 0;
  for (const std::string& input : options.inputs) {
    const auto bytes = static_cast<int64_t>(fs::file_size(input));
    input_bytes += bytes;
    inputs.push_back({{"path", input}, {"bytes", bytes}, {"sha256", Sha256FileHex(input)}});
  }
  std::fprintf(stderr, "read %zu inputs: %s, %zu documents (%.1f s)\n", options.inputs.size(),
               FormatBytes(input_bytes).c_str(), documents.size(), SecondsSince(step_start));

  // 2. The tokenizer.
  step_start = Clock::now();
  const std::string model_path = (out_dir / "tokenizer.model").string();
  if (options.tokenizer.empty()) {
    std::fprintf(stderr, "training tokenizer: vocab %d on %s ...\n", options.vocab_size,
                 FormatBytes(input_bytes).c_str());
  }
  const Tokenizer tokenizer = MakeTokenizer(options, model_path);
  const std::string tokenizer_sha256 = Sha256FileHex(model_path);
  const int vocab_size = tokenizer.vocab_size();
  std::fprintf(stderr, "%s %s: vocab %d (%.1f s)\n",
               options.tokenizer.empty() ? "trained" : "copied", model_path.c_str(), vocab_size,
               SecondsSince(step_start));

  // 3. Tokenize every document.
  step_start = Clock::now();
  ProgressLine progress("tokenizing");
  const std::vector<std::vector<int>> tokens = TokenizeDocuments(
      tokenizer, documents, [&](int64_t done, int64_t total) { progress.Update(done, total); });
  std::fprintf(stderr, "tokenized %zu documents (%.1f s)\n", documents.size(),
               SecondsSince(step_start));

  // 4. Split by document and write the shards.
  step_start = Clock::now();
  const DocumentSplit split =
      SplitDocuments(static_cast<int64_t>(documents.size()), options.val_fraction, options.seed);
  const std::vector<int> train = ConcatenateDocuments(tokens, split.train);
  const std::vector<int> val = ConcatenateDocuments(tokens, split.validation);
  WriteTokenShard((out_dir / "train.bin").string(), train, vocab_size, tokenizer_sha256);
  WriteTokenShard((out_dir / "val.bin").string(), val, vocab_size, tokenizer_sha256);
  std::fprintf(stderr, "wrote train.bin and val.bin (%.1f s)\n", SecondsSince(step_start));

  std::vector<int64_t> input_tokens(options.inputs.size(), 0);
  std::vector<int64_t> input_documents(options.inputs.size(), 0);
  for (size_t d = 0; d < documents.size(); ++d) {
    input_tokens[static_cast<size_t>(documents[d].file_index)] +=
        static_cast<int64_t>(tokens[d].size());
    input_documents[static_cast<size_t>(documents[d].file_index)] += 1;
  }
  for (size_t i = 0; i < options.inputs.size(); ++i) {
    inputs[i]["documents"] = input_documents[i];
    inputs[i]["tokens"] = input_tokens[i];
  }

  Json shards;
  shards["train"] = ShardJson("train.bin", static_cast<int64_t>(train.size()),
                              static_cast<int64_t>(split.train.size()));
  shards["val"] = ShardJson("val.bin", static_cast<int64_t>(val.size()),
                            static_cast<int64_t>(split.validation.size()));

  // 5. The synthetic long-range mix, from training documents only.
  Json long_range = nullptr;
  if (options.long_range_ratio > 0) {
    step_start = Clock::now();
    std::vector<std::vector<int>> filler;
    filler.reserve(split.train.size());
    for (const int64_t d : split.train) filler.push_back(tokens[static_cast<size_t>(d)]);
    LongRangeOptions long_options;
    long_options.sequence_length = options.long_range_length;
    long_options.count = static_cast<int64_t>(
        std::ceil(options.long_range_ratio * static_cast<double>(train.size()) /
                  static_cast<double>(options.long_range_length)));
    long_options.min_distance = options.long_range_min_distance;
    long_options.repeat_spans = options.long_range_repeat_spans;
    long_options.random_alphabet = options.long_range_alphabet;
    long_options.kinds = long_range_kinds;
    long_options.seed = options.seed;
    const std::vector<LongRangeSequence> sequences =
        MakeLongRangeSequences(tokenizer, filler, long_options);
    std::vector<int> stream;
    stream.reserve(sequences.size() * static_cast<size_t>(options.long_range_length));
    std::map<LongRangeKind, int64_t> kind_counts;
    int64_t min_distance = INT64_MAX, max_distance = 0;
    double sum_distance = 0;
    for (const LongRangeSequence& sequence : sequences) {
      stream.insert(stream.end(), sequence.tokens.begin(), sequence.tokens.end());
      ++kind_counts[sequence.kind];
      min_distance = std::min(min_distance, sequence.distance());
      max_distance = std::max(max_distance, sequence.distance());
      sum_distance += static_cast<double>(sequence.distance());
    }
    WriteTokenShard((out_dir / "train_longrange.bin").string(), stream, vocab_size,
                    tokenizer_sha256, options.long_range_length);
    Json kinds = Json::object();
    for (const LongRangeKind kind : long_range_kinds)
      kinds[LongRangeKindName(kind)] = kind_counts[kind];
    const auto count = static_cast<int64_t>(sequences.size());
    shards["train_longrange"] =
        ShardJson("train_longrange.bin", static_cast<int64_t>(stream.size()), count);
    long_range = {{"ratio", options.long_range_ratio},
                  {"sequence_length", options.long_range_length},
                  {"sequences", count},
                  {"kinds", kinds},
                  {"key_value_pairs", long_options.key_value_pairs},
                  {"repeat_spans", long_options.repeat_spans},
                  {"random_alphabet", long_options.random_alphabet},
                  {"min_distance", options.long_range_min_distance},
                  {"distance_min", count > 0 ? min_distance : 0},
                  {"distance_max", max_distance},
                  {"distance_mean", count > 0 ? sum_distance / static_cast<double>(count) : 0.0}};
    std::fprintf(stderr, "wrote train_longrange.bin: %lld sequences of %lld tokens (%.1f s)\n",
                 static_cast<long long>(count), static_cast<long long>(options.long_range_length),
                 SecondsSince(step_start));
  }

  Json data;
  data["format"] = "mixattn-data";
  data["version"] = 1;
  data["command"] = CommandLine(options);
  data["inputs"] = inputs;
  data["tokenizer"] = {{"file", "tokenizer.model"},    {"sha256", tokenizer_sha256},
                       {"vocab_size", vocab_size},     {"trained", options.tokenizer.empty()},
                       {"bos_id", tokenizer.bos_id()}, {"eos_id", tokenizer.eos_id()}};
  data["token_dtype"] = vocab_size <= 65536 ? "uint16" : "uint32";
  data["documents"] = {{"total", documents.size()},
                       {"max_document_lines", options.max_document_lines},
                       {"format", "BOS + tokens + EOS per document"}};
  data["split"] = {{"seed", options.seed},
                   {"val_fraction", options.val_fraction},
                   {"train_documents", split.train.size()},
                   {"val_documents", split.validation.size()}};
  data["shards"] = shards;
  data["long_range"] = long_range;
  WriteBytesAtomically((out_dir / "data.json").string(), data.dump(2) + "\n");

  std::printf("%s: %zu documents from %zu inputs (%s)\n", options.out.c_str(), documents.size(),
              options.inputs.size(), FormatBytes(input_bytes).c_str());
  std::printf("  tokenizer.model  vocab %d, sha256 %s\n", vocab_size, tokenizer_sha256.c_str());
  std::printf("  train.bin        %lld tokens, %zu documents\n",
              static_cast<long long>(train.size()), split.train.size());
  std::printf("  val.bin          %lld tokens, %zu documents\n", static_cast<long long>(val.size()),
              split.validation.size());
  if (!long_range.is_null()) {
    std::printf("  train_longrange.bin  %lld sequences x %lld tokens, distance %lld..%lld\n",
                static_cast<long long>(long_range["sequences"].get<int64_t>()),
                static_cast<long long>(options.long_range_length),
                static_cast<long long>(long_range["distance_min"].get<int64_t>()),
                static_cast<long long>(long_range["distance_max"].get<int64_t>()));
  }
  std::printf("  data.json        (%.1f s in all)\n", SecondsSince(run_start));
}

}  // namespace

void RegisterDataCommand(CLI::App& app) {
  CLI::App* command = app.add_subcommand(
      "data",
      "train a tokenizer on text files and write them as token shards with a held-out validation "
      "split (DIR/tokenizer.model, train.bin, val.bin, data.json)");
  auto options = std::make_shared<DataOptions>();
  command
      ->add_option("--in", options->inputs,
                   "UTF-8 text files: one paragraph per line, documents separated by blank lines")
      ->required()
      ->expected(1, -1);
  command->add_option("--out", options->out, "output directory (created if missing)")->required();
  CLI::Option* vocab =
      command->add_option("--vocab-size", options->vocab_size, "tokenizer vocabulary size")
          ->check(CLI::Range(1, 1 << 24))
          ->capture_default_str();
  command
      ->add_option("--val-fraction", options->val_fraction,
                   "fraction of documents held out for validation, in [0, 1)")
      ->check(CLI::Range(0.0, 0.999999))
      ->capture_default_str();
  command->add_option("--seed", options->seed, "seed of the split and the long-range mix")
      ->capture_default_str();
  command->add_option("--tokenizer", options->tokenizer,
                      "use this SentencePiece model instead of training one (copied to DIR)");
  command
      ->add_option("--max-document-lines", options->max_document_lines,
                   "cut a document after this many lines even without a blank line")
      ->check(CLI::Range(1, 1 << 30))
      ->capture_default_str();
  command
      ->add_option("--long-range-ratio", options->long_range_ratio,
                   "also write train_longrange.bin with this many synthetic retrieval tokens per "
                   "training token (0 = none)")
      ->check(CLI::Range(0.0, 100.0));
  command
      ->add_option("--long-range-length", options->long_range_length,
                   "tokens per synthetic retrieval sequence (BOS ... answer EOS)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  command
      ->add_option("--long-range-min-distance", options->long_range_min_distance,
                   "least number of tokens between a planted fact and its question (or a "
                   "repeated span and its repeat)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  command
      ->add_option("--long-range-repeat-spans", options->long_range_repeat_spans,
                   "spans a repeat or random_repeat sequence repeats (fewer where the length "
                   "cannot hold them all twice); more spans make longer sequences as "
                   "copy-dense as short ones")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  command
      ->add_option("--long-range-alphabet", options->long_range_alphabet,
                   "draw the random spans of random_repeat and periodic sequences from the N "
                   "most frequent filler ids (0 = every id the filler holds), so that each id of "
                   "the copied spans is seen often")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30))
      ->capture_default_str();
  command
      ->add_option(
          "--long-range-kinds", options->long_range_kinds,
          "synthetic sequence kinds, drawn uniformly: pass_key (a pass key in filler, "
          "asked at the end), key_value (4 key/value facts, one asked), repeat (spans "
          "of filler, each repeated later: dense copying), random_repeat (the same with spans of "
          "random tokens), periodic (a block of 16-128 random tokens repeated to the end: "
          "the densest copying, at a shift that differs per sequence)")
      ->capture_default_str();
  command->callback([options, vocab]() {
    options->vocab_size_given = vocab->count() > 0;
    RunData(*options);
  });
}

}  // namespace mixattn::cli
