// dump_logits MODEL_DIR TOKENS_FILE OUT_FILE
// Runs the C++ reference forward and writes its logits for the PyTorch parity test.
//   TOKENS_FILE: int32 little-endian token ids [T]
//   OUT_FILE:    f32 little-endian logits [T, V], row-major
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <vector>

#include "core/error.h"
#include "model/model_dir.h"
#include "model/reference_forward.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: dump_logits MODEL_DIR TOKENS_FILE OUT_FILE\n");
    return 2;
  }
  try {
    const mixattn::LoadedModel model = mixattn::LoadModelDir(argv[1]);
    std::ifstream in(argv[2], std::ios::binary);
    if (!in) mixattn::Fail(argv[2], ": cannot open");
    std::vector<int32_t> tokens;
    int32_t token;
    while (in.read(reinterpret_cast<char*>(&token), sizeof token)) tokens.push_back(token);
    std::vector<int> ids(tokens.begin(), tokens.end());
    const mixattn::Tensor logits = mixattn::ReferenceForward(model.config, model.weights, ids);
    std::ofstream out(argv[3], std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(logits.data.data()),
              static_cast<std::streamsize>(logits.data.size() * sizeof(float)));
    if (!out) mixattn::Fail(argv[3], ": cannot write");
  } catch (const mixattn::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
