// Element types of tensors in files and caches, and bf16 <-> f32 conversion.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace mixattn {

enum class DType { kF32, kBF16 };

inline int64_t DTypeSize(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

// Names as safetensors spells them ("F32", "BF16").
inline std::string_view DTypeName(DType dtype) { return dtype == DType::kF32 ? "F32" : "BF16"; }

// bf16 is the top half of an IEEE f32. Round to nearest even; NaN stays NaN.
inline uint16_t F32ToBf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

inline float Bf16ToF32(uint16_t value) {
  const uint32_t bits = static_cast<uint32_t>(value) << 16;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

}  // namespace mixattn
