#include "model/presets.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <regex>
#include <set>

#include "model/kv_plan.h"
#include "test_util.h"

namespace mixattn {
namespace {

using testing::ErrorMessage;
using ::testing::HasSubstr;

struct PresetRow {
  std::string name;
  int owners;
  int64_t context;
  int64_t kv_token_layers;
  std::string reduction;  // as printed, e.g. "17.9"
  std::string layout;
};

// Reads the preset tables of ../shared/PRESETS.md: the figures our planner must reproduce.
std::vector<PresetRow> ReadPresetTable(int num_layers) {
  std::ifstream in(std::string(MIXATTN_SHARED_DIR) + "/PRESETS.md");
  EXPECT_TRUE(in.good()) << "cannot read " << MIXATTN_SHARED_DIR << "/PRESETS.md";
  const std::regex row(
      R"(^(\S+)\s+owners=\s*(\d+) kv_token_layers@(\d+)=\s*(\d+) reduction=\s*([\d.]+)x\s+(.*\S)\s*$)");
  std::vector<PresetRow> rows;
  std::string line;
  std::smatch m;
  while (std::getline(in, line)) {
    if (!std::regex_match(line, m, row)) continue;
    PresetRow r{m[1], std::stoi(m[2]), std::stoll(m[3]), std::stoll(m[4]), m[5], m[6]};
    const int layers = static_cast<int>(std::count(r.layout.begin(), r.layout.end(), ' ')) + 1;
    if (layers == num_layers) rows.push_back(r);
  }
  return rows;
}

void ExpectMatchesTable(int num_layers, int window) {
  const std::vector<PresetRow> rows = ReadPresetTable(num_layers);
  ASSERT_EQ(rows.size(), Presets().size())
      << "PRESETS.md should list every preset for L=" << num_layers;
  for (const PresetRow& row : rows) {
    ModelShape shape;
    shape.layers = num_layers;
    shape.window = window;
    const ModelConfig config = MakePresetConfig(row.name, shape);
    const KvPlan plan(config);
    EXPECT_EQ(LayoutString(config.layers), row.layout) << row.name;
    EXPECT_EQ(static_cast<int>(plan.kv_owners().size()), row.owners) << row.name;
    EXPECT_EQ(plan.kv_token_layers(row.context), row.kv_token_layers) << row.name;
    char reduction[32];
    std::snprintf(reduction, sizeof reduction, "%.1f",
                  static_cast<double>(num_layers * row.context) /
                      static_cast<double>(plan.kv_token_layers(row.context)));
    EXPECT_EQ(reduction, row.reduction) << row.name;
  }
}

TEST(PresetsTest, MatchPresetsMd24Layers) { ExpectMatchesTable(24, 1024); }
TEST(PresetsTest, MatchPresetsMd8Layers) { ExpectMatchesTable(8, 256); }

// Every preset at every depth 8..64 is a valid plan with the structure PRESETS.md describes.
TEST(PresetsTest, ValidAtEveryDepth) {
  for (int layers = 8; layers <= 64; ++layers) {
    for (const PresetInfo& preset : Presets()) {
      ModelShape shape;
      shape.layers = layers;
      shape.window = 64;
      const ModelConfig config = MakePresetConfig(preset.name, shape);  // validates
      ASSERT_EQ(config.num_layers(), layers);
      const KvPlan plan(config);
      int full = 0, full_owners = 0;
      for (int i = 0; i < layers; ++i) {
        if (plan.layer(i).kind == AttentionKind::kFull) {
          ++full;
          full_owners += plan.owns_kv(i);
        }
        // No sliding group is larger than 2 except in the slideshare variants and characterai.
        if (preset.name == "ma" || preset.name == "ma-pairs" || preset.name == "ma-offset" ||
            preset.name == "ma-endslide") {
          if (plan.owns_kv(i) && plan.layer(i).kind == AttentionKind::kSliding) {
            EXPECT_LE(plan.kv_readers(i).size(), 2u)
                << preset.name << " L=" << layers << " layer " << i;
          }
        }
      }
      const std::string& name = preset.name;
      if (name == "standard") {
        EXPECT_EQ(full_owners, layers);
      }
      if (name == "all-sliding") {
        EXPECT_EQ(full, 0);
      }
      if (name == "ma" || name.starts_with("ma-offset")) {
        EXPECT_EQ(full, 4) << name;
        EXPECT_EQ(full_owners, 1) << name;
      }
      if (name == "ma-endslide") {
        EXPECT_EQ(full, 3);
        EXPECT_EQ(plan.layer(layers - 1).kind, AttentionKind::kSliding);
      }
      if (name.starts_with("ma-pairs")) {
        EXPECT_EQ(full, 4) << name;
        EXPECT_EQ(full_owners, 2) << name;
      }
      if (name.starts_with("ma-offset")) {
        EXPECT_EQ(plan.layer(0).kind, AttentionKind::kSliding);
        EXPECT_EQ(plan.kv_owners().front(), 0);
      }
      if (name == "characterai") {
        EXPECT_EQ(full, (layers + 5) / 6);
        EXPECT_EQ(full_owners, 1);
      }
    }
  }
}

TEST(PresetsTest, RejectsUnknownNameAndShallowDepth) {
  EXPECT_THAT(
      ErrorMessage([] { PresetLayers("mixattention", 24, 1024); }),
      HasSubstr("unknown preset 'mixattention'; known presets: standard, all-sliding, ma,"));
  EXPECT_THAT(ErrorMessage([] { PresetLayers("ma-pairs", 6, 1024); }),
              HasSubstr("preset 'ma-pairs' needs at least 8 layers (got 6)"));
  EXPECT_EQ(PresetLayers("standard", 2, 16).size(), 2u);
  EXPECT_THAT(ErrorMessage([] { PresetLayers("ma", 24, 0); }),
              HasSubstr("window must be at least 1"));
}

}  // namespace
}  // namespace mixattn
