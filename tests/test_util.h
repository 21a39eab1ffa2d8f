// Helpers shared by the C++ tests.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "core/error.h"

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

}  // namespace mixattn::testing
