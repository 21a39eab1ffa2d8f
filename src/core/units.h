// Human-readable byte sizes: "8GiB", "512MiB", "1.5GB", "4096" <-> int64 bytes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace mixattn {

// Accepts an optional decimal number followed by B, KB, MB, GB, TB (powers of 1000) or
// KiB, MiB, GiB, TiB (powers of 1024); case-insensitive; no suffix means bytes.
// Throws mixattn::Error naming `what` (e.g. "--budget") on anything else.
int64_t ParseByteSize(std::string_view text, std::string_view what);

// "1.50 GiB", "768.0 KiB", "512 B": binary units, 3 significant digits.
std::string FormatBytes(int64_t bytes);

}  // namespace mixattn
