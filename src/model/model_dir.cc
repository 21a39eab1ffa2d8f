#include "model/model_dir.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "model/safetensors.h"

namespace mixattn {

LoadedModel LoadModelDir(const std::string& dir) {
  const std::filesystem::path root(dir);
  if (!std::filesystem::is_directory(root))
    Fail(dir, ": not a model directory (expected config.json and model.safetensors in it)");
  LoadedModel model;
  model.config = LoadConfigFile((root / "config.json").string());
  const SafetensorsFile file = SafetensorsFile::Open((root / "model.safetensors").string());
  model.weights = LoadWeights(file, model.config);
  return model;
}

void SaveModelDir(const std::string& dir, const ModelConfig& config, const ModelWeights& weights,
                  DType weights_dtype) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) Fail(dir, ": cannot create the model directory: ", error.message());
  const std::filesystem::path root(dir);
  // config.json: write to a temporary name, then rename, so a reader never sees half a file.
  const std::string config_path = (root / "config.json").string();
  const std::string temp_path = config_path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(temp_path, std::ios::binary | std::ios::trunc);
    out << ConfigToJson(config);
    out.flush();
    if (!out) Fail(temp_path, ": cannot write: ", std::strerror(errno));
  }
  if (std::rename(temp_path.c_str(), config_path.c_str()) != 0) {
    Fail(config_path, ": cannot replace: ", std::strerror(errno));
  }
  SaveWeights((root / "model.safetensors").string(), weights, weights_dtype);
}

}  // namespace mixattn
