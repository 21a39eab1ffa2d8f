// Safetensors reader and writer. Legend: N = JSON header length in bytes; "buffer" = the data
// bytes after the header, which data_offsets index.
//
// The reader treats the file as hostile: every integer is range-checked before it is used as a
// size or an offset, arithmetic that could overflow int64 is checked, and the header is parsed
// with duplicate-key and nesting checks (nlohmann's json::parse would keep the last of two equal
// keys silently, which would let two headers describe the same file differently).
#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <system_error>
#include <utility>

#include "core/error.h"

namespace mixattn {
namespace {

using Json = nlohmann::json;

constexpr std::string_view kMetadataKey = "__metadata__";
constexpr size_t kLengthFieldBytes = 8;
// A valid header nests three levels: the header object, a tensor's entry, its shape array.
// Deeper input is rejected while parsing, so a hostile header cannot build deep trees.
constexpr int kMaxHeaderDepth = 3;

std::string ErrnoMessage(int error) { return std::generic_category().message(error); }

// "[2, 3]"; long shapes are cut so a hostile header cannot make a huge error message.
std::string ShapeString(const std::vector<int64_t>& shape) {
  constexpr size_t kMaxShown = 8;
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size() && i < kMaxShown; ++i) {
    out << (i ? ", " : "") << shape[i];
  }
  if (shape.size() > kMaxShown) out << ", ... (" << shape.size() << " dims)";
  out << ']';
  return out.str();
}

// A short description of a JSON value for an error message: scalars as written, containers by
// type only (dumping them could be huge).
std::string Describe(const Json& value) {
  if (value.is_object()) return "an object";
  if (value.is_array()) return "an array of " + std::to_string(value.size()) + " elements";
  if (value.is_number_float()) return "the non-integer number " + value.dump();
  std::string text = value.dump();
  constexpr size_t kMaxChars = 40;
  if (text.size() > kMaxChars) text = text.substr(0, kMaxChars) + "...";
  return text;
}

std::optional<DType> DTypeFromName(std::string_view name) {
  if (name == DTypeName(DType::kF32)) return DType::kF32;
  if (name == DTypeName(DType::kBF16)) return DType::kBF16;
  return std::nullopt;
}

// Element count of `shape`, or nullopt if it overflows int64. Any zero dimension gives 0, even
// after dimensions whose product alone would overflow.
std::optional<int64_t> CountElements(const std::vector<int64_t>& shape) {
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
  int64_t count = 1;
  for (int64_t dim : shape) {
    if (__builtin_mul_overflow(count, dim, &count)) return std::nullopt;
  }
  return count;
}

// Bytes of `count` elements of `dtype`, or nullopt if that overflows int64.
std::optional<int64_t> CountBytes(int64_t count, DType dtype) {
  int64_t bytes = 0;
  if (__builtin_mul_overflow(count, DTypeSize(dtype), &bytes)) return std::nullopt;
  return bytes;
}

int64_t ReadNonNegativeInt(const Json& value, const std::string& where) {
  if (value.is_number_unsigned()) {
    const uint64_t unsigned_value = value.get<uint64_t>();
    if (unsigned_value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      Fail(where, " is ", unsigned_value, ", larger than the int64 maximum");
    }
    return static_cast<int64_t>(unsigned_value);
  }
  if (value.is_number_integer()) {
    const int64_t signed_value = value.get<int64_t>();
    if (signed_value < 0) Fail(where, " is ", signed_value, ", must be non-negative");
    return signed_value;
  }
  Fail(where, " must be a non-negative integer, got ", Describe(value));
}

// Parses the header text, rejecting duplicate keys and nesting deeper than kMaxHeaderDepth.
Json ParseHeaderJson(std::string_view text, const std::string& source_name) {
  std::vector<std::set<std::string>> keys_of_open_objects;  // one set per object being parsed
  // `depth` is the number of enclosing containers: 0 for the header object itself, 1 for the
  // header's keys and the entries' opening braces, and so on.
  auto check = [&](int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
      case Json::parse_event_t::array_start:
        if (depth >= kMaxHeaderDepth) {
          Fail(source_name, ": header JSON nests deeper than ", kMaxHeaderDepth,
               " levels (header object, tensor entry, shape array); this is not a safetensors "
               "header");
        }
        if (event == Json::parse_event_t::object_start) keys_of_open_objects.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        keys_of_open_objects.pop_back();
        break;
      case Json::parse_event_t::key: {
        const auto& key = parsed.get_ref<const std::string&>();
        if (!keys_of_open_objects.back().insert(key).second) {
          if (depth == 1) Fail(source_name, ": duplicate tensor name '", key, "' in the header");
          Fail(source_name, ": duplicate key '", key, "' in the header JSON");
        }
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return Json::parse(text.data(), text.data() + text.size(), check);
  } catch (const Json::exception& e) {
    Fail(source_name, ": header is not valid JSON: ", e.what());
  }
}

std::map<std::string, std::string> ParseMetadata(const Json& value,
                                                 const std::string& source_name) {
  if (!value.is_object()) {
    Fail(source_name, ": ", kMetadataKey, " must be an object of strings, got ", Describe(value));
  }
  std::map<std::string, std::string> metadata;
  for (auto it = value.begin(); it != value.end(); ++it) {
    if (!it.value().is_string()) {
      Fail(source_name, ": ", kMetadataKey, " value of key '", it.key(), "' must be a string, got ",
           Describe(it.value()));
    }
    metadata.emplace(it.key(), it.value().get<std::string>());
  }
  return metadata;
}

// A tensor whose entry is valid on its own; where it sits relative to others is checked later.
struct PlacedTensor {
  SafetensorsTensor tensor;
  int64_t begin = 0;  // data_offsets, relative to the buffer
  int64_t end = 0;
};

PlacedTensor ParseEntry(const std::string& name, const Json& entry,
                        std::span<const std::byte> buffer, const std::string& source_name) {
  const std::string where = source_name + ": tensor '" + name + "'";
  static constexpr std::string_view kKeys[] = {"dtype", "shape", "data_offsets"};
  if (!entry.is_object()) {
    Fail(where, ": entry must be an object with keys dtype, shape, data_offsets, got ",
         Describe(entry));
  }
  for (auto it = entry.begin(); it != entry.end(); ++it) {
    if (std::find(std::begin(kKeys), std::end(kKeys), it.key()) == std::end(kKeys)) {
      Fail(where, ": unexpected key '", it.key(), "' (expected dtype, shape, data_offsets)");
    }
  }
  for (std::string_view key : kKeys) {
    if (!entry.contains(key)) Fail(where, ": missing key '", key, "'");
  }

  PlacedTensor placed;
  SafetensorsTensor& tensor = placed.tensor;
  tensor.name = name;

  const Json& dtype = entry.at("dtype");
  if (!dtype.is_string()) Fail(where, ": dtype must be a string, got ", Describe(dtype));
  const std::optional<DType> parsed_dtype = DTypeFromName(dtype.get_ref<const std::string&>());
  if (!parsed_dtype) {
    Fail(where, ": unsupported dtype ", Describe(dtype), " (supported: ", DTypeName(DType::kF32),
         ", ", DTypeName(DType::kBF16), ")");
  }
  tensor.dtype = *parsed_dtype;

  const Json& shape = entry.at("shape");
  if (!shape.is_array()) {
    Fail(where, ": shape must be an array of non-negative integers, got ", Describe(shape));
  }
  tensor.shape.reserve(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) {
    tensor.shape.push_back(
        ReadNonNegativeInt(shape[i], where + ": shape[" + std::to_string(i) + "]"));
  }
  const std::optional<int64_t> num_elements = CountElements(tensor.shape);
  const std::optional<int64_t> num_bytes =
      num_elements ? CountBytes(*num_elements, tensor.dtype) : std::nullopt;
  if (!num_bytes) {
    Fail(where, ": shape ", ShapeString(tensor.shape), " of ", DTypeName(tensor.dtype),
         " elements has more bytes than fit in int64");
  }
  tensor.num_elements = *num_elements;

  const Json& offsets = entry.at("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2) {
    Fail(where, ": data_offsets must be an array of two non-negative integers [begin, end], got ",
         Describe(offsets));
  }
  placed.begin = ReadNonNegativeInt(offsets[0], where + ": data_offsets begin");
  placed.end = ReadNonNegativeInt(offsets[1], where + ": data_offsets end");
  if (placed.begin > placed.end) {
    Fail(where, ": data_offsets [", placed.begin, ", ", placed.end, "] has begin after end");
  }
  if (static_cast<uint64_t>(placed.end) > buffer.size()) {
    Fail(where, ": data_offsets end ", placed.end, " is past the end of the data buffer (",
         buffer.size(), " bytes)");
  }
  if (placed.end - placed.begin != *num_bytes) {
    Fail(where, ": data_offsets [", placed.begin, ", ", placed.end, "] hold ",
         placed.end - placed.begin, " bytes but shape ", ShapeString(tensor.shape), " of ",
         DTypeName(tensor.dtype), " needs ", *num_bytes, " bytes");
  }
  tensor.data = buffer.data() + placed.begin;
  return placed;
}

// The format requires the buffer to be exactly tiled: sorted by offset, each tensor starts where
// the previous one ended, and the last ends at the end of the buffer.
void CheckTiling(const std::vector<PlacedTensor>& sorted, size_t buffer_size,
                 const std::string& source_name) {
  int64_t covered_end = 0;
  const std::string* previous_name = nullptr;
  for (const PlacedTensor& placed : sorted) {
    if (placed.begin < covered_end) {
      Fail(source_name, ": tensors '", *previous_name, "' and '", placed.tensor.name,
           "' overlap in the data buffer (bytes [", placed.begin, ", ", covered_end, "))");
    }
    if (placed.begin > covered_end) {
      Fail(source_name, ": hole in the data buffer: bytes [", covered_end, ", ", placed.begin,
           ") before tensor '", placed.tensor.name,
           "' belong to no tensor (the format requires every byte to be indexed)");
    }
    covered_end = placed.end;
    previous_name = &placed.tensor.name;
  }
  if (static_cast<uint64_t>(covered_end) != buffer_size) {
    Fail(source_name, ": ", buffer_size - covered_end,
         " unused bytes at the end of the data buffer (tensors end at byte ", covered_end, " of ",
         buffer_size, "; the format requires every byte to be indexed)");
  }
}

// Closes a file descriptor on scope exit.
struct FdCloser {
  int fd = -1;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

void WriteAll(int fd, const void* data, size_t size, const std::string& path) {
  constexpr size_t kMaxChunk = size_t{1} << 30;  // write() may stop short of ~2 GiB anyway
  const auto* bytes = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t written = ::write(fd, bytes, std::min(size, kMaxChunk));
    if (written < 0) {
      if (errno == EINTR) continue;
      Fail(path, ": cannot write: ", ErrnoMessage(errno));
    }
    bytes += written;
    size -= static_cast<size_t>(written);
  }
}

// fsync of the directory makes the rename itself durable (POSIX leaves it in the page cache).
void SyncParentDirectory(const std::string& path) {
  std::string directory = std::filesystem::path(path).parent_path().string();
  if (directory.empty()) directory = ".";
  FdCloser dir{::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (dir.fd < 0) Fail(path, ": cannot open directory ", directory, ": ", ErrnoMessage(errno));
  // Some file systems cannot fsync a directory (EINVAL); the data itself is already synced.
  if (::fsync(dir.fd) != 0 && errno != EINVAL) {
    Fail(path, ": cannot fsync directory ", directory, ": ", ErrnoMessage(errno));
  }
}

}  // namespace

SafetensorsContents ParseSafetensors(std::span<const std::byte> file_bytes,
                                     const std::string& source_name) {
  if (file_bytes.size() < kLengthFieldBytes) {
    Fail(source_name, ": file is ", file_bytes.size(),
         " bytes, shorter than the 8-byte header length field of a safetensors file");
  }
  uint64_t header_bytes = 0;  // N, little-endian
  for (size_t i = 0; i < kLengthFieldBytes; ++i) {
    header_bytes |= static_cast<uint64_t>(file_bytes[i]) << (8 * i);
  }
  if (header_bytes == 0) {
    Fail(source_name, ": header length is 0; a safetensors header is a non-empty JSON object");
  }
  if (header_bytes > kSafetensorsMaxHeaderBytes) {
    Fail(source_name, ": header length ", header_bytes, " exceeds the limit of ",
         kSafetensorsMaxHeaderBytes, " bytes (corrupt file, or not a safetensors file)");
  }
  const size_t bytes_after_length = file_bytes.size() - kLengthFieldBytes;
  if (header_bytes > bytes_after_length) {
    Fail(source_name, ": header length ", header_bytes, " runs past the end of the file (only ",
         bytes_after_length, " bytes follow the length field; truncated file?)");
  }
  const std::string_view header_text(
      reinterpret_cast<const char*>(file_bytes.data() + kLengthFieldBytes), header_bytes);
  const std::span<const std::byte> buffer = file_bytes.subspan(kLengthFieldBytes + header_bytes);

  const Json header = ParseHeaderJson(header_text, source_name);
  if (!header.is_object()) {
    Fail(source_name, ": header must be a JSON object, got ", Describe(header));
  }

  SafetensorsContents contents;
  std::vector<PlacedTensor> placed;
  placed.reserve(header.size());
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == kMetadataKey) {
      contents.metadata = ParseMetadata(it.value(), source_name);
    } else {
      placed.push_back(ParseEntry(it.key(), it.value(), buffer, source_name));
    }
  }
  // Stable: tensors at the same offset (empty ones) keep the header's (name) order.
  std::stable_sort(placed.begin(), placed.end(), [](const PlacedTensor& a, const PlacedTensor& b) {
    return std::pair(a.begin, a.end) < std::pair(b.begin, b.end);
  });
  CheckTiling(placed, buffer.size(), source_name);

  contents.tensors.reserve(placed.size());
  for (PlacedTensor& p : placed) contents.tensors.push_back(std::move(p.tensor));
  return contents;
}

SafetensorsFile SafetensorsFile::Open(const std::string& path) {
  // O_NONBLOCK: opening a FIFO must fail below (not a regular file) instead of hanging here.
  FdCloser fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK)};
  if (fd.fd < 0) Fail(path, ": cannot open safetensors file: ", ErrnoMessage(errno));
  struct stat info;
  if (::fstat(fd.fd, &info) != 0) Fail(path, ": cannot stat: ", ErrnoMessage(errno));
  if (S_ISDIR(info.st_mode)) Fail(path, ": is a directory, expected a safetensors file");
  if (!S_ISREG(info.st_mode)) Fail(path, ": is not a regular file, expected a safetensors file");

  SafetensorsFile file;
  file.path_ = path;
  const auto size = static_cast<size_t>(info.st_size);
  if (size > 0) {  // mmap of length 0 fails with EINVAL; an empty file is rejected by the parser
    void* mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.fd, 0);
    if (mapping == MAP_FAILED) {
      Fail(path, ": cannot mmap ", size, " bytes: ", ErrnoMessage(errno));
    }
    file.mapping_ = mapping;
    file.mapping_size_ = size;
  }
  file.contents_ = ParseSafetensors(file.mapped_bytes(), path);  // on throw, ~file unmaps
  for (size_t i = 0; i < file.contents_.tensors.size(); ++i) {
    file.index_by_name_.emplace(file.contents_.tensors[i].name, i);
  }
  return file;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      mapping_(std::exchange(other.mapping_, nullptr)),
      mapping_size_(std::exchange(other.mapping_size_, 0)),
      contents_(std::move(other.contents_)),
      index_by_name_(std::move(other.index_by_name_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    Unmap();
    path_ = std::move(other.path_);
    mapping_ = std::exchange(other.mapping_, nullptr);
    mapping_size_ = std::exchange(other.mapping_size_, 0);
    contents_ = std::move(other.contents_);
    index_by_name_ = std::move(other.index_by_name_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { Unmap(); }

void SafetensorsFile::Unmap() noexcept {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
  mapping_ = nullptr;
  mapping_size_ = 0;
}

std::span<const std::byte> SafetensorsFile::mapped_bytes() const {
  return {static_cast<const std::byte*>(mapping_), mapping_size_};
}

const SafetensorsTensor* SafetensorsFile::Find(std::string_view name) const {
  const auto it = index_by_name_.find(name);
  return it == index_by_name_.end() ? nullptr : &contents_.tensors[it->second];
}

const SafetensorsTensor& SafetensorsFile::Get(std::string_view name) const {
  const SafetensorsTensor* tensor = Find(name);
  if (tensor == nullptr) Fail(path_, ": tensor '", name, "' not found");
  return *tensor;
}

void WriteSafetensors(const std::string& path, const std::vector<SafetensorsWriteItem>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Build the header first: every item is validated before anything touches the disk.
  Json header = Json::object();
  if (!metadata.empty()) header[std::string(kMetadataKey)] = metadata;
  std::set<std::string_view> names;
  std::vector<int64_t> item_bytes;  // [tensors.size()]
  item_bytes.reserve(tensors.size());
  int64_t offset = 0;
  for (const SafetensorsWriteItem& item : tensors) {
    const std::string where = path + ": tensor '" + item.name + "'";
    if (item.name == kMetadataKey) {
      Fail(where, ": the name is reserved for the metadata object");
    }
    if (!names.insert(item.name).second) Fail(where, ": duplicate tensor name");
    for (int64_t dim : item.shape) {
      if (dim < 0) Fail(where, ": shape ", ShapeString(item.shape), " has a negative dimension");
    }
    const std::optional<int64_t> num_elements = CountElements(item.shape);
    const std::optional<int64_t> num_bytes =
        num_elements ? CountBytes(*num_elements, item.dtype) : std::nullopt;
    int64_t end = 0;
    if (!num_bytes || __builtin_add_overflow(offset, *num_bytes, &end)) {
      Fail(where, ": shape ", ShapeString(item.shape), " makes the file larger than int64 bytes");
    }
    if (item.data == nullptr && *num_bytes > 0) {
      Fail(where, ": data is null but shape ", ShapeString(item.shape), " of ",
           DTypeName(item.dtype), " needs ", *num_bytes, " bytes");
    }
    header[item.name] = {{"dtype", std::string(DTypeName(item.dtype))},
                         {"shape", item.shape},
                         {"data_offsets", {offset, end}}};
    item_bytes.push_back(*num_bytes);
    offset = end;
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const Json::exception& e) {
    Fail(path, ": cannot encode the header (tensor names and metadata must be UTF-8): ", e.what());
  }
  // Pad with spaces (valid trailing JSON whitespace) so the buffer starts 8-byte aligned.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  if (header_text.size() > kSafetensorsMaxHeaderBytes) {
    Fail(path, ": header is ", header_text.size(), " bytes, over the ", kSafetensorsMaxHeaderBytes,
         "-byte limit readers accept (too many tensors or too much metadata)");
  }
  unsigned char length_field[kLengthFieldBytes];
  for (size_t i = 0; i < kLengthFieldBytes; ++i) {
    length_field[i] = static_cast<unsigned char>(header_text.size() >> (8 * i));
  }

  const std::string temp_path = path + ".tmp." + std::to_string(::getpid());
  FdCloser fd{::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)};
  if (fd.fd < 0) {
    Fail(path, ": cannot create temporary file ", temp_path, ": ", ErrnoMessage(errno));
  }
  try {
    WriteAll(fd.fd, length_field, sizeof(length_field), temp_path);
    WriteAll(fd.fd, header_text.data(), header_text.size(), temp_path);
    for (size_t i = 0; i < tensors.size(); ++i) {
      WriteAll(fd.fd, tensors[i].data, static_cast<size_t>(item_bytes[i]), temp_path);
    }
    if (::fsync(fd.fd) != 0) Fail(temp_path, ": cannot fsync: ", ErrnoMessage(errno));
    const int fd_to_close = std::exchange(fd.fd, -1);
    if (::close(fd_to_close) != 0) Fail(temp_path, ": cannot close: ", ErrnoMessage(errno));
    if (::rename(temp_path.c_str(), path.c_str()) != 0) {
      Fail(path, ": cannot rename ", temp_path, " over it: ", ErrnoMessage(errno));
    }
  } catch (...) {
    if (fd.fd >= 0) ::close(std::exchange(fd.fd, -1));
    ::unlink(temp_path.c_str());
    throw;
  }
  SyncParentDirectory(path);
}

}  // namespace mixattn
