#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"

namespace mixattn {
namespace {

namespace fs = std::filesystem;

constexpr int kVocabSize = 400;  // 4 specials + 256 byte pieces + ~80 characters + merges

// A directory of its own for one test, removed with everything in it at the end.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "mixattn_tokenizer_XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed for " << pattern;
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string File(const std::string& name) const { return (path_ / name).string(); }
  std::vector<std::string> Listing() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(path_)) {
      names.push_back(entry.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  fs::path path_;
};

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream file(path, std::ios::binary);
  file << contents;
  ASSERT_TRUE(file.good()) << path;
}

// A few hundred lines of varied English, the same on every run (a fixed linear congruential
// generator picks the words): capitals, punctuation, numbers, indentation, quotes.
std::string TrainingText(int lines) {
  static const char* const kWords[] = {
      "the",     "a",        "model",   "attention", "layer",   "cache",    "window",    "token",
      "reads",   "writes",   "sliding", "full",      "keys",    "values",   "query",     "head",
      "small",   "large",    "fast",    "slow",      "memory",  "and",      "or",        "but",
      "with",    "from",     "into",    "over",      "every",   "some",     "which",     "while",
      "because", "after",    "before",  "train",     "trained", "training", "loss",      "gradient",
      "step",    "batch",    "quick",   "brown",     "fox",     "jumps",    "lazy",      "dog",
      "river",   "mountain", "city",    "morning",   "evening", "people",   "house",     "garden",
      "is",      "was",      "are",     "were",      "has",     "had",      "will",      "can",
      "should",  "might",    "never",   "always",    "often",   "today",    "yesterday", "tomorrow",
      "number",  "value",    "string",  "vector",    "return",  "if",       "else",      "for",
      "int",     "float",    "double",  "print",
  };
  static const char* const kEndings[] = {".", ".", ".", "!", "?", ";", ":", ",", "..."};
  constexpr int kNumWords = sizeof(kWords) / sizeof(kWords[0]);
  constexpr int kNumEndings = sizeof(kEndings) / sizeof(kEndings[0]);
  uint32_t state = 12345;
  const auto next = [&state](uint32_t n) {
    state = state * 1664525u + 1013904223u;
    return (state >> 8) % n;
  };
  std::string text;
  for (int line = 0; line < lines; ++line) {
    if (next(8) == 0) text += "    ";  // indented, like code
    const int words = 4 + static_cast<int>(next(10));
    for (int w = 0; w < words; ++w) {
      std::string word = kWords[next(kNumWords)];
      if (w == 0 || next(12) == 0) word[0] = static_cast<char>(word[0] - 'a' + 'A');
      if (next(9) == 0) word = std::to_string(next(100000));
      if (next(15) == 0) word = "\"" + word + "\"";
      if (next(10) == 0) word += "(" + std::to_string(next(10)) + ")";
      if (w > 0) text += next(20) == 0 ? "  " : " ";
      text += word;
      if (w + 1 < words && next(7) == 0) text += ",";
    }
    text += kEndings[next(kNumEndings)];
    text += '\n';
  }
  return text;
}

// Valid UTF-8 per RFC 3629 (no overlong forms, no surrogates, nothing above U+10FFFF).
bool IsValidUtf8(const std::string& text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto byte = static_cast<uint8_t>(text[i]);
    int length = 0;
    uint32_t code_point = 0;
    if (byte < 0x80) {
      length = 1;
      code_point = byte;
    } else if ((byte & 0xE0) == 0xC0) {
      length = 2;
      code_point = byte & 0x1F;
    } else if ((byte & 0xF0) == 0xE0) {
      length = 3;
      code_point = byte & 0x0F;
    } else if ((byte & 0xF8) == 0xF0) {
      length = 4;
      code_point = byte & 0x07;
    } else {
      return false;
    }
    if (i + length > text.size()) return false;
    for (int k = 1; k < length; ++k) {
      const auto next = static_cast<uint8_t>(text[i + k]);
      if ((next & 0xC0) != 0x80) return false;
      code_point = (code_point << 6) | (next & 0x3F);
    }
    static constexpr uint32_t kMinForLength[] = {0, 0, 0x80, 0x800, 0x10000};
    if (code_point < kMinForLength[length] || code_point > 0x10FFFF ||
        (code_point >= 0xD800 && code_point <= 0xDFFF)) {
      return false;
    }
    i += length;
  }
  return true;
}

// Passes when `part` occurs in `text`; prints both otherwise.
::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << text << "\" does not contain \"" << part << "\"";
}

// Expects `body` to throw mixattn::Error and returns its message ("" when it did not throw).
template <typename Body>
std::string ErrorMessage(Body&& body) {
  try {
    body();
  } catch (const Error& error) {
    return error.what();
  } catch (const std::exception& other) {
    ADD_FAILURE() << "expected mixattn::Error, got another exception: " << other.what();
    return "";
  }
  ADD_FAILURE() << "expected mixattn::Error, nothing was thrown";
  return "";
}

// Texts that must survive Encode -> Decode byte for byte. Several use characters that never
// occur in the training text (byte fallback).
const std::vector<std::string>& RoundTripTexts() {
  static const std::vector<std::string> texts = {
      "",
      "The quick brown fox jumps over the lazy dog.",
      "  leading spaces, trailing spaces  ",
      "multiple   spaces\tand\ttabs",
      "lines\nand\n\nblank lines\n",
      "windows\r\nline\r\nendings\r\n",
      "    if (x) {\n        return 42;\n    }\n",
      "digits 0123456789, pi 3.14159, year 2024, big 18446744073709551615",
      "caf\u00e9 na\u00efve r\u00e9sum\u00e9",
      "\u4e2d\u6587\u6587\u672c",
      "emoji \U0001F600\U0001F680 mixed with text",
      "\u00c6\u00d8\u00c5 \u0394\u03b7\u03bc \u05e9\u05dc\u05d5\u05dd "
      "\u0928\u092e\u0938\u094d\u0924\u0947",
      "symbols ~`@#$%^&*_+=|\\<>{}[] and \u2581 the marker itself",
      " ",
      "\n",
  };
  return texts;
}

class TokenizerTest : public ::testing::Test {
 protected:
  // Trains a model on the generated text (in its own file of the temp dir) and loads it.
  Tokenizer TrainSmall(const TokenizerTrainOptions& options) {
    const std::string input = dir_.File("train.txt");
    WriteFile(input, TrainingText(400));
    const std::string model = dir_.File("tokenizer.model");
    Tokenizer::Train({input}, model, options);
    return Tokenizer::Load(model);
  }

  static TokenizerTrainOptions SmallOptions() {
    TokenizerTrainOptions options;
    options.vocab_size = kVocabSize;
    return options;
  }

  TempDir dir_;
};

TEST_F(TokenizerTest, TrainWritesOnlyTheModelFileWithRequestedVocab) {
  const Tokenizer tokenizer = TrainSmall(SmallOptions());
  EXPECT_EQ(tokenizer.vocab_size(), kVocabSize);
  // No .vocab side file and no temporary file are left next to the model.
  EXPECT_EQ(dir_.Listing(), (std::vector<std::string>{"tokenizer.model", "train.txt"}));
}

TEST_F(TokenizerTest, SpecialIdsAreFixed) {
  const Tokenizer tokenizer = TrainSmall(SmallOptions());
  EXPECT_EQ(tokenizer.pad_id(), 0);
  EXPECT_EQ(tokenizer.bos_id(), 1);
  EXPECT_EQ(tokenizer.eos_id(), 2);
  EXPECT_EQ(tokenizer.unk_id(), 3);
  EXPECT_EQ(tokenizer.pad_id(), Tokenizer::kPadId);
  EXPECT_EQ(tokenizer.bos_id(), Tokenizer::kBosId);
  EXPECT_EQ(tokenizer.eos_id(), Tokenizer::kEosId);
  EXPECT_EQ(tokenizer.unk_id(), Tokenizer::kUnkId);
  // Control pieces have no text; Encode adds no BOS/EOS.
  EXPECT_EQ(tokenizer.DecodePiece(Tokenizer::kBosId), "");
  EXPECT_EQ(tokenizer.DecodePiece(Tokenizer::kEosId), "");
  EXPECT_EQ(tokenizer.DecodePiece(Tokenizer::kPadId), "");
  const std::vector<int> ids = tokenizer.Encode("hello");
  ASSERT_FALSE(ids.empty());
  EXPECT_NE(ids.front(), Tokenizer::kBosId);
  EXPECT_NE(ids.back(), Tokenizer::kEosId);
}

TEST_F(TokenizerTest, RoundTripsExactly) {
  const Tokenizer tokenizer = TrainSmall(SmallOptions());
  for (const std::string& text : RoundTripTexts()) {
    const std::vector<int> ids = tokenizer.Encode(text);
    EXPECT_EQ(tokenizer.Decode(ids), text) << "text: " << text;
    for (int id : ids) {
      EXPECT_NE(id, tokenizer.unk_id()) << "byte fallback should leave no <unk> in: " << text;
    }
  }
  const std::string training_text = TrainingText(400);
  EXPECT_EQ(tokenizer.Decode(tokenizer.Encode(training_text)), training_text);
}

TEST_F(TokenizerTest, EncodesEmptyTextAsNoIds) {
  const Tokenizer tokenizer = TrainSmall(SmallOptions());
  EXPECT_TRUE(tokenizer.Encode("").empty());
  EXPECT_EQ(tokenizer.Decode({}), "");
}

TEST_F(TokenizerTest, InvalidUtf8BecomesReplacementCharacter) {
  const Tokenizer tokenizer = TrainSmall(SmallOptions());
  EXPECT_EQ(tokenizer.Decode(tokenizer.Encode("a\xff b")), "a\ufffd b");
  const std::string with_nul("x\0y", 3);
  EXPECT_EQ(tokenizer.Decode(tokenizer.Encode(with_nul)), with_nul);
}

TEST_F(TokenizerTest, WithoutByteFallbackUnseenCharactersAreUnknown) {
  TokenizerTrainOptions options = SmallOptions();
  options.byte_fallback = false;
  options.vocab_size = 150;  // no 256 byte pieces to make room for
  const Tokenizer tokenizer = TrainSmall(options);
  EXPECT_EQ(tokenizer.vocab_size(), 150);
  const std::vector<int> ids = tokenizer.Encode("the \u4e2d");
  EXPECT_NE(std::find(ids.begin(), ids.end(), tokenizer.unk_id()), ids.end());
  EXPECT_EQ(tokenizer.Decode(tokenizer.Encode("The model reads.")), "The model reads.");
}

TEST_F(TokenizerTest, SplitsNumbersIntoDigits) {
  const Tokenizer tokenizer = TrainSmall(SmallOptions());
  const std::vector<int> ids = tokenizer.Encode("9075311");
  ASSERT_EQ(ids.size(), 7u);
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_EQ(tokenizer.DecodePiece(ids[i]), std::string(1, "9075311"[i]));
  }
}

TEST_F(TokenizerTest, UnseenCharactersFallBackToUtf8Bytes) {
  const Tokenizer tokenizer = TrainSmall(SmallOptions());
  // U+4E2D is 3 bytes in UTF-8 and absent from the training text: one byte piece per byte.
  const std::vector<int> ids = tokenizer.Encode("\u4e2d");
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(tokenizer.DecodePiece(ids[0]), "\xe4");
  EXPECT_EQ(tokenizer.DecodePiece(ids[1]), "\xb8");
  EXPECT_EQ(tokenizer.DecodePiece(ids[2]), "\xad");
}

TEST_F(TokenizerTest, SeparatelyEncodedSegmentsJoinWithoutExtraSpaces) {
  const Tokenizer tokenizer = TrainSmall(SmallOptions());
  const std::string prompt = "The model reads";
  const std::string completion = " the cache.\nNext";
  std::vector<int> ids = tokenizer.Encode(prompt);
  const std::vector<int> more = tokenizer.Encode(completion);
  ids.insert(ids.end(), more.begin(), more.end());
  EXPECT_EQ(tokenizer.Decode(ids), prompt + completion);
}

TEST_F(TokenizerTest, DecodePiecesConcatenateToDecode) {
  const Tokenizer tokenizer = TrainSmall(SmallOptions());
  for (const std::string& text : RoundTripTexts()) {
    const std::vector<int> ids = tokenizer.Encode(text);
    std::string joined;
    for (int id : ids) joined += tokenizer.DecodePiece(id);
    EXPECT_EQ(joined, tokenizer.Decode(ids)) << "text: " << text;
  }
}

TEST_F(TokenizerTest, DecodeRejectsIdsOutsideVocab) {
  const Tokenizer tokenizer = TrainSmall(SmallOptions());
  const std::vector<int> too_large = {5, 6, kVocabSize};
  std::string message = ErrorMessage([&] { tokenizer.Decode(too_large); });
  EXPECT_TRUE(Contains(message, "token id " + std::to_string(kVocabSize) + " at position 2"));
  EXPECT_TRUE(Contains(message, "[0, " + std::to_string(kVocabSize) + ")"));
  EXPECT_TRUE(Contains(message, dir_.File("tokenizer.model")));

  const std::vector<int> negative = {-1};
  EXPECT_TRUE(
      Contains(ErrorMessage([&] { tokenizer.Decode(negative); }), "token id -1 at position 0"));
  EXPECT_TRUE(Contains(ErrorMessage([&] { tokenizer.DecodePiece(kVocabSize); }), "out of range"));
  EXPECT_TRUE(Contains(ErrorMessage([&] { tokenizer.DecodePiece(-7); }), "-7"));
}

TEST_F(TokenizerTest, UnigramModelRoundTrips) {
  TokenizerTrainOptions options = SmallOptions();
  options.model_type = "unigram";
  options.vocab_size = 360;  // unigram can only fill as many pieces as the text supports
  const Tokenizer tokenizer = TrainSmall(options);
  EXPECT_EQ(tokenizer.vocab_size(), 360);
  EXPECT_EQ(tokenizer.unk_id(), 3);
  for (const std::string& text : RoundTripTexts()) {
    EXPECT_EQ(tokenizer.Decode(tokenizer.Encode(text)), text) << "text: " << text;
  }
}

TEST_F(TokenizerTest, TrainsOnSeveralFilesAndSamplesWhenCapped) {
  const std::string first = dir_.File("first.txt");
  const std::string second = dir_.File("second.txt");
  WriteFile(first, TrainingText(300));
  WriteFile(second, "\n\n" + TrainingText(500) + "\n");
  TokenizerTrainOptions options = SmallOptions();
  options.max_sentences = 200;  // fewer than the 800 lines: SentencePiece samples
  const std::string model = dir_.File("tokenizer.model");
  Tokenizer::Train({first, second}, model, options);
  const Tokenizer tokenizer = Tokenizer::Load(model);
  EXPECT_EQ(tokenizer.vocab_size(), kVocabSize);
  EXPECT_EQ(tokenizer.Decode(tokenizer.Encode("The model reads.")), "The model reads.");
}

TEST_F(TokenizerTest, TrainReplacesAnExistingModel) {
  const std::string model = dir_.File("tokenizer.model");
  WriteFile(model, "an old model");
  const Tokenizer tokenizer = TrainSmall(SmallOptions());
  EXPECT_EQ(tokenizer.vocab_size(), kVocabSize);
  EXPECT_EQ(dir_.Listing(), (std::vector<std::string>{"tokenizer.model", "train.txt"}));
}

TEST_F(TokenizerTest, MovedTokenizerKeepsWorking) {
  Tokenizer first = TrainSmall(SmallOptions());
  Tokenizer second = std::move(first);
  EXPECT_EQ(second.Decode(second.Encode("moved text")), "moved text");
  Tokenizer third = Tokenizer::Load(dir_.File("tokenizer.model"));
  third = std::move(second);
  EXPECT_EQ(third.vocab_size(), kVocabSize);
}

TEST_F(TokenizerTest, TrainOnMissingFileNamesTheFile) {
  const std::string missing = dir_.File("no_such_corpus.txt");
  const std::string model = dir_.File("tokenizer.model");
  const std::string message =
      ErrorMessage([&] { Tokenizer::Train({missing}, model, SmallOptions()); });
  EXPECT_TRUE(Contains(message, missing));
  EXPECT_TRUE(Contains(message, "does not exist"));
  EXPECT_TRUE(dir_.Listing().empty());
}

TEST_F(TokenizerTest, TrainOnEmptyTextNamesTheFiles) {
  const std::string empty = dir_.File("empty.txt");
  const std::string blank = dir_.File("blank.txt");
  WriteFile(empty, "");
  WriteFile(blank, "\n\n\r\n\n");
  const std::string model = dir_.File("tokenizer.model");
  const std::string message = ErrorMessage([&] {
    Tokenizer::Train({empty, blank}, model, SmallOptions());
  });
  EXPECT_TRUE(Contains(message, empty));
  EXPECT_TRUE(Contains(message, blank));
  EXPECT_TRUE(Contains(message, "no text"));
  EXPECT_FALSE(fs::exists(model));
}

TEST_F(TokenizerTest, TrainOnlyOnOverlongLinesSaysSo) {
  const std::string input = dir_.File("long_lines.txt");
  WriteFile(input, std::string(5000, 'x') + "\n" + std::string(6000, 'y') + "\n");
  const std::string message = ErrorMessage(
      [&] { Tokenizer::Train({input}, dir_.File("tokenizer.model"), SmallOptions()); });
  EXPECT_TRUE(Contains(message, input));
  EXPECT_TRUE(Contains(message, "longer than 4192 bytes"));
}

TEST_F(TokenizerTest, TrainWithVocabTooLargeForTextSaysSo) {
  const std::string input = dir_.File("train.txt");
  WriteFile(input, TrainingText(400));
  TokenizerTrainOptions options = SmallOptions();
  options.vocab_size = 20000;
  const std::string model = dir_.File("tokenizer.model");
  const std::string message = ErrorMessage([&] { Tokenizer::Train({input}, model, options); });
  EXPECT_TRUE(Contains(message, "vocab_size 20000"));
  EXPECT_TRUE(Contains(message, input));
  EXPECT_TRUE(Contains(message, "Please set it to a value <="));
  // A failed training leaves nothing behind.
  EXPECT_EQ(dir_.Listing(), std::vector<std::string>{"train.txt"});
}

TEST_F(TokenizerTest, TrainWithVocabTooSmallForCharactersSaysSo) {
  const std::string input = dir_.File("train.txt");
  WriteFile(input, TrainingText(400));
  TokenizerTrainOptions options = SmallOptions();
  options.vocab_size = 100;  // less than 256 byte pieces + the characters of the text
  const std::string message =
      ErrorMessage([&] { Tokenizer::Train({input}, dir_.File("tokenizer.model"), options); });
  EXPECT_TRUE(Contains(message, "vocab_size 100"));
  EXPECT_TRUE(Contains(message, input));
  EXPECT_TRUE(Contains(message, "byte pieces count towards vocab_size"));
}

TEST_F(TokenizerTest, TrainRejectsInvalidOptions) {
  const std::string input = dir_.File("train.txt");
  WriteFile(input, TrainingText(50));
  const std::string model = dir_.File("tokenizer.model");
  const auto train_with = [&](const TokenizerTrainOptions& options) {
    return ErrorMessage([&] { Tokenizer::Train({input}, model, options); });
  };
  TokenizerTrainOptions options = SmallOptions();
  options.model_type = "wordpiece";
  EXPECT_TRUE(Contains(train_with(options), "\"wordpiece\""));
  options = SmallOptions();
  options.vocab_size = 0;
  EXPECT_TRUE(Contains(train_with(options), "vocab_size must be > 0"));
  options = SmallOptions();
  options.character_coverage = 1.5;
  EXPECT_TRUE(Contains(train_with(options), "character_coverage"));
  options = SmallOptions();
  options.max_sentences = 50;
  EXPECT_TRUE(Contains(train_with(options), "max_sentences"));
  options = SmallOptions();
  options.num_threads = 0;
  EXPECT_TRUE(Contains(train_with(options), "num_threads"));
  EXPECT_TRUE(Contains(ErrorMessage([&] { Tokenizer::Train({}, model, SmallOptions()); }),
                       "at least one input"));
  const std::string unwritable = dir_.File("missing_dir/tokenizer.model");
  EXPECT_TRUE(Contains(ErrorMessage([&] { Tokenizer::Train({input}, unwritable, SmallOptions()); }),
                       unwritable));
}

TEST_F(TokenizerTest, LoadMissingFileNamesTheFile) {
  const std::string missing = dir_.File("nothing_here.model");
  const std::string message = ErrorMessage([&] { Tokenizer::Load(missing); });
  EXPECT_TRUE(Contains(message, missing));
  EXPECT_TRUE(Contains(message, "does not exist"));
}

TEST_F(TokenizerTest, LoadRejectsFilesThatAreNotModels) {
  std::string random_bytes;
  uint32_t state = 7;
  for (int i = 0; i < 4096; ++i) {
    state = state * 1664525u + 1013904223u;
    random_bytes += static_cast<char>(state >> 24);
  }
  const std::vector<std::pair<std::string, std::string>> files = {
      {"garbage.model", random_bytes},
      {"text.model", "this is a text file, not a SentencePiece model\n"},
      {"empty.model", ""},
      {"truncated.model", std::string("\x0a\x00", 2)},
  };
  for (const auto& [name, contents] : files) {
    const std::string path = dir_.File(name);
    WriteFile(path, contents);
    const std::string message = ErrorMessage([&] { Tokenizer::Load(path); });
    EXPECT_TRUE(Contains(message, path));
    EXPECT_TRUE(Contains(message, "not a valid SentencePiece model"));
  }
  // A directory (SentencePiece itself would abort the process here).
  const std::string directory = dir_.File("a_directory.model");
  fs::create_directory(directory);
  EXPECT_TRUE(Contains(ErrorMessage([&] { Tokenizer::Load(directory); }), directory));
}

// Pushes `ids` one at a time; checks every piece of output is valid UTF-8 (when the ids decode
// to valid UTF-8 at all) and returns the concatenated stream.
std::string Stream(const Tokenizer& tokenizer, const std::vector<int>& ids, bool expect_valid) {
  TokenStreamDecoder decoder(tokenizer);
  std::string streamed;
  for (int id : ids) {
    const std::string part = decoder.Push(id);
    if (expect_valid) {
      EXPECT_TRUE(IsValidUtf8(part)) << "incomplete character emitted";
    }
    streamed += part;
  }
  streamed += decoder.Flush();
  return streamed;
}

TEST_F(TokenizerTest, StreamDecoderMatchesDecode) {
  const Tokenizer tokenizer = TrainSmall(SmallOptions());
  for (const std::string& text : RoundTripTexts()) {
    const std::vector<int> ids = tokenizer.Encode(text);
    EXPECT_EQ(Stream(tokenizer, ids, /*expect_valid=*/true), tokenizer.Decode(ids))
        << "text: " << text;
  }
  const std::vector<int> ids = tokenizer.Encode(TrainingText(100));
  EXPECT_EQ(Stream(tokenizer, ids, /*expect_valid=*/true), tokenizer.Decode(ids));
}

TEST_F(TokenizerTest, StreamDecoderHoldsBytesUntilCharacterCompletes) {
  const Tokenizer tokenizer = TrainSmall(SmallOptions());
  // U+1F600 is 4 bytes, each its own byte piece.
  const std::vector<int> ids = tokenizer.Encode("a\U0001F600b");
  ASSERT_EQ(ids.size(), 6u);
  TokenStreamDecoder decoder(tokenizer);
  EXPECT_EQ(decoder.Push(ids[0]), "a");
  EXPECT_EQ(decoder.Push(ids[1]), "");
  EXPECT_EQ(decoder.Push(ids[2]), "");
  EXPECT_EQ(decoder.Push(ids[3]), "");
  EXPECT_EQ(decoder.Push(ids[4]), "\U0001F600");
  EXPECT_EQ(decoder.Push(ids[5]), "b");
  EXPECT_EQ(decoder.Flush(), "");
}

TEST_F(TokenizerTest, StreamDecoderFlushesIncompleteCharacterLikeDecode) {
  const Tokenizer tokenizer = TrainSmall(SmallOptions());
  const std::vector<int> ids = tokenizer.Encode("x\u4e2d");
  ASSERT_EQ(ids.size(), 4u);
  const std::vector<int> cut(ids.begin(), ids.end() - 1);  // "x" and 2 of the 3 bytes
  TokenStreamDecoder decoder(tokenizer);
  std::string streamed;
  for (int id : cut) streamed += decoder.Push(id);
  EXPECT_EQ(streamed, "x");
  streamed += decoder.Flush();
  EXPECT_EQ(streamed, tokenizer.Decode(cut));
  // Flush resets: the decoder serves a new sequence.
  EXPECT_EQ(decoder.Push(ids[0]), "x");
  EXPECT_EQ(decoder.Flush(), "");
}

TEST_F(TokenizerTest, StreamDecoderMatchesDecodeOnArbitraryIds) {
  // What a sampled model may emit: stray continuation bytes, cut characters, controls, <unk>.
  const Tokenizer tokenizer = TrainSmall(SmallOptions());
  const std::vector<int> byte_ids = tokenizer.Encode("\u00e9\u4e2d\U0001F600\u0394");
  uint32_t state = 99;
  const auto next = [&state](uint32_t n) {
    state = state * 1664525u + 1013904223u;
    return static_cast<int>((state >> 8) % n);
  };
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int> ids;
    const int length = 1 + next(40);
    for (int i = 0; i < length; ++i) {
      ids.push_back(next(2) == 0 ? byte_ids[next(static_cast<uint32_t>(byte_ids.size()))]
                                 : next(kVocabSize));
    }
    EXPECT_EQ(Stream(tokenizer, ids, /*expect_valid=*/false), tokenizer.Decode(ids))
        << "trial " << trial;
  }
}

TEST_F(TokenizerTest, StreamDecoderRejectsIdsOutsideVocab) {
  const Tokenizer tokenizer = TrainSmall(SmallOptions());
  TokenStreamDecoder decoder(tokenizer);
  EXPECT_TRUE(Contains(ErrorMessage([&] { decoder.Push(kVocabSize + 3); }),
                       std::to_string(kVocabSize + 3)));
}

}  // namespace
}  // namespace mixattn
