// Writes small valid safetensors files into a directory, as seeds for fuzz_safetensors.
// Usage: make_fuzz_seeds <dir>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "model/safetensors.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <output-dir>\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  using mixattn::DType;
  const std::vector<float> weight = {1.0f, -2.0f, 0.5f, 3.0f, 0.0f, -1.5f};  // [2, 3]
  const std::vector<uint16_t> bias = {mixattn::F32ToBf16(1.0f), mixattn::F32ToBf16(-1.0f)};  // [2]
  const float scalar = 7.0f;                                                                 // []
  try {
    mixattn::WriteSafetensors(dir + "/mixed.safetensors",
                              {{"layers.0.weight", DType::kF32, {2, 3}, weight.data()},
                               {"layers.0.bias", DType::kBF16, {2}, bias.data()},
                               {"scale", DType::kF32, {}, &scalar}},
                              {{"format", "pt"}, {"producer", "mixattn"}});
    mixattn::WriteSafetensors(
        dir + "/empty_tensor.safetensors",
        {{"empty", DType::kBF16, {0, 4}, nullptr}, {"one", DType::kF32, {1}, &scalar}});
    mixattn::WriteSafetensors(dir + "/no_tensors.safetensors", {}, {{"k", "v"}});
  } catch (const mixattn::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
