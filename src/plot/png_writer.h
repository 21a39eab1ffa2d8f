// PNG encoding (8-bit RGB, no interlace) and atomic file writes.
//
// A PNG file (ISO/IEC 15948, https://www.w3.org/TR/png/) is an 8-byte signature followed by
// chunks, each `length (4 bytes, big-endian) | type (4 ASCII) | data | CRC-32 of type + data`.
// We write IHDR, then the image as one zlib stream split over IDAT chunks, then IEND. Every
// scanline is stored with filter type 0 (None): chart images are mostly flat colour, which
// deflate compresses well without prediction.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "plot/canvas.h"

namespace mixattn::plot {

// The whole PNG file for `image`.
std::vector<uint8_t> EncodePng(const Image& image);

// Writes `bytes` to `path` so that `path` either keeps its old contents or holds all of the
// new ones: the bytes go to a temporary file beside it, which is flushed and renamed over
// `path`. On failure the temporary file is removed and a mixattn::Error names `path`.
void WriteFileAtomically(const std::string& path, std::span<const uint8_t> bytes);

}  // namespace mixattn::plot
