#include "train/checkpoint.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

#include "core/error.h"
#include "model/kv_plan.h"
#include "model/safetensors.h"

namespace mixattn {
namespace {

namespace fs = std::filesystem;

// The three copies of the model's tensors, with the name prefix each has in the file.
constexpr std::string_view kParamPrefix = "param/";
constexpr std::string_view kFirstMomentPrefix = "adam_m/";
constexpr std::string_view kSecondMomentPrefix = "adam_v/";

constexpr std::string_view kFileNamePrefix = "checkpoint-";
constexpr std::string_view kFileNameSuffix = ".safetensors";
// What WriteSafetensors appends to the final name for its temporary file, before the pid.
constexpr std::string_view kTempInfix = ".tmp.";

std::string CheckpointFileName(int64_t step) {
  char digits[24];
  std::snprintf(digits, sizeof(digits), "%08lld", static_cast<long long>(step));
  return std::string(kFileNamePrefix) + digits + std::string(kFileNameSuffix);
}

// The step of a file named exactly as CheckpointFileName names it, else nullopt.
std::optional<int64_t> StepOfFileName(std::string_view name) {
  if (!name.starts_with(kFileNamePrefix) || !name.ends_with(kFileNameSuffix)) return std::nullopt;
  const std::string_view digits = name.substr(
      kFileNamePrefix.size(), name.size() - kFileNamePrefix.size() - kFileNameSuffix.size());
  int64_t step = 0;
  const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
  if (error != std::errc() || end != digits.data() + digits.size() || step < 0) return std::nullopt;
  if (CheckpointFileName(step) != name) return std::nullopt;  // "+5", "0100", ...
  return step;
}

// The pid of a checkpoint writer's temporary file "<checkpoint name>.tmp.<pid>", else nullopt.
std::optional<pid_t> PidOfTempFileName(std::string_view name) {
  const size_t infix = name.rfind(kTempInfix);
  if (infix == std::string_view::npos || !StepOfFileName(name.substr(0, infix))) {
    return std::nullopt;
  }
  const std::string_view digits = name.substr(infix + kTempInfix.size());
  pid_t pid = 0;
  const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), pid);
  if (error != std::errc() || end != digits.data() + digits.size() || pid <= 0) return std::nullopt;
  return pid;
}

struct CheckpointFiles {
  std::vector<std::pair<int64_t, fs::path>> checkpoints;  // (step, path), lowest step first
  std::vector<std::pair<pid_t, fs::path>> temp_files;     // (writer's pid, path)
};

// The checkpoint files of `dir`; none if `dir` does not exist.
CheckpointFiles ListCheckpointFiles(const std::string& dir) {
  CheckpointFiles files;
  std::error_code error;
  fs::directory_iterator entry(dir, error);
  if (error == std::errc::no_such_file_or_directory) return files;
  for (; !error && entry != fs::directory_iterator(); entry.increment(error)) {
    const std::string name = entry->path().filename().string();
    if (const std::optional<int64_t> step = StepOfFileName(name)) {
      files.checkpoints.emplace_back(*step, entry->path());
    } else if (const std::optional<pid_t> pid = PidOfTempFileName(name)) {
      files.temp_files.emplace_back(*pid, entry->path());
    }
  }
  if (error) Fail(dir, ": cannot list the directory: ", error.message());
  std::sort(files.checkpoints.begin(), files.checkpoints.end());
  return files;
}

void RemoveFile(const fs::path& path) {
  std::error_code error;
  if (!fs::remove(path, error) && error) Fail(path.string(), ": cannot delete: ", error.message());
}

}  // namespace

void SaveCheckpoint(const std::string& path, const ModelConfig& config, const ModelWeights& params,
                    const AdamW& optimizer, const std::string& trainer_state_json) {
  if (!nlohmann::json::accept(trainer_state_json)) {
    Fail(path, ": cannot save a checkpoint: the trainer state is not valid JSON");
  }
  const std::vector<TensorSpec> specs = ExpectedTensors(config);
  std::vector<SafetensorsWriteItem> items;
  items.reserve(3 * specs.size());
  const auto add_all = [&](std::string_view prefix, const ModelWeights& weights, const char* what) {
    size_t next = 0;
    ForEachTensor(weights, [&](const std::string& name, const Tensor& tensor) {
      if (next >= specs.size() || specs[next].name != name) {
        Fail(path, ": cannot save a checkpoint: the ", what, " have tensor '", name, "', ",
             next < specs.size() ? "where the config has '" + specs[next].name + "'"
                                 : std::string("which the config does not"));
      }
      if (specs[next].shape != tensor.shape) {
        Fail(path, ": cannot save a checkpoint: the ", what, "' tensor '", name, "' has shape ",
             ShapeString(tensor.shape), "; the config requires ", ShapeString(specs[next].shape));
      }
      ++next;
      items.push_back({std::string(prefix) + name, DType::kF32, tensor.shape, tensor.data.data()});
    });
    if (next != specs.size()) {
      Fail(path, ": cannot save a checkpoint: the ", what, " lack the config's tensor '",
           specs[next].name, "'");
    }
  };
  add_all(kParamPrefix, params, "parameters");
  add_all(kFirstMomentPrefix, optimizer.first_moment(), "first moments");
  add_all(kSecondMomentPrefix, optimizer.second_moment(), "second moments");
  WriteSafetensors(path, items,
                   {{"format", kCheckpointFormat},
                    {"version", kCheckpointVersion},
                    {"config", ConfigToJson(config)},
                    {"optimizer_step", std::to_string(optimizer.step_count())},
                    {"trainer_state", trainer_state_json}});
}

Checkpoint LoadCheckpoint(const std::string& path) {
  const SafetensorsFile file = SafetensorsFile::Open(path);
  const auto metadata = [&](const char* key) -> const std::string& {
    const auto found = file.metadata().find(key);
    if (found == file.metadata().end()) {
      Fail(path, ": metadata has no '", key, "' entry (not a mixattn training checkpoint?)");
    }
    return found->second;
  };
  if (metadata("format") != kCheckpointFormat) {
    Fail(path, ": metadata 'format' is '", metadata("format"), "', not '", kCheckpointFormat,
         "': not a mixattn training checkpoint");
  }
  if (metadata("version") != kCheckpointVersion) {
    Fail(path, ": checkpoint version '", metadata("version"),
         "' is not supported (this build reads ", "version ", kCheckpointVersion, ")");
  }
  Checkpoint checkpoint;
  checkpoint.config = ParseConfigJson(metadata("config"), path + " (metadata 'config')");
  const std::string& step_text = metadata("optimizer_step");
  const char* step_end = step_text.data() + step_text.size();
  const auto [end, error] = std::from_chars(step_text.data(), step_end, checkpoint.optimizer_step);
  if (error != std::errc() || end != step_end || checkpoint.optimizer_step < 0) {
    Fail(path, ": metadata 'optimizer_step' is '", step_text, "', not an integer >= 0");
  }
  checkpoint.trainer_state_json = metadata("trainer_state");
  if (!nlohmann::json::accept(checkpoint.trainer_state_json)) {
    Fail(path, ": metadata 'trainer_state' is not valid JSON");
  }

  const std::vector<TensorSpec> specs = ExpectedTensors(checkpoint.config);
  struct Copy {
    std::string_view prefix;
    ModelWeights* weights;
  };
  const Copy copies[] = {{kParamPrefix, &checkpoint.params},
                         {kFirstMomentPrefix, &checkpoint.adam_m},
                         {kSecondMomentPrefix, &checkpoint.adam_v}};
  std::set<std::string, std::less<>> expected_names;
  for (const Copy& copy : copies) {
    for (const TensorSpec& spec : specs)
      expected_names.insert(std::string(copy.prefix) + spec.name);
  }
  for (const SafetensorsTensor& tensor : file.tensors()) {
    if (!expected_names.contains(tensor.name)) {
      Fail(path, ": unexpected tensor '", tensor.name,
           "' (the checkpoint's config has no such tensor)");
    }
  }
  for (const Copy& copy : copies) {
    *copy.weights = ZeroWeights(checkpoint.config);
    ForEachTensor(*copy.weights, [&](const std::string& name, Tensor& tensor) {
      const std::string file_name = std::string(copy.prefix) + name;
      const SafetensorsTensor* found = file.Find(file_name);
      if (!found) {
        Fail(path, ": tensor '", file_name, "' is missing; the config requires it with shape ",
             ShapeString(tensor.shape));
      }
      if (found->dtype != DType::kF32) {
        Fail(path, ": tensor '", file_name, "' is ", DTypeName(found->dtype),
             "; a checkpoint holds F32");
      }
      if (found->shape != tensor.shape) {
        Fail(path, ": tensor '", file_name, "' has shape ", ShapeString(found->shape),
             "; the config requires ", ShapeString(tensor.shape));
      }
      std::memcpy(tensor.data.data(), found->data, tensor.data.size() * sizeof(float));
    });
  }
  return checkpoint;
}

std::string CheckpointPath(const std::string& dir, int64_t step) {
  MIXATTN_CHECK(step >= 0);
  return (fs::path(dir) / CheckpointFileName(step)).string();
}

std::optional<std::string> LatestCheckpoint(const std::string& dir) {
  const CheckpointFiles files = ListCheckpointFiles(dir);
  if (files.checkpoints.empty()) return std::nullopt;
  return files.checkpoints.back().second.string();
}

void PruneCheckpoints(const std::string& dir, int keep) {
  if (keep < 1) Fail(dir, ": cannot keep ", keep, " checkpoints; keep at least 1");
  const CheckpointFiles files = ListCheckpointFiles(dir);
  for (size_t i = 0; i + static_cast<size_t>(keep) < files.checkpoints.size(); ++i) {
    RemoveFile(files.checkpoints[i].second);
  }
  for (const auto& [pid, path] : files.temp_files) {
    // kill(pid, 0) probes without signalling; ESRCH: no such process (EPERM: alive, not ours).
    if (pid != ::getpid() && ::kill(pid, 0) != 0 && errno == ESRCH) RemoveFile(path);
  }
}

}  // namespace mixattn
