// Safetensors weight files: a validating, zero-copy reader (mmap) and an atomic writer.
//
// Layout (https://github.com/huggingface/safetensors):
//   [8 bytes]  N, little-endian u64: length of the JSON header
//   [N bytes]  UTF-8 JSON object: tensor name -> {"dtype": "F32", "shape": [2, 3],
//              "data_offsets": [begin, end]}, plus an optional "__metadata__": {string: string}.
//              Trailing spaces are allowed (the writer uses them to align the data buffer).
//   [rest]     the data buffer; data_offsets are relative to its first byte. Every byte belongs to
//              exactly one tensor: no holes, no overlaps, nothing unused at the end.
//
// Tensor data is row-major, little-endian. Only F32 and BF16 are supported (see core/dtype.h).
//
// Every defect in a file is reported as a mixattn::Error that starts with the file name and names
// the tensor and the rule broken; the reader never trusts a size or an offset it has not checked.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace mixattn {

// Largest JSON header accepted (the reference implementation's limit): a bigger one is a corrupt
// length field or not a safetensors file, and must not make us parse 2^64 bytes.
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

struct SafetensorsTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // [d0, d1, ...]; empty = scalar (one element)
  int64_t num_elements = 0;    // product of shape (0 if any dimension is 0)
  // num_bytes() bytes inside the mapping (or the caller's buffer). Only 1-byte aligned in
  // general: files from other writers need not align tensors, so read through memcpy or check.
  const std::byte* data = nullptr;

  int64_t num_bytes() const { return num_elements * DTypeSize(dtype); }
};

struct SafetensorsContents {
  std::vector<SafetensorsTensor> tensors;       // sorted by data offset
  std::map<std::string, std::string> metadata;  // the "__metadata__" object, if any
};

// Parses and validates a whole file image held in memory. The returned tensors point into
// `file_bytes`, which must outlive them. `source_name` (usually the path) prefixes every error.
SafetensorsContents ParseSafetensors(std::span<const std::byte> file_bytes,
                                     const std::string& source_name);

// A safetensors file mapped read-only (PROT_READ, MAP_PRIVATE); tensors point into the mapping,
// so opening costs one page-table setup, not a copy. Move-only; unmaps in the destructor.
// The file must not be truncated by another process while open (that would raise SIGBUS).
class SafetensorsFile {
 public:
  // Throws mixattn::Error if the file cannot be opened or mapped (with strerror) or is invalid.
  static SafetensorsFile Open(const std::string& path);

  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::vector<SafetensorsTensor>& tensors() const { return contents_.tensors; }
  const SafetensorsTensor* Find(std::string_view name) const;  // nullptr if absent
  // Throws mixattn::Error "<path>: tensor '<name>' not found".
  const SafetensorsTensor& Get(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return contents_.metadata; }
  const std::string& path() const { return path_; }
  // The whole file as mapped; every tensor's data lies inside it.
  std::span<const std::byte> mapped_bytes() const;

 private:
  SafetensorsFile() = default;
  void Unmap() noexcept;

  std::string path_;
  void* mapping_ = nullptr;  // nullptr for an empty file (which never parses)
  size_t mapping_size_ = 0;
  SafetensorsContents contents_;
  std::map<std::string, size_t, std::less<>> index_by_name_;  // name -> index in tensors()
};

struct SafetensorsWriteItem {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // [d0, d1, ...]
  const void* data = nullptr;  // product(shape) * DTypeSize(dtype) bytes, row-major
};

// Writes a safetensors file atomically: <path>.tmp.<pid>, fsync, rename over `path`, fsync the
// directory, so a reader sees the old file or the new one, never a torn one. Tensors are laid
// out contiguously in the given order; the header is padded with spaces so the data buffer
// starts at an 8-byte file offset. Throws mixattn::Error (invalid item or I/O failure); on
// failure the temporary file is removed and `path` is untouched.
void WriteSafetensors(const std::string& path, const std::vector<SafetensorsWriteItem>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace mixattn
