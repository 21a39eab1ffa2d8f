// Fuzzes the safetensors header and layout validation: any byte string must parse or raise
// mixattn::Error. Anything else (a crash, a sanitizer report, another exception type) is a bug.
#include <cstddef>
#include <cstdint>
#include <span>

#include "core/error.h"
#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    const mixattn::SafetensorsContents contents = mixattn::ParseSafetensors(bytes, "fuzz");
    // Touch every tensor's bytes so ASan checks the claimed ranges really lie in the input.
    volatile uint8_t sink = 0;
    for (const mixattn::SafetensorsTensor& tensor : contents.tensors) {
      for (int64_t i = 0; i < tensor.num_bytes(); ++i) {
        sink = sink ^ static_cast<uint8_t>(tensor.data[i]);
      }
    }
  } catch (const mixattn::Error&) {
  }
  return 0;
}
