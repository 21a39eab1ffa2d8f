// The engine's text stream: what it reports per step is always whole UTF-8 characters, even while
// it holds text back for a possible stop string, and the pieces add up to the decoded tokens.
#include <gtest/gtest.h>

#include <fstream>
#include <map>

#include "core/random.h"
#include "engine/engine.h"
#include "model/presets.h"
#include "model/weights.h"
#include "server/utf8.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace mixattn {
namespace {

TEST(EngineTextTest, EventsCarryWholeCharactersAndAddUpToTheOutput) {
  testing::TempDir dir;
  {
    // Text full of 2-, 3- and 4-byte characters, so many pieces and byte pieces are multibyte.
    std::ofstream out(dir.file("text.txt"));
    const char* words[] = {"café", "naïve", "日本語", "東京", "Ελληνικά", "привет",
                           "🙂", "über",  "the",    "and",  "données",  "中文"};
    Rng rng(3);
    for (int line = 0; line < 400; ++line) {
      for (int w = 0; w < 10; ++w) out << words[rng.Below(std::size(words))] << ' ';
      out << "\n";
    }
  }
  TokenizerTrainOptions options;
  options.vocab_size = 400;
  Tokenizer::Train({dir.file("text.txt")}, dir.file("tokenizer.model"), options);
  const Tokenizer tokenizer = Tokenizer::Load(dir.file("tokenizer.model"));

  const ModelConfig config =
      MakePresetConfig("ma-pairs", testing::TinyShape(8, 8, tokenizer.vocab_size(), 512));
  const ModelWeights weights = RandomWeights(config, 12);
  EngineOptions engine_options;
  engine_options.kv_memory_bytes = int64_t{1} << 24;
  Engine engine(config, weights, engine_options, &tokenizer);
  // A long stop string makes the engine hold back its last 7 bytes at every step; random weights
  // and sampling make the output an arbitrary mix of pieces, byte pieces included.
  std::map<RequestId, std::string> text;
  std::map<RequestId, std::vector<int>> tokens;
  for (uint64_t seed = 0; seed < 6; ++seed) {
    GenerationRequest request;
    request.prompt = {tokenizer.bos_id()};
    request.max_tokens = 120;
    request.sampling.seed = seed;
    request.stop = {"QQQQQQQQ"};
    request.stop_at_eos = false;
    engine.Submit(request);
  }
  int multibyte_events = 0;
  while (!engine.idle()) {
    for (const EngineEvent& event : engine.Step()) {
      EXPECT_TRUE(server::IsValidUtf8(event.text)) << "event text splits a character";
      for (unsigned char c : event.text) multibyte_events += c >= 0x80;
      text[event.request] += event.text;
      tokens[event.request].insert(tokens[event.request].end(), event.tokens.begin(),
                                   event.tokens.end());
    }
  }
  EXPECT_GT(multibyte_events, 100);  // the test did exercise multibyte text
  for (const auto& [id, output] : text) EXPECT_EQ(output, tokenizer.Decode(tokens.at(id))) << id;
}

TEST(EngineTextTest, LiveTokensCountWhatTheRunningRequestsHold) {
  const ModelConfig config = MakePresetConfig("ma", testing::TinyShape(8, 8, 61, 512));
  const ModelWeights weights = RandomWeights(config, 2);
  EngineOptions options;
  options.kv_memory_bytes = int64_t{1} << 24;
  options.prefill_chunk = 16;
  Engine engine(config, weights, options, nullptr);
  for (int64_t length : {10, 40}) {
    GenerationRequest request;
    request.prompt = testing::RandomTokens(length, 61, static_cast<uint64_t>(length));
    request.max_tokens = 5;
    engine.Submit(request);
  }
  EXPECT_EQ(engine.stats().live_tokens, 0);
  engine.Step();  // first chunks: 10 and 16 tokens
  EXPECT_EQ(engine.stats().live_tokens, 10 + 16);
  while (!engine.idle()) engine.Step();
  EXPECT_EQ(engine.stats().live_tokens, 0);
}

}  // namespace
}  // namespace mixattn
