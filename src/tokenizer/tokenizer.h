// Tokenizer: UTF-8 text <-> token ids, a thin wrapper around SentencePiece.
//
// The wrapper exists to make SentencePiece behave like the rest of mixattn: every failure a user
// can cause (a missing or corrupt model file, empty training text, a vocabulary the text cannot
// fill, an id outside the vocabulary) is a mixattn::Error that names the file or value and says
// what was expected; no sentencepiece::util::Status and no SentencePiece crash escapes.
//
// Models trained here share one layout so every checkpoint agrees on the special ids:
//   pad = 0, bos = 1, eos = 2, unk = 3,
// and they round-trip exactly: Decode(Encode(text)) == text for any valid UTF-8 text, including
// whitespace runs, newlines and characters never seen in training (byte fallback).
//
// Legend: V = vocab_size (number of pieces), N = number of ids in a sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}  // namespace sentencepiece

namespace mixattn {

struct TokenizerTrainOptions {
  int vocab_size = 8192;
  std::string model_type = "bpe";  // "bpe" or "unigram"
  // Fraction of the training characters that get their own piece; the rarest rest are left to
  // byte fallback. 1.0 keeps every character seen in training.
  double character_coverage = 1.0;
  // SentencePiece's input_sentence_size: at most this many lines (sampled uniformly, by reservoir
  // sampling, when the input has more) feed training. 0 means use every line; otherwise
  // SentencePiece requires more than 100.
  int64_t max_sentences = 2'000'000;
  int num_threads = 2;
  // Characters without a piece are encoded as their UTF-8 bytes (256 pieces <0x00>..<0xFF>)
  // instead of <unk>, so nothing is lost. Those 256 pieces count towards vocab_size.
  bool byte_fallback = true;
};

class Tokenizer {
 public:
  // The special ids of every model Train writes.
  static constexpr int kPadId = 0;
  static constexpr int kBosId = 1;
  static constexpr int kEosId = 2;
  static constexpr int kUnkId = 3;

  // Trains a model on the lines of `input_files` (UTF-8 text, one training sentence per line)
  // and writes it to `model_path` (by convention tokenizer.model beside config.json). The file
  // appears atomically: a reader sees either the old file or the complete new one, and no
  // SentencePiece side files (.vocab) are left behind. Throws Error when an input file is missing
  // or holds no text, when an option is invalid, or when the text cannot fill `vocab_size`
  // pieces (the message carries SentencePiece's suggested maximum).
  static void Train(const std::vector<std::string>& input_files, const std::string& model_path,
                    const TokenizerTrainOptions& options);

  // Loads any SentencePiece model file. Throws Error when the file is missing, unreadable or not
  // a SentencePiece model.
  static Tokenizer Load(const std::string& model_path);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Splits UTF-8 text into ids [N]. Adds no BOS/EOS; callers that want them add bos_id() /
  // eos_id() themselves. Invalid UTF-8 bytes are encoded as U+FFFD.
  // SentencePiece uses U+2581 ("▁") to stand for a space, so on its own it would decode a "▁" in
  // the text as " "; for models with byte pieces we encode each "▁" as its three UTF-8 bytes
  // instead, so it round-trips too.
  std::vector<int> Encode(std::string_view text) const;

  // Joins ids [N] back into text. Throws Error for an id outside [0, vocab_size()). Control
  // pieces (pad, bos, eos) decode to nothing; byte pieces that do not form valid UTF-8 decode to
  // U+FFFD.
  std::string Decode(std::span<const int> ids) const;

  // The bytes one token contributes in the middle of a sequence: a text piece's characters (with
  // SentencePiece's "▁" shown as a space), the single raw byte of a byte-fallback piece, nothing
  // for a control piece. For models trained here, concatenating DecodePiece over ids equals
  // Decode(ids) whenever the result is valid UTF-8. A byte piece alone may be an incomplete
  // UTF-8 character, so text shown to a user while streaming should come from
  // TokenStreamDecoder instead. Throws Error for an id outside [0, vocab_size()).
  std::string DecodePiece(int id) const;

  int vocab_size() const;
  // Special ids; -1 when a model loaded from elsewhere does not define one.
  int bos_id() const;
  int eos_id() const;
  int pad_id() const;
  int unk_id() const;

 private:
  friend class TokenStreamDecoder;

  // How a piece decodes; derived once at load time from SentencePiece's piece types.
  enum class PieceKind : uint8_t {
    kText,     // normal or user-defined piece: its characters, "▁" -> " "
    kByte,     // byte-fallback piece <0xXX>: one raw byte
    kControl,  // pad / bos / eos: decodes to nothing
    kOther,    // unknown or unused piece: whatever SentencePiece's Decode makes of it
  };
  struct PieceInfo {
    PieceKind kind;
    uint8_t byte;  // the byte of a kByte piece, 0 otherwise
  };

  Tokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> processor,
            std::string model_path);
  // Throws Error naming the id, `where` it was found (e.g. " at position 3") and the model
  // unless id is in [0, vocab_size()).
  void CheckId(int id, std::string_view where) const;
  // SentencePiece's Encode of `text`, appended to `ids`.
  void EncodeSegment(std::string_view text, std::vector<int>& ids) const;

  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
  std::string model_path_;         // for error messages
  std::vector<PieceInfo> pieces_;  // [V]
  // Byte-piece ids of U+2581's UTF-8 bytes E2 96 81, when Encode escapes "▁" (see Encode);
  // empty when the model lacks byte pieces or encodes a prefix space.
  std::vector<int> space_symbol_ids_;
};

// Turns ids arriving one at a time (generation) into text that is safe to show: each Push
// returns only complete UTF-8, holding back the bytes of a character split across several
// byte-fallback tokens until its last byte arrives. The concatenation of all Push results and a
// final Flush equals tokenizer.Decode(all ids).
//
// How: it decodes a short window of recent ids and returns the part of the decoded text that is
// new. The window restarts at the last token whose text stands on its own (a text piece, or a
// complete UTF-8 character of byte pieces), so each Push costs O(window), not O(ids so far).
//
// The tokenizer must outlive the decoder.
class TokenStreamDecoder {
 public:
  explicit TokenStreamDecoder(const Tokenizer& tokenizer);

  // Adds one id; returns the newly completed text, possibly empty. Throws Error for an id
  // outside [0, vocab_size()).
  std::string Push(int id);

  // Ends the stream: returns whatever is held back (an incomplete character decodes to U+FFFD,
  // as in Decode) and resets the decoder for a new sequence.
  std::string Flush();

 private:
  // True when the window ends inside a UTF-8 character: its last byte pieces are a lead byte
  // followed by fewer continuation bytes than the lead announces.
  bool EndsInsidePartialCharacter() const;
  // Drops already-shown ids from the front of the window, keeping the last self-contained unit
  // as the anchor that later decodes continue from.
  void RestartWindow();

  const Tokenizer* tokenizer_;
  std::vector<int> window_;  // [N'] recent ids; text of a prefix of them was already returned
  std::string window_text_;  // Decode(window_) as of the last text returned
};

}  // namespace mixattn
