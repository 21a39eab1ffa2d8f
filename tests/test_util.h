// Helpers shared by the C++ tests.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/random.h"
#include "model/presets.h"

namespace mixattn::testing {

// Runs `body`, expects a mixattn::Error, and returns its message ("" and a test failure if none).
template <typename Body>
std::string ErrorMessage(Body&& body) {
  try {
    body();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a mixattn::Error";
  return "";
}

// A fresh directory under the system temp dir, removed when the object goes away.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "mixattn-test-XXXXXX").string();
    path_ = mkdtemp(pattern.data()) ? pattern : "";
    if (path_.empty()) ADD_FAILURE() << "mkdtemp failed";
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A small model shape for tests: hidden 32, 4 query heads, 2 KV heads of dim 8, SwiGLU 48.
inline ModelShape TinyShape(int layers, int window, int vocab = 41, int max_position = 256) {
  ModelShape shape;
  shape.layers = layers;
  shape.hidden = 32;
  shape.heads = 4;
  shape.kv_heads = 2;
  shape.head_dim = 8;
  shape.ffn = 48;
  shape.vocab = vocab;
  shape.window = window;
  shape.max_position = max_position;
  return shape;
}

// `count` token ids uniform in [0, vocab), deterministic in `seed`.
inline std::vector<int> RandomTokens(int64_t count, int vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int> tokens(static_cast<size_t>(count));
  for (int& t : tokens) t = static_cast<int>(rng.Below(static_cast<uint64_t>(vocab)));
  return tokens;
}

}  // namespace mixattn::testing
