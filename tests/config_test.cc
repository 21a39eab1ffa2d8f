#include "model/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "model/presets.h"
#include "test_util.h"

namespace mixattn {
namespace {

using testing::ErrorMessage;
using ::testing::HasSubstr;
using Json = nlohmann::ordered_json;

// A 4-layer config: F, S(8), S>1, F>0.
Json ValidConfig() {
  return Json::parse(R"({
    "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 8, "intermediate_size": 64, "vocab_size": 50, "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5, "max_position_embeddings": 128, "tie_word_embeddings": true,
    "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
    "sliding_window": 8,
    "kv_source_layers": [0, 1, 1, 0]
  })");
}

std::string ParseError(const Json& config) {
  return ErrorMessage([&] { ParseConfigJson(config.dump(), "cfg.json"); });
}

TEST(ConfigTest, ParsesValidConfig) {
  const ModelConfig config = ParseConfigJson(ValidConfig().dump(), "cfg.json");
  ASSERT_EQ(config.num_layers(), 4);
  EXPECT_EQ(config.hidden_size, 32);
  EXPECT_EQ(config.layers[1].kind, AttentionKind::kSliding);
  EXPECT_EQ(config.layers[1].window, 8);
  EXPECT_EQ(config.layers[2].kv_source, 1);
  EXPECT_EQ(config.layers[3].kind, AttentionKind::kFull);
  EXPECT_EQ(config.layers[3].kv_source, 0);
  EXPECT_EQ(config.layers[3].window, 0);
}

TEST(ConfigTest, RoundTripsThroughJson) {
  for (const PresetInfo& preset : Presets()) {
    ModelShape shape;
    shape.layers = 13;
    shape.hidden = 64;
    shape.heads = 4;
    shape.kv_heads = 1;
    shape.head_dim = 16;
    shape.tied = preset.name != "ma";
    const ModelConfig config = MakePresetConfig(preset.name, shape);
    const ModelConfig parsed = ParseConfigJson(ConfigToJson(config), preset.name);
    EXPECT_EQ(ConfigToJson(parsed), ConfigToJson(config)) << preset.name;
    EXPECT_EQ(LayoutString(parsed.layers), LayoutString(config.layers)) << preset.name;
  }
}

TEST(ConfigTest, PerLayerWindowList) {
  Json config = ValidConfig();
  config["sliding_window"] = Json::parse("[null, 16, 8, null]");
  const ModelConfig parsed = ParseConfigJson(config.dump(), "cfg.json");
  EXPECT_EQ(parsed.layers[1].window, 16);
  EXPECT_EQ(parsed.layers[2].window, 8);
}

TEST(ConfigTest, ChainsCollapseToTheProducingLayer) {
  Json config = ValidConfig();
  // 3 -> 2 -> 1 -> 0: every reader ends up on layer 0, the only producer.
  config["layer_types"] =
      Json::parse(R"(["full_attention", "full_attention", "full_attention", "sliding_attention"])");
  config["kv_source_layers"] = Json::parse("[0, 0, 1, 2]");
  const ModelConfig parsed = ParseConfigJson(config.dump(), "cfg.json");
  EXPECT_EQ(parsed.layers[1].kv_source, 0);
  EXPECT_EQ(parsed.layers[2].kv_source, 0);
  EXPECT_EQ(parsed.layers[3].kv_source, 0);
}

TEST(ConfigTest, RejectsSourceAfterTheLayer) {
  Json config = ValidConfig();
  config["kv_source_layers"] = Json::parse("[0, 2, 2, 0]");
  const std::string message = ParseError(config);
  EXPECT_THAT(message, HasSubstr("cfg.json"));
  EXPECT_THAT(message, HasSubstr("layer 1"));
  EXPECT_THAT(message, HasSubstr("earlier layer"));
}

TEST(ConfigTest, RejectsFullLayerReadingSlidingCache) {
  Json config = ValidConfig();
  config["kv_source_layers"] = Json::parse("[0, 1, 1, 1]");
  const std::string message = ParseError(config);
  EXPECT_THAT(message, HasSubstr("layer 3 (full_attention)"));
  EXPECT_THAT(message, HasSubstr("layer 1 (sliding_attention, window 8)"));
  EXPECT_THAT(message, HasSubstr("cannot read a sliding cache"));
}

TEST(ConfigTest, RejectsFullLayerReadingSlidingCacheThroughAChain) {
  Json config = ValidConfig();
  config["layer_types"] = Json::parse(
      R"(["sliding_attention", "sliding_attention", "full_attention", "full_attention"])");
  config["kv_source_layers"] = Json::parse("[0, 0, 2, 1]");  // layer 3 -> 1 -> 0 (sliding)
  const std::string message = ParseError(config);
  EXPECT_THAT(message, HasSubstr("layer 3 (full_attention)"));
  EXPECT_THAT(message, HasSubstr("layer 0 (sliding_attention"));
  EXPECT_THAT(message, HasSubstr("via layer 1"));
}

TEST(ConfigTest, RejectsSlidingReadingSmallerWindow) {
  Json config = ValidConfig();
  config["sliding_window"] = Json::parse("[null, 8, 16, null]");
  const std::string message = ParseError(config);
  EXPECT_THAT(message, HasSubstr("layer 2 (sliding_attention, window 16)"));
  EXPECT_THAT(message, HasSubstr("16 > 8"));
}

TEST(ConfigTest, SlidingLayerMayReadFullCache) {
  Json config = ValidConfig();
  config["kv_source_layers"] = Json::parse("[0, 0, 1, 0]");
  const ModelConfig parsed = ParseConfigJson(config.dump(), "cfg.json");
  EXPECT_EQ(parsed.layers[1].kv_source, 0);
  EXPECT_EQ(parsed.layers[2].kv_source, 0);
}

TEST(ConfigTest, RejectsHeadsThatDoNotDivide) {
  Json config = ValidConfig();
  config["num_key_value_heads"] = 3;
  EXPECT_THAT(ParseError(config),
              HasSubstr("num_attention_heads = 4 is not divisible by num_key_value_heads = 3"));
}

TEST(ConfigTest, RejectsMissingFields) {
  for (const char* field :
       {"hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "head_dim", "intermediate_size", "vocab_size", "rope_theta", "rms_norm_eps",
        "max_position_embeddings", "tie_word_embeddings", "layer_types", "kv_source_layers",
        "sliding_window"}) {
    Json config = ValidConfig();
    config.erase(field);
    EXPECT_THAT(ParseError(config), HasSubstr(std::string("missing field '") + field + "'"))
        << field;
  }
}

TEST(ConfigTest, RejectsUnknownField) {
  Json config = ValidConfig();
  config["num_experts"] = 8;
  EXPECT_THAT(ParseError(config), HasSubstr("unknown field 'num_experts'"));
}

TEST(ConfigTest, RejectsWrongTypesAndValues) {
  struct Case {
    const char* field;
    Json value;
    const char* expected;
  };
  const std::vector<Case> cases = {
      {"hidden_size", "32", "'hidden_size' must be an integer"},
      {"hidden_size", 0, "'hidden_size' = 0 must be in [1,"},
      {"head_dim", 7, "head_dim = 7 must be even"},
      {"rope_theta", -1.0, "'rope_theta' must be > 0"},
      {"tie_word_embeddings", 1, "must be true or false"},
      {"layer_types", Json::parse(R"(["full_attention"])"),
       "'layer_types' has 1 entries; num_hidden_layers is 4"},
      {"layer_types",
       Json::parse(R"(["full", "sliding_attention", "sliding_attention", "full_attention"])"),
       "layer_types[0] = \"full\""},
      {"kv_source_layers", Json::parse(R"([0, 1, "1", 0])"),
       "kv_source_layers[2] must be a layer index"},
      {"kv_source_layers", Json::parse(R"([0, 1, -1, 0])"), "layer 2 has kv_source_layers[2] = -1"},
      {"sliding_window", 0, "sliding_window = 0 must be a window of at least 1 token"},
      {"sliding_window", Json::parse("[8, 8]"), "'sliding_window' has 2 entries"},
      {"hidden_act", "gelu", "hidden_act = \"gelu\" is not supported"},
      {"attention_bias", true, "attention_bias = true is not supported"},
  };
  for (const Case& c : cases) {
    Json config = ValidConfig();
    config[c.field] = c.value;
    EXPECT_THAT(ParseError(config), HasSubstr(c.expected)) << c.field << " = " << c.value.dump();
  }
}

TEST(ConfigTest, RejectsMalformedJson) {
  EXPECT_THAT(ErrorMessage([] { ParseConfigJson("{\"hidden_size\": ", "bad.json"); }),
              HasSubstr("bad.json: not valid JSON"));
  EXPECT_THAT(ErrorMessage([] { ParseConfigJson("[1, 2]", "bad.json"); }),
              HasSubstr("expected a JSON object"));
}

TEST(ConfigTest, LoadConfigFileNamesMissingFile) {
  EXPECT_THAT(ErrorMessage([] { LoadConfigFile("/nonexistent/config.json"); }),
              HasSubstr("/nonexistent/config.json: cannot open"));
}

}  // namespace
}  // namespace mixattn
