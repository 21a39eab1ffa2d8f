// Tests of the LLM Foundry block_overrides import (research/paper.md section 6).
#include "model/foundry_import.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <string>

#include "core/error.h"
#include "model/config.h"

namespace mixattn {
namespace {

// The Character.AI-style example of the MPTConfig docstring and LLM Foundry PR #1299 (paper.md
// section 6.3), as a training YAML with the model under `model:`.
constexpr const char* kCharacterAiYaml = R"(
variables:
  max_seq_len: 4096
model:
  name: mpt_causal_lm
  d_model: 256
  n_heads: 8
  n_layers: 13
  expansion_ratio: 4
  max_seq_len: ${variables.max_seq_len}
  vocab_size: 50368
  attn_config:
    attn_impl: flash
    sliding_window_size: -1
    rope: true
    rope_theta: 10000
  block_overrides:
    order:
      - name: default
      - repeat: 2
        order:
          - name: sliding_window_layer
          - name: sliding_window_layer_reuse
          - name: sliding_window_layer
          - name: sliding_window_layer_reuse
            repeat: 2
          - name: reuse_kv_layer
    overrides:
      sliding_window_layer:
        attn_config:
          sliding_window_size: 1024
      sliding_window_layer_reuse:
        attn_config:
          sliding_window_size: 1024
          reuse_kv_layer_idx: -1
      reuse_kv_layer:
        attn_config:
          reuse_kv_layer_idx: -6
)";

constexpr const char* kCharacterAiPlan =
    "0G 1s 2s->1 3s 4s->3 5s->3 6G->0 7s 8s->7 9s 10s->9 11s->9 12G->0";

// The layer plan in paper.md's notation: G = full, s = sliding, "->k" = reads layer k's K/V.
std::string Plan(const FoundryImport& imported) {
  std::ostringstream out;
  for (size_t i = 0; i < imported.layers.size(); ++i) {
    const LayerSpec& layer = imported.layers[i];
    out << (i == 0 ? "" : " ") << i << (layer.kind == AttentionKind::kFull ? "G" : "s");
    if (layer.kv_source != static_cast<int>(i)) out << "->" << layer.kv_source;
  }
  return out.str();
}

// Replaces the one occurrence of `from` in `text` (the test fails if there is none).
std::string Replace(std::string text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << "test bug: '" << from << "' is not in the YAML";
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

// Imports `text` as "test.yaml" and expects a mixattn::Error naming the source and every part.
void ExpectImportError(const std::string& text, std::initializer_list<std::string> parts,
                       int n_layers = 0) {
  try {
    ImportFoundryConfig(text, "test.yaml", n_layers);
    ADD_FAILURE() << "expected a mixattn::Error";
  } catch (const Error& error) {
    const std::string message = error.what();
    EXPECT_EQ(message.rfind("test.yaml: ", 0), 0u) << message;
    for (const std::string& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
    }
  } catch (const std::exception& other) {
    ADD_FAILURE() << "expected a mixattn::Error, got another exception: " << other.what();
  }
}

void ExpectCharacterAiLayers(const FoundryImport& imported) {
  EXPECT_EQ(Plan(imported), kCharacterAiPlan);
  ASSERT_EQ(imported.layers.size(), 13u);
  for (const LayerSpec& layer : imported.layers) {
    // sliding_window_size 1024 = keys i-1024 .. i = 1025 tokens including the query.
    EXPECT_EQ(layer.window, layer.kind == AttentionKind::kSliding ? 1025 : 0);
  }
  const std::vector<std::string> names = {"default",
                                          "sliding_window_layer",
                                          "sliding_window_layer_reuse",
                                          "sliding_window_layer",
                                          "sliding_window_layer_reuse",
                                          "sliding_window_layer_reuse",
                                          "reuse_kv_layer"};
  ASSERT_EQ(imported.layer_override_names.size(), 13u);
  for (size_t i = 0; i < 13; ++i) {
    EXPECT_EQ(imported.layer_override_names[i], names[i < 7 ? i : i - 6]) << "layer " << i;
  }
}

TEST(FoundryImport, CharacterAiExampleResolvesAsInThePaperNotes) {
  const FoundryImport imported = ImportFoundryConfig(kCharacterAiYaml, "cai.yaml");
  ExpectCharacterAiLayers(imported);
}

TEST(FoundryImport, SameConfigAsHuggingFaceConfigJsonGivesTheSamePlan) {
  // An HF MPT config.json: the model keys at the top level, JSON syntax.
  const std::string json = R"({
  "architectures": ["MPTForCausalLM"],
  "d_model": 256,
  "n_heads": 8,
  "n_layers": 13,
  "expansion_ratio": 4,
  "max_seq_len": 4096,
  "vocab_size": 50368,
  "attn_config": {"attn_impl": "flash", "sliding_window_size": -1, "rope_theta": 10000},
  "block_overrides": {
    "order": [
      {"name": "default"},
      {"repeat": 2, "order": [
        {"name": "sliding_window_layer"},
        {"name": "sliding_window_layer_reuse"},
        {"name": "sliding_window_layer"},
        {"name": "sliding_window_layer_reuse", "repeat": 2},
        {"name": "reuse_kv_layer"}]}
    ],
    "overrides": {
      "sliding_window_layer": {"attn_config": {"sliding_window_size": 1024}},
      "sliding_window_layer_reuse":
          {"attn_config": {"sliding_window_size": 1024, "reuse_kv_layer_idx": -1}},
      "reuse_kv_layer": {"attn_config": {"reuse_kv_layer_idx": -6}}
    }
  }
})";
  ExpectCharacterAiLayers(ImportFoundryConfig(json, "config.json"));
  // Compact JSON (no space after ':') parses too.
  const std::string compact =
      R"({"n_layers":2,"attn_config":{"sliding_window_size":-1},"block_overrides":{)"
      R"("order":[{"name":"default"},{"name":"r"}],)"
      R"("overrides":{"r":{"attn_config":{"reuse_kv_layer_idx":-1}}}}})";
  EXPECT_EQ(Plan(ImportFoundryConfig(compact, "compact.json")), "0G 1G->0");
}

TEST(FoundryImport, PairsLikeSketchResolvesAsWritten) {
  // paper.md section 6.4: [default, blk, reuse_kv_layer, blk, default, blk, reuse_kv_layer, blk];
  // blk is written once with a YAML anchor and reused by alias.
  const std::string yaml = R"(
model:
  n_layers: 24
  attn_config: {sliding_window_size: -1}
  block_overrides:
    order:
      - name: default
      - &blk
        order:
          - name: sliding_window_layer
          - name: sliding_window_layer_reuse
          - name: sliding_window_layer
          - {name: sliding_window_layer_reuse, repeat: 2}
      - name: reuse_kv_layer
      - *blk
      - name: default
      - *blk
      - name: reuse_kv_layer
      - *blk
    overrides:
      sliding_window_layer: {attn_config: {sliding_window_size: 1024}}
      sliding_window_layer_reuse: {attn_config: {sliding_window_size: 1024, reuse_kv_layer_idx: -1}}
      reuse_kv_layer: {attn_config: {reuse_kv_layer_idx: -6}}
)";
  const FoundryImport imported = ImportFoundryConfig(yaml, "pairs.yaml");
  EXPECT_EQ(Plan(imported),
            "0G 1s 2s->1 3s 4s->3 5s->3 6G->0 7s 8s->7 9s 10s->9 11s->9 "
            "12G 13s 14s->13 15s 16s->15 17s->15 18G->12 19s 20s->19 21s 22s->21 23s->21");
  EXPECT_EQ(imported.layer_override_names[12], "default");
  EXPECT_EQ(imported.layer_override_names[18], "reuse_kv_layer");
}

TEST(FoundryImport, ImportedPlanPassesValidateConfig) {
  const FoundryImport imported = ImportFoundryConfig(kCharacterAiYaml, "cai.yaml");
  ModelConfig config;
  config.hidden_size = imported.shape.d_model;
  config.num_attention_heads = imported.shape.n_heads;
  config.num_key_value_heads = imported.shape.kv_n_heads;
  config.head_dim = imported.shape.d_model / imported.shape.n_heads;
  config.intermediate_size = imported.shape.ffn_hidden_size;
  config.vocab_size = imported.shape.vocab_size;
  config.max_position_embeddings = imported.shape.max_seq_len;
  config.rope_theta = imported.shape.rope_theta;
  config.layers = imported.layers;
  ASSERT_NO_THROW(ValidateConfig(config));
  ASSERT_EQ(config.layers.size(), imported.layers.size());
  for (size_t i = 0; i < config.layers.size(); ++i) {
    EXPECT_EQ(config.layers[i].kind, imported.layers[i].kind) << "layer " << i;
    EXPECT_EQ(config.layers[i].window, imported.layers[i].window) << "layer " << i;
    EXPECT_EQ(config.layers[i].kv_source, imported.layers[i].kv_source) << "layer " << i;
  }
}

TEST(FoundryImport, ReadsShapeFields) {
  const FoundryShape cai = ImportFoundryConfig(kCharacterAiYaml, "cai.yaml").shape;
  EXPECT_EQ(cai.d_model, 256);
  EXPECT_EQ(cai.n_heads, 8);
  EXPECT_EQ(cai.kv_n_heads, 8);  // multihead_attention, LLM Foundry's default
  EXPECT_EQ(cai.n_layers, 13);
  EXPECT_EQ(cai.ffn_hidden_size, 1024);  // expansion_ratio 4 * d_model 256
  EXPECT_EQ(cai.vocab_size, 50368);
  EXPECT_EQ(cai.max_seq_len, 4096);  // through ${variables.max_seq_len}
  EXPECT_EQ(cai.rope_theta, 10000.0);

  const std::string gqa = R"(
d_model: 512
n_heads: 16
n_layers: 1
expansion_ratio: 2.5
ffn_config: {ffn_type: mptglu, ffn_hidden_size: 1376}
attn_config: {attn_type: grouped_query_attention, kv_n_heads: 4, rope_theta: 5.0e+5}
block_overrides: {order: [{name: default}]}
)";
  const FoundryShape grouped = ImportFoundryConfig(gqa, "gqa.yaml").shape;
  EXPECT_EQ(grouped.kv_n_heads, 4);
  EXPECT_EQ(grouped.ffn_hidden_size, 1376);  // ffn_hidden_size wins over expansion_ratio
  EXPECT_EQ(grouped.rope_theta, 500000.0);
  EXPECT_EQ(grouped.vocab_size, 0);  // not given
  EXPECT_EQ(grouped.max_seq_len, 0);

  const std::string mqa = Replace(Replace(gqa, "grouped_query_attention", "multiquery_attention"),
                                  "ffn_config: {ffn_type: mptglu, ffn_hidden_size: 1376}", "");
  const FoundryShape multi_query = ImportFoundryConfig(mqa, "mqa.yaml").shape;
  EXPECT_EQ(multi_query.kv_n_heads, 1);
  EXPECT_EQ(multi_query.ffn_hidden_size, 1280);  // 2.5 * 512

  // multihead_attention gives every head its own K/V; LLM Foundry ignores kv_n_heads there.
  const std::string mha = Replace(gqa, "grouped_query_attention", "multihead_attention");
  EXPECT_EQ(ImportFoundryConfig(mha, "mha.yaml").shape.kv_n_heads, 16);

  // Nothing but block_overrides: every shape field is 0 except the layer count used.
  const FoundryShape bare =
      ImportFoundryConfig("block_overrides: {order: [{name: default, repeat: 3}]}", "bare.yaml", 3)
          .shape;
  EXPECT_EQ(bare.d_model, 0);
  EXPECT_EQ(bare.kv_n_heads, 0);
  EXPECT_EQ(bare.ffn_hidden_size, 0);
  EXPECT_EQ(bare.rope_theta, 0.0);
  EXPECT_EQ(bare.n_layers, 3);
}

TEST(FoundryImport, TopLevelRepeatRepeatsTheWholeOrder) {
  const std::string yaml = R"(
n_layers: 6
attn_config: {sliding_window_size: 511}
block_overrides:
  repeat: 3
  order: [{name: default}, {name: global}]
  overrides:
    global: {attn_config: {sliding_window_size: -1}}
)";
  const FoundryImport imported = ImportFoundryConfig(yaml, "repeat.yaml");
  EXPECT_EQ(Plan(imported), "0s 1G 2s 3G 4s 5G");
  EXPECT_EQ(imported.layers[0].window, 512);  // base window 511 + the query itself
  EXPECT_EQ(imported.layers[1].window, 0);
}

TEST(FoundryImport, CallerSuppliesOrOverridesTheLayerCount) {
  const std::string yaml = "block_overrides: {order: [{name: default}], repeat: 4}";
  EXPECT_EQ(ImportFoundryConfig(yaml, "x.yaml", 4).layers.size(), 4u);
  ExpectImportError(yaml, {"n_layers", "not in the file"});
  // The argument wins over the file's n_layers.
  const std::string with_count = Replace(kCharacterAiYaml, "n_layers: 13", "n_layers: 99");
  EXPECT_EQ(Plan(ImportFoundryConfig(with_count, "x.yaml", 13)), kCharacterAiPlan);
}

TEST(FoundryImport, LoadsFromFile) {
  const std::filesystem::path path =
      std::filesystem::temp_directory_path() / "mixattn_foundry_import_test.yaml";
  {
    std::ofstream out(path);
    out << kCharacterAiYaml;
  }
  EXPECT_EQ(Plan(LoadFoundryConfigFile(path.string())), kCharacterAiPlan);
  std::filesystem::remove(path);
  try {
    LoadFoundryConfigFile(path.string());
    ADD_FAILURE() << "expected a mixattn::Error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(path.string()), std::string::npos) << error.what();
  }
}

TEST(FoundryImport, LooksLikeFoundryConfig) {
  EXPECT_TRUE(LooksLikeFoundryConfig(kCharacterAiYaml));
  EXPECT_TRUE(LooksLikeFoundryConfig(R"({"block_overrides": {"order": []}})"));
  EXPECT_FALSE(LooksLikeFoundryConfig(R"({"hidden_size": 64, "layer_types": []})"));
  EXPECT_FALSE(LooksLikeFoundryConfig("model: {d_model: 64, block_overrides: null}"));
  EXPECT_FALSE(LooksLikeFoundryConfig("model: [1, 2"));
  EXPECT_FALSE(LooksLikeFoundryConfig(""));
}

// ---- One test per error case: the message names the source, the YAML path and the value. ----

TEST(FoundryImportError, ItemWithBothNameAndOrder) {
  ExpectImportError(Replace(kCharacterAiYaml, "      - repeat: 2\n",
                            "      - repeat: 2\n        name: default\n"),
                    {"model.block_overrides.order[1]", "both 'name' and 'order'"});
}

TEST(FoundryImportError, ItemWithNeitherNameNorOrder) {
  ExpectImportError(Replace(kCharacterAiYaml, "      - name: default\n", "      - repeat: 1\n"),
                    {"model.block_overrides.order[0]", "neither 'name' nor 'order'"});
}

TEST(FoundryImportError, RepeatZero) {
  ExpectImportError(Replace(kCharacterAiYaml, "            repeat: 2", "            repeat: 0"),
                    {"model.block_overrides.order[1].order[3].repeat", "positive", "got 0"});
}

TEST(FoundryImportError, RepeatNegative) {
  ExpectImportError(Replace(kCharacterAiYaml, "      - repeat: 2", "      - repeat: -2"),
                    {"model.block_overrides.order[1].repeat", "positive", "got -2"});
}

TEST(FoundryImportError, RepeatNotAnInteger) {
  ExpectImportError(Replace(kCharacterAiYaml, "            repeat: 2", "            repeat: two"),
                    {"model.block_overrides.order[1].order[3].repeat", "integer", "'two'"});
  ExpectImportError(Replace(kCharacterAiYaml, "            repeat: 2", "            repeat: 1.5"),
                    {"order[1].order[3].repeat", "integer", "'1.5'"});
  ExpectImportError("n_layers: 1\nblock_overrides: {order: [{name: default}], repeat: [1]}",
                    {"block_overrides.repeat", "integer", "a list"});
}

TEST(FoundryImportError, UnknownOverrideName) {
  ExpectImportError(
      Replace(kCharacterAiYaml, "          - name: reuse_kv_layer", "          - name: reuse_kv"),
      {"model.block_overrides.order[1].order[4].name", "unknown override 'reuse_kv'",
       "reuse_kv_layer, sliding_window_layer, sliding_window_layer_reuse"});
}

TEST(FoundryImportError, OverrideNamedDefault) {
  ExpectImportError(Replace(kCharacterAiYaml, "      reuse_kv_layer:\n",
                            "      default: {}\n      reuse_kv_layer:\n"),
                    {"model.block_overrides.overrides.default", "may not be named 'default'"});
}

TEST(FoundryImportError, DisallowedKeyUnderAttnConfig) {
  ExpectImportError(Replace(kCharacterAiYaml, "          reuse_kv_layer_idx: -6",
                            "          reuse_kv_layer_idx: -6\n          rope_theta: 500000"),
                    {"model.block_overrides.overrides.reuse_kv_layer.attn_config.rope_theta",
                     "sliding_window_size, reuse_kv_layer_idx"});
}

TEST(FoundryImportError, DisallowedKeyUnderOverride) {
  ExpectImportError(Replace(kCharacterAiYaml, "      reuse_kv_layer:\n",
                            "      reuse_kv_layer:\n        ffn_config: {ffn_hidden_size: 64}\n"),
                    {"model.block_overrides.overrides.reuse_kv_layer.ffn_config", "attn_config"});
}

TEST(FoundryImportError, DisallowedKeyInBlockOverridesAndOrderItems) {
  ExpectImportError(
      Replace(kCharacterAiYaml, "    overrides:\n", "    repaet: 2\n    overrides:\n"),
      {"model.block_overrides.repaet", "order, overrides, repeat"});
  ExpectImportError(Replace(kCharacterAiYaml, "      - name: default\n",
                            "      - name: default\n        times: 2\n"),
                    {"model.block_overrides.order[0].times", "name, order, repeat"});
}

TEST(FoundryImportError, PositiveReuseIndex) {
  ExpectImportError(
      Replace(kCharacterAiYaml, "reuse_kv_layer_idx: -6", "reuse_kv_layer_idx: 6"),
      {"model.block_overrides.overrides.reuse_kv_layer.attn_config.reuse_kv_layer_idx", "negative",
       "got 6"});
}

TEST(FoundryImportError, ZeroReuseIndex) {
  ExpectImportError(
      Replace(kCharacterAiYaml, "reuse_kv_layer_idx: -1", "reuse_kv_layer_idx: 0"),
      {"overrides.sliding_window_layer_reuse.attn_config.reuse_kv_layer_idx", "negative", "got 0"});
}

TEST(FoundryImportError, ReuseReachingBeforeLayerZero) {
  // Layer 1 is now a reuse_kv_layer: -6 from layer 1 is layer -5.
  const std::string yaml =
      Replace(Replace(kCharacterAiYaml, "n_layers: 13", "n_layers: 14"), "      - name: default\n",
              "      - name: default\n      - name: reuse_kv_layer\n");
  ExpectImportError(yaml, {"layer 1 ", "model.block_overrides.order[1]", "'reuse_kv_layer'",
                           "reuse_kv_layer_idx = -6", "layer -5", "before layer 0"});
}

TEST(FoundryImportError, ExpandedLengthDiffersFromNLayers) {
  ExpectImportError(Replace(kCharacterAiYaml, "n_layers: 13", "n_layers: 14"),
                    {"model.block_overrides.order", "expands to 13 layers", "n_layers is 14"});
  ExpectImportError(kCharacterAiYaml, {"expands to 13 layers", "n_layers is 12"}, 12);
  // A repeat that would expand past any real model is caught before anything is allocated.
  ExpectImportError(Replace(kCharacterAiYaml, "      - repeat: 2", "      - repeat: 2000000000"),
                    {"expands to more than", "n_layers is 13"});
}

TEST(FoundryImportError, YamlSyntaxError) {
  ExpectImportError("model:\n  n_layers: 3\n  block_overrides: {order: [{name: default}\n",
                    {"YAML syntax error", "line "});
  ExpectImportError("model:\n  n_layers: [3\n  d_model: 2\n", {"YAML syntax error", "line 3"});
}

TEST(FoundryImportError, MissingBlockOverrides) {
  ExpectImportError("model:\n  d_model: 64\n  n_layers: 2\n", {"no block_overrides"});
  ExpectImportError("model: {block_overrides: null}", {"no block_overrides"});
  ExpectImportError("", {"expected a map"});
  ExpectImportError("[1, 2]", {"expected a map", "a list"});
}

TEST(FoundryImportError, MissingOrEmptyOrder) {
  ExpectImportError("n_layers: 1\nblock_overrides: {overrides: {}}",
                    {"block_overrides", "missing 'order'"});
  ExpectImportError("n_layers: 1\nblock_overrides: {order: []}",
                    {"block_overrides.order", "empty list"});
}

TEST(FoundryImportError, BadWindowSize) {
  ExpectImportError(Replace(kCharacterAiYaml, "sliding_window_size: -1", "sliding_window_size: -2"),
                    {"model.attn_config.sliding_window_size", "got -2"});
  ExpectImportError(
      Replace(kCharacterAiYaml, "        attn_config:\n          sliding_window_size: 1024\n",
              "        attn_config:\n          sliding_window_size: wide\n"),
      {"overrides.sliding_window_layer.attn_config.sliding_window_size", "'wide'"});
}

TEST(FoundryImportError, DuplicateOverride) {
  ExpectImportError(Replace(kCharacterAiYaml, "      reuse_kv_layer:\n",
                            "      sliding_window_layer: {}\n      reuse_kv_layer:\n"),
                    {"model.block_overrides.overrides.sliding_window_layer", "twice"});
}

TEST(FoundryImportError, UnresolvableInterpolation) {
  ExpectImportError(Replace(kCharacterAiYaml, "${variables.max_seq_len}", "${variables.seq_len}"),
                    {"model.max_seq_len", "variables.seq_len", "not in this file"});
  ExpectImportError(Replace(kCharacterAiYaml, "${variables.max_seq_len}", "${oc.env:SEQ}"),
                    {"model.max_seq_len", "cannot resolve"});
  ExpectImportError(
      Replace(kCharacterAiYaml, "  max_seq_len: 4096", "  max_seq_len: ${model.max_seq_len}"),
      {"model.max_seq_len", "cycle"});
}

TEST(FoundryImportError, ReuseInBaseAttnConfig) {
  ExpectImportError(Replace(kCharacterAiYaml, "    attn_impl: flash", "    reuse_kv_layer_idx: -1"),
                    {"model.attn_config.reuse_kv_layer_idx", "every layer"});
}

TEST(FoundryImportError, BadShapeFields) {
  ExpectImportError(Replace(kCharacterAiYaml, "d_model: 256", "d_model: 0"),
                    {"model.d_model", "positive", "got 0"});
  ExpectImportError(Replace(kCharacterAiYaml, "    attn_impl: flash", "    attn_type: multi_head"),
                    {"model.attn_config.attn_type", "'multi_head'"});
  ExpectImportError(Replace(kCharacterAiYaml, "expansion_ratio: 4", "expansion_ratio: 1.001"),
                    {"model.expansion_ratio", "whole number"});
}

}  // namespace
}  // namespace mixattn
