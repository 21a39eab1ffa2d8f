#include "plot/png_writer.h"

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/error.h"

namespace mixattn::plot {
namespace {

constexpr uint8_t kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
// IDAT payloads are split at this size, as common encoders do; readers concatenate them.
constexpr size_t kMaxIdatBytes = size_t{1} << 16;

void AppendBigEndian32(std::vector<uint8_t>& out, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(value >> shift));
}

// length | type | data | CRC-32 over type and data.
void AppendChunk(std::vector<uint8_t>& out, const char (&type)[5], const uint8_t* data,
                 size_t size) {
  MIXATTN_CHECK(size <= 0x7FFFFFFF);
  AppendBigEndian32(out, static_cast<uint32_t>(size));
  const size_t type_at = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data, data + size);
  const uLong crc = crc32(0L, out.data() + type_at, static_cast<uInt>(4 + size));
  AppendBigEndian32(out, static_cast<uint32_t>(crc));
}

}  // namespace

std::vector<uint8_t> EncodePng(const Image& image) {
  MIXATTN_CHECK(image.width > 0 && image.height > 0);
  const size_t width = static_cast<size_t>(image.width), height = static_cast<size_t>(image.height);
  MIXATTN_CHECK(image.rgb.size() == width * height * 3);

  // Scanlines as PNG stores them before compression: a filter-type byte, then the pixels.
  const size_t row_bytes = 1 + width * 3;
  std::vector<uint8_t> raw(height * row_bytes);
  for (size_t y = 0; y < height; ++y) {
    raw[y * row_bytes] = 0;  // filter type None
    std::copy_n(image.rgb.data() + y * width * 3, width * 3, raw.data() + y * row_bytes + 1);
  }
  uLongf compressed_size = compressBound(static_cast<uLong>(raw.size()));
  std::vector<uint8_t> compressed(compressed_size);
  // compress2 writes a zlib stream (RFC 1950 header, deflate data, Adler-32): what IDAT holds.
  const int status = compress2(compressed.data(), &compressed_size, raw.data(),
                               static_cast<uLong>(raw.size()), Z_DEFAULT_COMPRESSION);
  if (status != Z_OK) Fail("PNG encoding: zlib compress2 failed with status ", status);
  compressed.resize(compressed_size);

  std::vector<uint8_t> png(std::begin(kPngSignature), std::end(kPngSignature));
  std::vector<uint8_t> header;
  AppendBigEndian32(header, static_cast<uint32_t>(image.width));
  AppendBigEndian32(header, static_cast<uint32_t>(image.height));
  header.insert(header.end(), {8, 2, 0, 0, 0});  // bit depth 8, colour type 2 (RGB),
                                                 // deflate, adaptive filtering, no interlace
  AppendChunk(png, "IHDR", header.data(), header.size());
  for (size_t at = 0; at < compressed.size(); at += kMaxIdatBytes) {
    AppendChunk(png, "IDAT", compressed.data() + at,
                std::min(kMaxIdatBytes, compressed.size() - at));
  }
  AppendChunk(png, "IEND", nullptr, 0);
  return png;
}

void WriteFileAtomically(const std::string& path, std::span<const uint8_t> bytes) {
  if (path.empty()) Fail("cannot write a file to an empty path");
  // Unique per process and per call, so concurrent writers never share a temporary file.
  static std::atomic<int> counter{0};
  const std::string temp =
      path + ".tmp." + std::to_string(getpid()) + "." + std::to_string(counter++);
  FILE* file = std::fopen(temp.c_str(), "wb");
  if (file == nullptr) Fail(path, ": cannot create file (", std::strerror(errno), ")");
  int error = 0;
  if (std::fwrite(bytes.data(), 1, bytes.size(), file) != bytes.size() || std::fflush(file) != 0 ||
      fsync(fileno(file)) != 0) {
    error = errno != 0 ? errno : EIO;
  }
  if (std::fclose(file) != 0 && error == 0) error = errno != 0 ? errno : EIO;
  if (error == 0 && std::rename(temp.c_str(), path.c_str()) != 0) error = errno;
  if (error != 0) {
    std::remove(temp.c_str());
    Fail(path, ": cannot write file (", std::strerror(error), ")");
  }
}

}  // namespace mixattn::plot
