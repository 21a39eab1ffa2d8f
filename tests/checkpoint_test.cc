#include "train/checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <thread>

#include "core/random.h"
#include "model/presets.h"
#include "model/safetensors.h"
#include "test_util.h"

namespace mixattn {
namespace {

using testing::ErrorMessage;
using ::testing::HasSubstr;
using testing::TempDir;
namespace fs = std::filesystem;

// ma-pairs (F S F>0 S S>3 F S F>5): layers with and without K/V projections.
ModelConfig SmallConfig(bool tied = false, int hidden = 16, int vocab = 30) {
  ModelShape shape;
  shape.layers = 8;
  shape.hidden = hidden;
  shape.heads = 2;
  shape.kv_heads = 1;
  shape.head_dim = hidden / 2;
  shape.ffn = 2 * hidden;
  shape.vocab = vocab;
  shape.window = 4;
  shape.max_position = 64;
  shape.tied = tied;
  return MakePresetConfig("ma-pairs", shape);
}

std::vector<float> Flatten(const ModelWeights& weights) {
  std::vector<float> all;
  ForEachTensor(weights, [&](const std::string&, const Tensor& tensor) {
    all.insert(all.end(), tensor.data.begin(), tensor.data.end());
  });
  return all;
}

// Parameters and an optimizer two steps in, so m, v and t are all non-trivial.
struct TrainedState {
  ModelConfig config;
  ModelWeights params;
  AdamW optimizer;

  explicit TrainedState(const ModelConfig& model_config)
      : config(model_config), params(RandomWeights(model_config, 1, 0.1)), optimizer(params) {
    for (int step = 0; step < 2; ++step) {
      ModelWeights grads = RandomWeights(config, 100 + step);
      optimizer.Step(params, grads, 1e-2);
    }
  }
};

constexpr char kTrainerState[] = R"({"step": 2, "data_position": 12345, "rng": [1, 2]})";

// Copies a valid checkpoint to `out`, letting `edit` change its tensor list and metadata first.
void RewriteCheckpoint(const std::string& in, const std::string& out,
                       const std::function<void(std::vector<SafetensorsWriteItem>&,
                                                std::map<std::string, std::string>&)>& edit) {
  const SafetensorsFile file = SafetensorsFile::Open(in);
  std::vector<SafetensorsWriteItem> items;
  for (const SafetensorsTensor& tensor : file.tensors()) {
    items.push_back({tensor.name, tensor.dtype, tensor.shape, tensor.data});
  }
  std::map<std::string, std::string> metadata = file.metadata();
  edit(items, metadata);
  WriteSafetensors(out, items, metadata);
}

SafetensorsWriteItem& FindItem(std::vector<SafetensorsWriteItem>& items, const std::string& name) {
  for (SafetensorsWriteItem& item : items) {
    if (item.name == name) return item;
  }
  ADD_FAILURE() << "no tensor " << name;
  return items.front();
}

TEST(CheckpointTest, RoundTripIsBitExact) {
  const TempDir dir;
  for (const bool tied : {false, true}) {
    const TrainedState state(SmallConfig(tied));
    const std::string path = dir.file(tied ? "tied.safetensors" : "untied.safetensors");
    SaveCheckpoint(path, state.config, state.params, state.optimizer, kTrainerState);

    const Checkpoint loaded = LoadCheckpoint(path);
    EXPECT_EQ(ConfigToJson(loaded.config), ConfigToJson(state.config));
    EXPECT_EQ(Flatten(loaded.params), Flatten(state.params));
    EXPECT_EQ(Flatten(loaded.adam_m), Flatten(state.optimizer.first_moment()));
    EXPECT_EQ(Flatten(loaded.adam_v), Flatten(state.optimizer.second_moment()));
    EXPECT_EQ(loaded.optimizer_step, 2);
    EXPECT_EQ(loaded.trainer_state_json, kTrainerState);
    EXPECT_EQ(loaded.params.lm_head.has_value(), !tied);

    // The loaded state restores into an optimizer (same tensors, same shapes).
    AdamW resumed(loaded.params);
    resumed.Restore(loaded.adam_m, loaded.adam_v, loaded.optimizer_step);
    EXPECT_EQ(resumed.step_count(), 2);

    // The file is a plain safetensors file with the documented names and metadata.
    const SafetensorsFile file = SafetensorsFile::Open(path);
    EXPECT_EQ(file.tensors().size(), 3 * ExpectedTensors(state.config).size());
    EXPECT_NE(file.Find("param/model.layers.0.self_attn.k_proj.weight"), nullptr);
    EXPECT_NE(file.Find("adam_m/model.norm.weight"), nullptr);
    EXPECT_NE(file.Find("adam_v/model.embed_tokens.weight"), nullptr);
    EXPECT_EQ(file.metadata().at("format"), "mixattn-checkpoint");
    EXPECT_EQ(file.metadata().at("version"), "1");
    EXPECT_EQ(file.metadata().at("optimizer_step"), "2");
  }
}

TEST(CheckpointTest, SaveRejectsInconsistentInputs) {
  const TempDir dir;
  const TrainedState state(SmallConfig());
  const std::string path = dir.file("c.safetensors");
  EXPECT_THAT(ErrorMessage([&] {
                SaveCheckpoint(path, state.config, state.params, state.optimizer, "{step: 1}");
              }),
              HasSubstr("the trainer state is not valid JSON"));
  EXPECT_THAT(ErrorMessage([&] {
                SaveCheckpoint(path, SmallConfig(/*tied=*/true), state.params, state.optimizer,
                               "{}");
              }),
              HasSubstr("the parameters have tensor 'lm_head.weight', which the config does "
                        "not"));
  EXPECT_FALSE(fs::exists(path));
}

TEST(CheckpointTest, RejectsATruncatedFile) {
  const TempDir dir;
  const TrainedState state(SmallConfig());
  const std::string path = dir.file("c.safetensors");
  SaveCheckpoint(path, state.config, state.params, state.optimizer, kTrainerState);
  fs::resize_file(path, fs::file_size(path) / 2);
  EXPECT_THAT(ErrorMessage([&] { LoadCheckpoint(path); }), HasSubstr(path));
  fs::resize_file(path, 5);
  EXPECT_THAT(ErrorMessage([&] { LoadCheckpoint(path); }), HasSubstr(path));
  EXPECT_THAT(ErrorMessage([&] { LoadCheckpoint(dir.file("absent.safetensors")); }),
              HasSubstr("absent.safetensors"));
}

TEST(CheckpointTest, RejectsMissingWrongAndExtraTensors) {
  const TempDir dir;
  const TrainedState state(SmallConfig());
  const std::string good = dir.file("good.safetensors"), bad = dir.file("bad.safetensors");
  SaveCheckpoint(good, state.config, state.params, state.optimizer, kTrainerState);
  const auto load_error = [&](const auto& edit) {
    RewriteCheckpoint(good, bad, edit);
    return ErrorMessage([&] { LoadCheckpoint(bad); });
  };
  using Items = std::vector<SafetensorsWriteItem>;
  using Metadata = std::map<std::string, std::string>;

  EXPECT_THAT(load_error([](Items& items, Metadata&) {
                std::erase_if(items, [](const SafetensorsWriteItem& item) {
                  return item.name == "adam_v/model.layers.5.mlp.up_proj.weight";
                });
              }),
              HasSubstr(bad + ": tensor 'adam_v/model.layers.5.mlp.up_proj.weight' is missing; "
                              "the config requires it with shape [32, 16]"));
  EXPECT_THAT(load_error([](Items& items, Metadata&) {
                FindItem(items, "adam_m/model.layers.2.self_attn.q_proj.weight").shape = {8, 32};
              }),
              HasSubstr(bad + ": tensor 'adam_m/model.layers.2.self_attn.q_proj.weight' has "
                              "shape [8, 32]; the config requires [16, 16]"));
  EXPECT_THAT(load_error([](Items& items, Metadata&) {
                FindItem(items, "param/model.norm.weight").dtype = DType::kBF16;
              }),
              HasSubstr(bad + ": tensor 'param/model.norm.weight' is BF16; a checkpoint holds "
                              "F32"));
  // Layer 2 reads layer 0's KV (ma-pairs), so it has no K projection.
  EXPECT_THAT(
      load_error([](Items& items, Metadata&) {
        SafetensorsWriteItem extra =
            FindItem(items, "param/model.layers.0.self_attn.k_proj.weight");
        extra.name = "param/model.layers.2.self_attn.k_proj.weight";
        items.push_back(extra);
      }),
      HasSubstr(bad + ": unexpected tensor 'param/model.layers.2.self_attn.k_proj.weight'"));
  // A config that does not match the tensors: tied embeddings, but the file has an lm_head.
  EXPECT_THAT(load_error([](Items&, Metadata& metadata) {
                metadata["config"] = ConfigToJson(SmallConfig(/*tied=*/true));
              }),
              HasSubstr(bad + ": unexpected tensor 'param/lm_head.weight'"));
}

TEST(CheckpointTest, RejectsBadMetadata) {
  const TempDir dir;
  const TrainedState state(SmallConfig());
  const std::string good = dir.file("good.safetensors"), bad = dir.file("bad.safetensors");
  SaveCheckpoint(good, state.config, state.params, state.optimizer, kTrainerState);
  const auto load_error = [&](const std::string& key, const std::optional<std::string>& value) {
    RewriteCheckpoint(good, bad, [&](auto&, std::map<std::string, std::string>& metadata) {
      if (value) {
        metadata[key] = *value;
      } else {
        metadata.erase(key);
      }
    });
    return ErrorMessage([&] { LoadCheckpoint(bad); });
  };
  EXPECT_THAT(load_error("format", "pt"),
              HasSubstr(bad + ": metadata 'format' is 'pt', not 'mixattn-checkpoint'"));
  EXPECT_THAT(load_error("format", std::nullopt), HasSubstr(bad + ": metadata has no 'format'"));
  EXPECT_THAT(load_error("version", "2"), HasSubstr(bad + ": checkpoint version '2' is not "
                                                          "supported"));
  EXPECT_THAT(load_error("config", "{\"hidden_size\": 16}"),
              HasSubstr(bad + " (metadata 'config')"));
  EXPECT_THAT(load_error("optimizer_step", "-1"),
              HasSubstr(bad + ": metadata 'optimizer_step' is '-1', not an integer >= 0"));
  EXPECT_THAT(load_error("optimizer_step", "2x"), HasSubstr("'optimizer_step' is '2x'"));
  EXPECT_THAT(load_error("trainer_state", "{"),
              HasSubstr(bad + ": metadata 'trainer_state' is not valid JSON"));
  EXPECT_THAT(load_error("trainer_state", std::nullopt),
              HasSubstr(bad + ": metadata has no 'trainer_state'"));
}

// ---- The checkpoint directory ----

void Touch(const std::string& path) { std::ofstream(path) << "x"; }

TEST(CheckpointDirTest, LatestIgnoresTemporaryAndForeignFiles) {
  const TempDir dir;
  EXPECT_EQ(CheckpointPath(dir.path(), 100), dir.path() + "/checkpoint-00000100.safetensors");
  EXPECT_EQ(CheckpointPath(dir.path() + "/", 123456789),
            dir.path() + "/checkpoint-123456789.safetensors");
  EXPECT_EQ(LatestCheckpoint(dir.file("absent")), std::nullopt);
  EXPECT_EQ(LatestCheckpoint(dir.path()), std::nullopt);

  for (int64_t step : {100, 20, 99999999, 300}) Touch(CheckpointPath(dir.path(), step));
  EXPECT_EQ(LatestCheckpoint(dir.path()), CheckpointPath(dir.path(), 99999999));
  // Higher steps, but not complete checkpoints or not named as CheckpointPath names them.
  Touch(CheckpointPath(dir.path(), 100000000) + ".tmp.4242");
  Touch(dir.file("checkpoint-200000000.safetensors.tmp"));
  Touch(dir.file("checkpoint-300000000.bin"));
  Touch(dir.file("checkpoint-0400000000.safetensors"));
  Touch(dir.file("checkpoint-+500000000.safetensors"));
  Touch(dir.file("model.safetensors"));
  EXPECT_EQ(LatestCheckpoint(dir.path()), CheckpointPath(dir.path(), 99999999));
  Touch(CheckpointPath(dir.path(), 100000000));  // more digits than the padding: still ordered
  EXPECT_EQ(LatestCheckpoint(dir.path()), CheckpointPath(dir.path(), 100000000));
}

TEST(CheckpointDirTest, PruneKeepsTheNewestAndLiveWritersFiles) {
  const TempDir dir;
  for (int64_t step = 1; step <= 5; ++step) Touch(CheckpointPath(dir.path(), step * 10));
  // A temporary file of a writer that has exited, and one of this (live) process.
  const pid_t dead = fork();
  if (dead == 0) _exit(0);
  ASSERT_GT(dead, 0);
  ASSERT_EQ(waitpid(dead, nullptr, 0), dead);
  const std::string dead_temp = CheckpointPath(dir.path(), 60) + ".tmp." + std::to_string(dead);
  const std::string live_temp = CheckpointPath(dir.path(), 70) + ".tmp." + std::to_string(getpid());
  Touch(dead_temp);
  Touch(live_temp);
  Touch(dir.file("notes.txt"));

  PruneCheckpoints(dir.path(), 2);
  std::vector<std::string> left;
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    left.push_back(entry.path().filename().string());
  }
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"checkpoint-00000040.safetensors",
                                            "checkpoint-00000050.safetensors",
                                            fs::path(live_temp).filename().string(), "notes.txt"}));
  PruneCheckpoints(dir.path(), 5);  // fewer than keep: nothing to do
  EXPECT_TRUE(fs::exists(CheckpointPath(dir.path(), 40)));
  EXPECT_THAT(ErrorMessage([&] { PruneCheckpoints(dir.path(), 0); }), HasSubstr("keep at least 1"));
  PruneCheckpoints(dir.file("absent"), 1);  // no directory: nothing to prune
}

// A writer killed at random moments, as a trainer killed by a user, the OOM killer or a power
// cut (short of the disk cache, which the fsyncs cover): after every kill the latest checkpoint
// loads and holds what its name says.
TEST(CheckpointCrashTest, AKilledWriterNeverLeavesAnUnreadableLatestCheckpoint) {
  const TempDir dir;
  // ~260k parameters: 3 copies make a ~3 MB file, a few milliseconds to write and fsync.
  const ModelConfig config = SmallConfig(/*tied=*/true, /*hidden=*/32, /*vocab=*/6000);
  ModelWeights params = RandomWeights(config, 3);
  const AdamW optimizer(params);
  // Each checkpoint is marked with its step in a parameter and in the trainer state.
  const auto save = [&](int64_t step) {
    params.final_norm.data[0] = static_cast<float>(step);  // exact below 2^24
    SaveCheckpoint(CheckpointPath(dir.path(), step), config, params, optimizer,
                   "{\"step\": " + std::to_string(step) + "}");
  };

  // The run's first checkpoint, written here. How long it takes scales the kill delays, so that
  // kills land before, inside and between writes in a sanitizer build too (several times slower).
  const auto start = std::chrono::steady_clock::now();
  save(0);
  const auto write_time = std::chrono::steady_clock::now() - start;
  const int64_t max_delay_us = std::max<int64_t>(
      30'000, 4 * std::chrono::duration_cast<std::chrono::microseconds>(write_time).count());

  // 20 kills, and more (up to 60) until one has landed inside a write: whether one does depends
  // on timing, and the test proves nothing until it has.
  constexpr int kKills = 20, kMaxKills = 60;
  constexpr int64_t kStepsPerWriter = 100'000;
  Rng rng(2024);
  int killed_mid_write = 0, advanced = 0;
  for (int attempt = 1; attempt <= kMaxKills && (attempt <= kKills || killed_mid_write == 0);
       ++attempt) {
    const int64_t first_step = attempt * kStepsPerWriter;
    const pid_t writer = fork();
    ASSERT_GE(writer, 0);
    if (writer == 0) {
      // The child: checkpoints with increasing steps until killed, pruning as a trainer does. No
      // OpenMP here (the parent's thread pool does not exist in a forked child).
      try {
        for (int64_t step = first_step;; ++step) {
          save(step);
          PruneCheckpoints(dir.path(), 2);
        }
      } catch (...) {
        _exit(1);
      }
    }
    std::this_thread::sleep_for(
        std::chrono::microseconds(rng.Below(static_cast<uint64_t>(max_delay_us))));
    ASSERT_EQ(::kill(writer, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(waitpid(writer, &status, 0), writer);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "the writer stopped on its own (status " << status << ")";

    for (const auto& entry : fs::directory_iterator(dir.path())) {
      killed_mid_write += entry.path().string().ends_with(".tmp." + std::to_string(writer));
    }
    const std::optional<std::string> latest = LatestCheckpoint(dir.path());
    ASSERT_TRUE(latest.has_value()) << "after kill " << attempt;
    Checkpoint checkpoint;
    ASSERT_NO_THROW(checkpoint = LoadCheckpoint(*latest)) << "after kill " << attempt;
    const auto step = static_cast<int64_t>(checkpoint.params.final_norm.data[0]);
    EXPECT_EQ(*latest, CheckpointPath(dir.path(), step));
    EXPECT_EQ(checkpoint.trainer_state_json, "{\"step\": " + std::to_string(step) + "}");
    advanced += step >= first_step;  // this writer completed at least one checkpoint
  }
  // Otherwise the test proved nothing: kills must land inside writes, and after complete ones.
  EXPECT_GT(killed_mid_write, 0);
  EXPECT_GT(advanced, 0);
  RecordProperty("kills_inside_a_write", killed_mid_write);
  RecordProperty("kills_after_a_new_checkpoint", advanced);
}

}  // namespace
}  // namespace mixattn
