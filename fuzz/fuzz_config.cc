// Fuzzes config.json parsing and validation: any text must parse or raise mixattn::Error.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    mixattn::ParseConfigJson(text, "fuzz/config.json");
  } catch (const mixattn::Error&) {
  }
  return 0;
}
