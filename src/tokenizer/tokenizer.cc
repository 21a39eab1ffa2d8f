#include "tokenizer/tokenizer.h"

#include <fcntl.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <unordered_map>
#include <utility>

#include "core/error.h"

namespace mixattn {
namespace {

namespace fs = std::filesystem;

// SentencePiece's word-boundary marker (U+2581), which stands for a space inside pieces.
constexpr std::string_view kSpaceSymbol = "\xe2\x96\x81";

// SentencePiece's default max_sentence_length: the trainer skips longer lines.
constexpr int kMaxTrainingLineBytes = 4192;

// SentencePiece statuses read like "Internal: ./src/trainer_interface.cc(660) [(a) == (b)]
// Vocabulary size too high (5000). Please set it to a value <= 443." Keep the sentence meant for
// people; fall back to the whole string when there is none.
std::string Describe(const sentencepiece::util::Status& status) {
  std::string message = status.ToString();
  const size_t bracket = message.find("] ");
  if (message.find(".cc(") != std::string::npos && bracket != std::string::npos &&
      bracket + 2 < message.size()) {
    return message.substr(bracket + 2);
  }
  return message;
}

// Throws Error unless `path` names an existing regular file; `role` says what the file is for.
void RequireRegularFile(const std::string& path, std::string_view role) {
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (status.type() == fs::file_type::not_found) Fail(role, " '", path, "' does not exist");
  if (error) Fail("cannot access ", role, " '", path, "': ", error.message());
  if (!fs::is_regular_file(status)) Fail(role, " '", path, "' is not a regular file");
}

// Shortest text that reads back as the same double ("0.9995", not std::to_string's "0.999500",
// which would also round 0.9999995 to "1.000000").
std::string FormatDouble(double value) {
  char buffer[32];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return std::string(buffer, result.ptr);
}

std::string JoinPaths(const std::vector<std::string>& paths) {
  std::string joined;
  for (const std::string& path : paths) {
    if (!joined.empty()) joined += ", ";
    joined += "'" + path + "'";
  }
  return joined;
}

// Feeds the lines of the input files to the trainer. Reading the files ourselves (instead of
// SentencePiece's --input flag) keeps file errors ours to word, allows commas in file names, and
// lets Train tell "no text at all" apart from other training failures.
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<std::string>& paths) : paths_(paths) { Advance(); }

  bool done() const override { return done_; }
  void Next() override { Advance(); }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return status_; }

  int64_t lines_read() const { return lines_read_; }

 private:
  // Moves to the next non-empty line, opening the next file as each one runs out.
  void Advance() {
    while (true) {
      if (file_.is_open() && std::getline(file_, line_)) {
        if (!line_.empty() && line_.back() == '\r') line_.pop_back();  // CRLF files
        if (line_.empty()) continue;
        ++lines_read_;
        return;
      }
      if (file_.is_open()) {
        if (file_.bad()) {
          Stop("cannot read tokenizer training input '" + paths_[next_path_ - 1] + "'");
          return;
        }
        file_.close();
      }
      if (next_path_ == paths_.size()) {
        Stop("");
        return;
      }
      const std::string& path = paths_[next_path_++];
      file_.open(path, std::ios::binary);
      if (!file_) {
        Stop("cannot open tokenizer training input '" + path + "': " + std::strerror(errno));
        return;
      }
    }
  }

  void Stop(const std::string& error) {
    done_ = true;
    line_.clear();
    if (!error.empty()) {
      status_ = sentencepiece::util::Status(sentencepiece::util::StatusCode::kNotFound, error);
    }
  }

  const std::vector<std::string>& paths_;
  size_t next_path_ = 0;
  std::ifstream file_;
  std::string line_;
  bool done_ = false;
  int64_t lines_read_ = 0;
  sentencepiece::util::Status status_;
};

void ValidateTrainArguments(const std::vector<std::string>& input_files,
                            const std::string& model_path, const TokenizerTrainOptions& options) {
  if (input_files.empty()) Fail("tokenizer training needs at least one input text file");
  for (const std::string& path : input_files) RequireRegularFile(path, "tokenizer training input");
  if (model_path.empty()) Fail("tokenizer model path is empty");
  const fs::path parent = fs::path(model_path).parent_path();
  if (!parent.empty() && !fs::is_directory(parent)) {
    Fail("cannot write tokenizer model '", model_path, "': directory '", parent.string(),
         "' does not exist");
  }
  if (options.vocab_size <= 0) {
    Fail("tokenizer vocab_size must be > 0, got ", options.vocab_size);
  }
  if (options.model_type != "bpe" && options.model_type != "unigram") {
    Fail("tokenizer model_type must be \"bpe\" or \"unigram\", got \"", options.model_type, "\"");
  }
  if (!(options.character_coverage > 0.0 && options.character_coverage <= 1.0)) {
    Fail("tokenizer character_coverage must be in (0, 1], got ", options.character_coverage);
  }
  if (options.max_sentences < 0 || (options.max_sentences > 0 && options.max_sentences <= 100)) {
    Fail("tokenizer max_sentences must be 0 (use every line) or more than 100, got ",
         options.max_sentences);
  }
  if (options.num_threads <= 0) {
    Fail("tokenizer num_threads must be > 0, got ", options.num_threads);
  }
}

// Writes `bytes` to `path` so that readers never see a partial file: write a temporary file in
// the same directory (rename is atomic only within one file system), flush it to disk, rename.
void WriteFileAtomically(const std::string& path, const std::string& bytes) {
  // A name no other writer uses; O_EXCL guarantees it (and 0666 lets the umask decide the mode).
  static std::atomic<uint64_t> counter{0};
  std::string temp_path;
  int fd = -1;
  for (int attempt = 0; fd < 0 && attempt < 100; ++attempt) {
    temp_path = path + ".tmp." + std::to_string(getpid()) + "." + std::to_string(counter++);
    fd = open(temp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) Fail("cannot write tokenizer model '", path, "': ", std::strerror(errno));
  const auto fail = [&](const char* step) {
    const int saved_errno = errno;
    close(fd);
    unlink(temp_path.c_str());
    Fail("cannot write tokenizer model '", path, "': ", step, ": ", std::strerror(saved_errno));
  };
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("write");
    written += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) fail("fsync");
  if (close(fd) != 0) {
    const int saved_errno = errno;
    unlink(temp_path.c_str());
    Fail("cannot write tokenizer model '", path, "': close: ", std::strerror(saved_errno));
  }
  if (std::rename(temp_path.c_str(), path.c_str()) != 0) {
    const int saved_errno = errno;
    unlink(temp_path.c_str());
    Fail("cannot write tokenizer model '", path, "': rename: ", std::strerror(saved_errno));
  }
}

std::string ReadFile(const std::string& path) {
  RequireRegularFile(path, "tokenizer model");
  std::ifstream file(path, std::ios::binary);
  if (!file) Fail("cannot open tokenizer model '", path, "': ", std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (file.bad()) Fail("cannot read tokenizer model '", path, "'");
  return bytes;
}

// UTF-8 lead byte -> length of the character it starts; 0 for a continuation byte (10xxxxxx)
// and for bytes that never start a character. Same bit patterns as SentencePiece's decoder.
int Utf8SequenceLength(uint8_t byte) {
  if (byte < 0x80) return 1;
  if ((byte & 0xE0) == 0xC0) return 2;
  if ((byte & 0xF0) == 0xE0) return 3;
  if ((byte & 0xF8) == 0xF0) return 4;
  return 0;
}

bool IsUtf8Continuation(uint8_t byte) { return (byte & 0xC0) == 0x80; }

}  // namespace

void Tokenizer::Train(const std::vector<std::string>& input_files, const std::string& model_path,
                      const TokenizerTrainOptions& options) {
  ValidateTrainArguments(input_files, model_path, options);

  // The options that shape the model are spelled out, defaults included, so the tokenizer does
  // not change under us when SentencePiece's defaults do. Non-defaults carry their reason.
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", options.model_type},
      {"vocab_size", std::to_string(options.vocab_size)},
      {"character_coverage", FormatDouble(options.character_coverage)},
      {"input_sentence_size", std::to_string(options.max_sentences)},
      {"shuffle_input_sentence", "true"},  // sample lines uniformly when capped, not the first N
      {"num_threads", std::to_string(options.num_threads)},
      {"byte_fallback", options.byte_fallback ? "true" : "false"},
      // Fixed special ids (default is unk=0, bos=1, eos=2, no pad) so every model agrees with
      // Tokenizer::kPadId..kUnkId and padding is id 0.
      {"pad_id", std::to_string(kPadId)},
      {"bos_id", std::to_string(kBosId)},
      {"eos_id", std::to_string(kEosId)},
      {"unk_id", std::to_string(kUnkId)},
      // Non-default: the default NFKC rewrites text (full-width letters, ligatures, "①" -> "1"),
      // so Decode(Encode(text)) would differ from text. Identity keeps bytes as they are.
      {"normalization_rule_name", "identity"},
      // Non-default: the default collapses runs of spaces and strips leading/trailing ones, which
      // loses indentation and breaks the exact round trip.
      {"remove_extra_whitespaces", "false"},
      // Non-default: the default prepends a space to every Encode input (and strips it again in
      // Decode), so ids of separately encoded segments (prompt, then completion) would join with
      // a stray space and a token's text would depend on whether it comes first.
      {"add_dummy_prefix", "false"},
      // Non-default: numbers split into single digits, so no vocabulary goes to frequent
      // numbers and every number is spelled the same way (as in LLaMA and PaLM).
      {"split_digits", "true"},
      // Non-default: lets a run of spaces (code indentation) be one piece instead of one token
      // per space.
      {"allow_whitespace_only_pieces", "true"},
      // Default: a vocabulary the text cannot fill is an error, not a silently smaller model.
      {"hard_vocab_limit", "true"},
      // Default: lines longer than this many bytes are skipped by the trainer (they are still
      // encoded fine later). Each line is one training sentence, so a newline never appears
      // inside a piece: "\n" encodes as the byte piece <0x0A>, still one token.
      {"max_sentence_length", std::to_string(kMaxTrainingLineBytes)},
      // Non-default: SentencePiece logs every training step to stderr; show errors only. Note
      // that this sets SentencePiece's process-wide log level.
      {"minloglevel", "2"},
  };

  LineIterator lines(input_files);
  std::string serialized_model;
  // Training into memory (instead of --model_prefix) means SentencePiece writes no files at all:
  // no .vocab side file to remove, and we control how the model file appears on disk.
  const sentencepiece::util::Status status =
      sentencepiece::SentencePieceTrainer::Train(args, &lines, &serialized_model);
  if (!status.ok()) {
    if (!lines.status().ok()) Fail(lines.status().message());
    // The iterator reads its first line on construction, so 0 here means there is no text.
    if (lines.lines_read() == 0) {
      Fail("tokenizer training input ", JoinPaths(input_files),
           " contains no text (every line is empty)");
    }
    const std::string reason = Describe(status);
    if (reason.find("sentences_.empty()") != std::string::npos) {
      Fail("tokenizer training input ", JoinPaths(input_files),
           " has no line SentencePiece can use (lines longer than ", kMaxTrainingLineBytes,
           " bytes are skipped)");
    }
    const bool too_few_pieces = reason.find("required_chars") != std::string::npos;
    Fail("cannot train tokenizer with vocab_size ", options.vocab_size, " (model_type ",
         options.model_type, ") on ", JoinPaths(input_files), ": ", reason,
         too_few_pieces && options.byte_fallback
             ? " (byte_fallback's 256 byte pieces count towards vocab_size)"
             : "");
  }

  // The trainer promises these; check before the model reaches disk.
  sentencepiece::SentencePieceProcessor trained;
  const sentencepiece::util::Status loaded = trained.LoadFromSerializedProto(serialized_model);
  MIXATTN_CHECK(loaded.ok());
  MIXATTN_CHECK(trained.GetPieceSize() == options.vocab_size);
  MIXATTN_CHECK(trained.pad_id() == kPadId && trained.bos_id() == kBosId &&
                trained.eos_id() == kEosId && trained.unk_id() == kUnkId);

  WriteFileAtomically(model_path, serialized_model);
}

Tokenizer Tokenizer::Load(const std::string& model_path) {
  // Read the bytes ourselves: SentencePiece's own file reading aborts the process when given a
  // directory, and its messages do not say what kind of file was expected.
  const std::string bytes = ReadFile(model_path);
  auto processor = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const sentencepiece::util::Status status = processor->LoadFromSerializedProto(bytes);
  if (!status.ok()) {
    std::string reason = Describe(status);
    if (reason.find("ParseFromArray") != std::string::npos) {
      reason = "its bytes do not parse as a SentencePiece ModelProto";
    }
    Fail("tokenizer model '", model_path, "' is not a valid SentencePiece model (", reason, ")");
  }
  if (processor->GetPieceSize() <= 0) {
    Fail("tokenizer model '", model_path, "' has no pieces");
  }
  return Tokenizer(std::move(processor), model_path);
}

Tokenizer::Tokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> processor,
                     std::string model_path)
    : processor_(std::move(processor)), model_path_(std::move(model_path)) {
  const int size = processor_->GetPieceSize();
  pieces_.resize(size);
  for (int id = 0; id < size; ++id) {
    PieceInfo& piece = pieces_[id];
    piece = {PieceKind::kText, 0};
    if (processor_->IsControl(id)) {
      piece.kind = PieceKind::kControl;
    } else if (processor_->IsUnknown(id) || processor_->IsUnused(id)) {
      piece.kind = PieceKind::kOther;
    } else if (processor_->IsByte(id)) {
      // Byte pieces are spelled "<0xAB>".
      const std::string& text = processor_->IdToPiece(id);
      unsigned value = 0;
      if (text.size() == 6 && std::sscanf(text.c_str(), "<0x%2X>", &value) == 1) {
        piece = {PieceKind::kByte, static_cast<uint8_t>(value)};
      } else {
        piece.kind = PieceKind::kOther;
      }
    }
  }

  // Escaping "▁" in Encode splits the text at each one and encodes the parts separately, which
  // is exact only when encoding adds nothing of its own (no add_dummy_prefix space): check that
  // "a" encodes to pieces whose text is exactly "a".
  std::vector<int> byte_ids;
  for (const char byte : kSpaceSymbol) {
    for (int id = 0; id < size; ++id) {
      if (pieces_[id].kind == PieceKind::kByte && pieces_[id].byte == static_cast<uint8_t>(byte)) {
        byte_ids.push_back(id);
        break;
      }
    }
  }
  std::vector<int> probe;
  EncodeSegment("a", probe);
  std::string probe_text;
  for (const int id : probe) probe_text += DecodePiece(id);
  if (byte_ids.size() == kSpaceSymbol.size() && probe_text == "a") {
    space_symbol_ids_ = std::move(byte_ids);
  }
}

Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

void Tokenizer::CheckId(int id, std::string_view where) const {
  if (id < 0 || id >= vocab_size()) {
    Fail("token id ", id, where, " is out of range: tokenizer '", model_path_, "' has ids [0, ",
         vocab_size(), ")");
  }
}

void Tokenizer::EncodeSegment(std::string_view text, std::vector<int>& ids) const {
  std::vector<int> segment;
  const sentencepiece::util::Status status = processor_->Encode(text, &segment);
  if (!status.ok()) {
    Fail("tokenizer '", model_path_, "' cannot encode text of ", text.size(),
         " bytes: ", Describe(status));
  }
  ids.insert(ids.end(), segment.begin(), segment.end());
}

std::vector<int> Tokenizer::Encode(std::string_view text) const {
  std::vector<int> ids;
  if (space_symbol_ids_.empty()) {
    EncodeSegment(text, ids);
    return ids;
  }
  // Byte pieces decode to their raw bytes, never to a space, so "▁" survives the round trip.
  while (true) {
    const size_t marker = text.find(kSpaceSymbol);
    EncodeSegment(text.substr(0, marker), ids);
    if (marker == std::string_view::npos) break;
    ids.insert(ids.end(), space_symbol_ids_.begin(), space_symbol_ids_.end());
    text.remove_prefix(marker + kSpaceSymbol.size());
  }
  return ids;
}

std::string Tokenizer::Decode(std::span<const int> ids) const {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size()) {
      CheckId(ids[i], " at position " + std::to_string(i));
    }
  }
  std::string text;
  const sentencepiece::util::Status status =
      processor_->Decode(std::vector<int>(ids.begin(), ids.end()), &text);
  if (!status.ok()) {
    Fail("tokenizer '", model_path_, "' cannot decode ", ids.size(), " ids: ", Describe(status));
  }
  return text;
}

std::string Tokenizer::DecodePiece(int id) const {
  CheckId(id, "");
  const PieceInfo& piece = pieces_[id];
  switch (piece.kind) {
    case PieceKind::kText: {
      const std::string& text = processor_->IdToPiece(id);
      std::string surface;
      surface.reserve(text.size());
      for (size_t i = 0; i < text.size();) {
        if (std::string_view(text).substr(i, kSpaceSymbol.size()) == kSpaceSymbol) {
          surface += ' ';
          i += kSpaceSymbol.size();
        } else {
          surface += text[i++];
        }
      }
      return surface;
    }
    case PieceKind::kByte:
      return std::string(1, static_cast<char>(piece.byte));
    case PieceKind::kControl:
      return "";
    case PieceKind::kOther:
      break;
  }
  const int ids[] = {id};
  return Decode(ids);
}

int Tokenizer::vocab_size() const { return static_cast<int>(pieces_.size()); }
int Tokenizer::bos_id() const { return processor_->bos_id(); }
int Tokenizer::eos_id() const { return processor_->eos_id(); }
int Tokenizer::pad_id() const { return processor_->pad_id(); }
int Tokenizer::unk_id() const { return processor_->unk_id(); }

TokenStreamDecoder::TokenStreamDecoder(const Tokenizer& tokenizer) : tokenizer_(&tokenizer) {}

std::string TokenStreamDecoder::Push(int id) {
  tokenizer_->CheckId(id, "");
  window_.push_back(id);
  if (EndsInsidePartialCharacter()) return "";
  std::string text = tokenizer_->Decode(window_);
  // Decoding only ever appends at the end once the window ends on a character boundary.
  MIXATTN_CHECK(text.starts_with(window_text_));
  std::string fresh = text.substr(window_text_.size());
  window_text_ = std::move(text);
  RestartWindow();
  return fresh;
}

std::string TokenStreamDecoder::Flush() {
  std::string text = tokenizer_->Decode(window_);
  MIXATTN_CHECK(text.starts_with(window_text_));
  std::string rest = text.substr(window_text_.size());
  window_.clear();
  window_text_.clear();
  return rest;
}

bool TokenStreamDecoder::EndsInsidePartialCharacter() const {
  // Walk back over at most three trailing continuation bytes to the byte that starts the
  // character, then compare the bytes present with the length the lead byte announces.
  int continuation_bytes = 0;
  for (size_t i = window_.size(); i-- > 0;) {
    const Tokenizer::PieceInfo& piece = tokenizer_->pieces_[window_[i]];
    if (piece.kind != Tokenizer::PieceKind::kByte) return false;
    if (!IsUtf8Continuation(piece.byte)) {
      return Utf8SequenceLength(piece.byte) > continuation_bytes + 1;
    }
    if (++continuation_bytes == 3) return false;  // no character is longer than 4 bytes
  }
  return false;
}

void TokenStreamDecoder::RestartWindow() {
  // SentencePiece decodes a text piece by itself and a run of byte pieces greedily, one UTF-8
  // character at a time from each lead byte; only the very first piece of a sequence is special
  // (a leading "▁" may be dropped while nothing has been output). So once the window's first
  // unit decodes to non-empty text on its own, decoding [anchor, later ids...] produces exactly
  // Decode(anchor) followed by what the later ids add in the full sequence.
  size_t anchor = window_.size();
  const Tokenizer::PieceInfo& last = tokenizer_->pieces_[window_.back()];
  if (last.kind == Tokenizer::PieceKind::kText) {
    anchor = window_.size() - 1;
  } else if (last.kind == Tokenizer::PieceKind::kByte) {
    // The last character of the byte run: its lead byte and continuation bytes.
    for (size_t i = window_.size(); i-- > 0 && window_.size() - i <= 4;) {
      const Tokenizer::PieceInfo& piece = tokenizer_->pieces_[window_[i]];
      if (piece.kind != Tokenizer::PieceKind::kByte) break;
      if (!IsUtf8Continuation(piece.byte)) {
        anchor = i;
        break;
      }
    }
  }
  if (anchor == 0 || anchor == window_.size()) return;
  std::vector<int> kept(window_.begin() + static_cast<std::ptrdiff_t>(anchor), window_.end());
  std::string kept_text = tokenizer_->Decode(kept);
  if (kept_text.empty()) return;  // e.g. a lone "▁" dropped at the start: keep the context
  window_ = std::move(kept);
  window_text_ = std::move(kept_text);
}

}  // namespace mixattn
