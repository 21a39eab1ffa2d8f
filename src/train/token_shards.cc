#include "train/token_shards.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <utility>
#include <vector>

#include "core/error.h"

namespace mixattn {
namespace {

static_assert(std::endian::native == std::endian::little,
              "token shards store little-endian ids and are read in place");

std::string ErrnoMessage(int error) { return std::strerror(error); }

// ---- SHA-256 (FIPS 180-4, section 6.2) ----------------------------------------------------

constexpr std::array<uint32_t, 64> kSha256RoundConstants = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

class Sha256 {
 public:
  void Update(const unsigned char* data, size_t size) {
    total_bytes_ += size;
    if (buffered_ > 0) {
      const size_t take = std::min(size, block_.size() - buffered_);
      std::memcpy(block_.data() + buffered_, data, take);
      buffered_ += take;
      data += take;
      size -= take;
      if (buffered_ < block_.size()) return;
      Compress(block_.data());
      buffered_ = 0;
    }
    for (; size >= block_.size(); data += block_.size(), size -= block_.size()) Compress(data);
    std::memcpy(block_.data(), data, size);
    buffered_ = size;
  }

  std::string HexDigest() {
    // Padding: 0x80, zeros to 56 mod 64, then the message length in bits, big-endian.
    const uint64_t bit_length = total_bytes_ * 8;
    const unsigned char one_bit = 0x80;
    Update(&one_bit, 1);
    const unsigned char zero = 0;
    while (buffered_ != 56) Update(&zero, 1);
    unsigned char length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(bit_length >> (56 - 8 * i));
    Update(length, 8);
    static constexpr char kHex[] = "0123456789abcdef";
    std::string hex;
    for (const uint32_t word : state_) {
      for (int shift = 28; shift >= 0; shift -= 4) hex += kHex[(word >> shift) & 0xf];
    }
    return hex;
  }

 private:
  void Compress(const unsigned char* block) {
    uint32_t w[64];
    for (int t = 0; t < 16; ++t) {
      w[t] = uint32_t{block[4 * t]} << 24 | uint32_t{block[4 * t + 1]} << 16 |
             uint32_t{block[4 * t + 2]} << 8 | uint32_t{block[4 * t + 3]};
    }
    for (int t = 16; t < 64; ++t) {
      const uint32_t s0 = std::rotr(w[t - 15], 7) ^ std::rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
      const uint32_t s1 = std::rotr(w[t - 2], 17) ^ std::rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
      w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    uint32_t a = state_[0], b = state_[1], c = state_[2], d = state_[3];
    uint32_t e = state_[4], f = state_[5], g = state_[6], h = state_[7];
    for (int t = 0; t < 64; ++t) {
      const uint32_t s1 = std::rotr(e, 6) ^ std::rotr(e, 11) ^ std::rotr(e, 25);
      const uint32_t choose = (e & f) ^ (~e & g);
      const uint32_t temp1 = h + s1 + choose + kSha256RoundConstants[t] + w[t];
      const uint32_t s0 = std::rotr(a, 2) ^ std::rotr(a, 13) ^ std::rotr(a, 22);
      const uint32_t majority = (a & b) ^ (a & c) ^ (b & c);
      const uint32_t temp2 = s0 + majority;
      h = g;
      g = f;
      f = e;
      e = d + temp1;
      d = c;
      c = b;
      b = a;
      a = temp1 + temp2;
    }
    state_[0] += a, state_[1] += b, state_[2] += c, state_[3] += d;
    state_[4] += e, state_[5] += f, state_[6] += g, state_[7] += h;
  }

  std::array<uint32_t, 8> state_ = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::array<unsigned char, 64> block_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

bool IsSha256Hex(std::string_view hex) {
  if (hex.size() != 64) return false;
  for (const char c : hex) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// ---- files ----------------------------------------------------------------------------------

struct FdCloser {
  int fd = -1;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

// Writes a file atomically: bytes go to a temporary file beside `path` (rename is atomic only
// within one file system), which is fsynced and renamed over `path`; the directory is fsynced
// so the rename itself survives a crash. On any failure the temporary file is removed.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path) : path_(std::move(path)) {
    static std::atomic<uint64_t> counter{0};
    for (int attempt = 0; fd_.fd < 0 && attempt < 100; ++attempt) {
      temp_path_ = path_ + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
      fd_.fd = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd_.fd < 0 && errno != EEXIST) break;
    }
    if (fd_.fd < 0) Fail(path_, ": cannot create a temporary file: ", ErrnoMessage(errno));
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (!committed_) {
      if (fd_.fd >= 0) ::close(std::exchange(fd_.fd, -1));
      ::unlink(temp_path_.c_str());
    }
  }

  void Append(const void* data, size_t size) {
    const char* bytes = static_cast<const char*>(data);
    while (size > 0) {
      const ssize_t written = ::write(fd_.fd, bytes, size);
      if (written < 0 && errno == EINTR) continue;
      if (written < 0) Fail(path_, ": cannot write ", temp_path_, ": ", ErrnoMessage(errno));
      bytes += written;
      size -= static_cast<size_t>(written);
    }
  }

  void Commit() {
    if (::fsync(fd_.fd) != 0) Fail(path_, ": cannot fsync ", temp_path_, ": ", ErrnoMessage(errno));
    if (::close(std::exchange(fd_.fd, -1)) != 0) {
      Fail(path_, ": cannot close ", temp_path_, ": ", ErrnoMessage(errno));
    }
    if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
      Fail(path_, ": cannot rename ", temp_path_, " over it: ", ErrnoMessage(errno));
    }
    committed_ = true;
    std::string directory = std::filesystem::path(path_).parent_path().string();
    if (directory.empty()) directory = ".";
    FdCloser dir{::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
    // Some file systems cannot fsync a directory (EINVAL); the data itself is already synced.
    if (dir.fd >= 0 && ::fsync(dir.fd) != 0 && errno != EINVAL) {
      Fail(path_, ": cannot fsync directory ", directory, ": ", ErrnoMessage(errno));
    }
  }

 private:
  std::string path_;
  std::string temp_path_;
  FdCloser fd_;
  bool committed_ = false;
};

// Little-endian integer fields of the header.
void PutU32(unsigned char* out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<unsigned char>(value >> (8 * i));
}
void PutU64(unsigned char* out, uint64_t value) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<unsigned char>(value >> (8 * i));
}
uint32_t GetU32(const unsigned char* in) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value |= uint32_t{in[i]} << (8 * i);
  return value;
}
uint64_t GetU64(const unsigned char* in) {
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value |= uint64_t{in[i]} << (8 * i);
  return value;
}

// Header field offsets; see the layout table in token_shards.h.
constexpr size_t kMagicOffset = 0;
constexpr size_t kVersionOffset = 8;
constexpr size_t kBytesPerTokenOffset = 12;
constexpr size_t kTokenCountOffset = 16;
constexpr size_t kVocabOffset = 24;
constexpr size_t kRecordLengthOffset = 28;
constexpr size_t kTokenizerShaOffset = 32;

// Largest vocabulary whose ids fit uint16.
constexpr int kMaxUint16Vocab = 65536;

template <typename Id>
int64_t FirstIdOutOfRange(const Id* ids, int64_t count, uint32_t vocab) {
  for (int64_t i = 0; i < count; ++i) {
    if (ids[i] >= vocab) return i;
  }
  return -1;
}

}  // namespace

std::string Sha256Hex(std::string_view bytes) {
  Sha256 hash;
  hash.Update(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  return hash.HexDigest();
}

std::string Sha256FileHex(const std::string& path) {
  FdCloser fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK)};
  if (fd.fd < 0) Fail(path, ": cannot open: ", ErrnoMessage(errno));
  struct stat info;
  if (::fstat(fd.fd, &info) != 0) Fail(path, ": cannot stat: ", ErrnoMessage(errno));
  if (!S_ISREG(info.st_mode)) Fail(path, ": is not a regular file");
  Sha256 hash;
  std::array<unsigned char, 1 << 16> buffer;
  while (true) {
    const ssize_t n = ::read(fd.fd, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) Fail(path, ": cannot read: ", ErrnoMessage(errno));
    if (n == 0) break;
    hash.Update(buffer.data(), static_cast<size_t>(n));
  }
  return hash.HexDigest();
}

void WriteBytesAtomically(const std::string& path, std::string_view bytes) {
  AtomicFile file(path);
  file.Append(bytes.data(), bytes.size());
  file.Commit();
}

void WriteTokenShard(const std::string& path, std::span<const int> tokens, int vocab_size,
                     std::string_view tokenizer_sha256, int64_t record_length) {
  if (vocab_size <= 0) Fail(path, ": cannot write a token shard with vocab size ", vocab_size);
  if (!tokenizer_sha256.empty() && !IsSha256Hex(tokenizer_sha256)) {
    Fail(path, ": tokenizer sha256 must be 64 lowercase hex digits, got '", tokenizer_sha256, "'");
  }
  const auto count = static_cast<int64_t>(tokens.size());
  if (record_length < 0 || record_length > UINT32_MAX ||
      (record_length > 0 && count % record_length != 0)) {
    Fail(path, ": record length ", record_length, " does not divide the ", count, " tokens");
  }
  for (int64_t i = 0; i < count; ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab_size) {
      Fail(path, ": token ", i, " is id ", tokens[i], ", outside the vocabulary [0, ", vocab_size,
           ")");
    }
  }
  const int bytes_per_token = vocab_size <= kMaxUint16Vocab ? 2 : 4;

  unsigned char header[kTokenShardHeaderBytes] = {};
  std::memcpy(header + kMagicOffset, kTokenShardMagic, sizeof(kTokenShardMagic));
  PutU32(header + kVersionOffset, kTokenShardVersion);
  PutU32(header + kBytesPerTokenOffset, static_cast<uint32_t>(bytes_per_token));
  PutU64(header + kTokenCountOffset, static_cast<uint64_t>(count));
  PutU32(header + kVocabOffset, static_cast<uint32_t>(vocab_size));
  PutU32(header + kRecordLengthOffset, static_cast<uint32_t>(record_length));
  for (size_t i = 0; i < tokenizer_sha256.size() / 2; ++i) {
    const auto nibble = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
    header[kTokenizerShaOffset + i] = static_cast<unsigned char>(
        nibble(tokenizer_sha256[2 * i]) << 4 | nibble(tokenizer_sha256[2 * i + 1]));
  }

  AtomicFile file(path);
  file.Append(header, sizeof(header));
  // Narrow the ids in chunks: no second full-size copy of the corpus in memory.
  constexpr int64_t kChunk = 1 << 16;
  std::vector<uint16_t> narrow;
  std::vector<uint32_t> wide;
  for (int64_t begin = 0; begin < count; begin += kChunk) {
    const int64_t end = std::min(count, begin + kChunk);
    if (bytes_per_token == 2) {
      narrow.assign(tokens.begin() + begin, tokens.begin() + end);
      file.Append(narrow.data(), narrow.size() * sizeof(uint16_t));
    } else {
      wide.assign(tokens.begin() + begin, tokens.begin() + end);
      file.Append(wide.data(), wide.size() * sizeof(uint32_t));
    }
  }
  file.Commit();
}

TokenShard TokenShard::Open(const std::string& path, int expected_vocab,
                            std::string_view expected_tokenizer_sha256) {
  // O_NONBLOCK: opening a FIFO must fail below (not a regular file) instead of hanging here.
  FdCloser fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK)};
  if (fd.fd < 0) Fail(path, ": cannot open token shard: ", ErrnoMessage(errno));
  struct stat info;
  if (::fstat(fd.fd, &info) != 0) Fail(path, ": cannot stat: ", ErrnoMessage(errno));
  if (S_ISDIR(info.st_mode)) Fail(path, ": is a directory, expected a token shard");
  if (!S_ISREG(info.st_mode)) Fail(path, ": is not a regular file, expected a token shard");
  const auto file_bytes = static_cast<int64_t>(info.st_size);
  if (file_bytes < kTokenShardHeaderBytes) {
    Fail(path, ": truncated token shard: ", file_bytes, " bytes, shorter than the ",
         kTokenShardHeaderBytes, "-byte header");
  }

  TokenShard shard;
  shard.path_ = path;
  void* mapping =
      ::mmap(nullptr, static_cast<size_t>(file_bytes), PROT_READ, MAP_PRIVATE, fd.fd, 0);
  if (mapping == MAP_FAILED)
    Fail(path, ": cannot mmap ", file_bytes, " bytes: ", ErrnoMessage(errno));
  shard.mapping_ = mapping;  // from here on, ~shard unmaps when validation throws
  shard.mapping_bytes_ = static_cast<size_t>(file_bytes);
  const auto* header = static_cast<const unsigned char*>(mapping);

  if (std::memcmp(header + kMagicOffset, kTokenShardMagic, sizeof(kTokenShardMagic)) != 0) {
    Fail(path, ": not a token shard (the file does not start with \"MXTOKENS\")");
  }
  const uint32_t version = GetU32(header + kVersionOffset);
  if (version != kTokenShardVersion) {
    Fail(path, ": token shard version ", version, " is not supported (this build reads version ",
         kTokenShardVersion, ")");
  }
  const uint32_t bytes_per_token = GetU32(header + kBytesPerTokenOffset);
  if (bytes_per_token != 2 && bytes_per_token != 4) {
    Fail(path, ": header field bytes_per_token is ", bytes_per_token, ", expected 2 or 4");
  }
  const uint64_t count = GetU64(header + kTokenCountOffset);
  const uint32_t vocab = GetU32(header + kVocabOffset);
  if (vocab == 0 || vocab > static_cast<uint32_t>(INT32_MAX)) {
    Fail(path, ": header field vocab_size is ", vocab, ", expected 1 to ", INT32_MAX);
  }
  if (bytes_per_token == 2 && vocab > static_cast<uint32_t>(kMaxUint16Vocab)) {
    Fail(path, ": header says vocab_size ", vocab, " with 2-byte ids, which cannot hold ids above ",
         kMaxUint16Vocab - 1);
  }
  const uint64_t payload = static_cast<uint64_t>(file_bytes - kTokenShardHeaderBytes);
  if (count > payload / bytes_per_token || count * bytes_per_token != payload) {
    const bool truncated = count > payload / bytes_per_token;
    Fail(path, truncated ? ": truncated token shard" : ": corrupt token shard", ": header says ",
         count, " tokens of ", bytes_per_token, " bytes, but the file holds ", payload,
         " bytes after the ", kTokenShardHeaderBytes, "-byte header");
  }
  const uint32_t record_length = GetU32(header + kRecordLengthOffset);
  if (record_length > 0 && count % record_length != 0) {
    Fail(path, ": header field record_length ", record_length, " does not divide the ", count,
         " tokens");
  }
  if (expected_vocab > 0 && static_cast<uint32_t>(expected_vocab) != vocab) {
    Fail(path, ": token shard has vocab size ", vocab, ", but the model expects ", expected_vocab,
         " (the shard was made with a different tokenizer)");
  }

  bool sha_known = false;
  for (int i = 0; i < 32; ++i) sha_known |= header[kTokenizerShaOffset + i] != 0;
  if (sha_known) {
    static constexpr char kHex[] = "0123456789abcdef";
    for (int i = 0; i < 32; ++i) {
      shard.tokenizer_sha256_ += kHex[header[kTokenizerShaOffset + i] >> 4];
      shard.tokenizer_sha256_ += kHex[header[kTokenizerShaOffset + i] & 0xf];
    }
  }
  if (!expected_tokenizer_sha256.empty() && expected_tokenizer_sha256 != shard.tokenizer_sha256_) {
    Fail(path, ": token shard was made with tokenizer sha256 ",
         sha_known ? shard.tokenizer_sha256_ : std::string("(unknown)"), ", but the tokenizer has ",
         expected_tokenizer_sha256, " (re-run `mixattn data` with this tokenizer)");
  }

  shard.tokens_ = header + kTokenShardHeaderBytes;
  shard.size_ = static_cast<int64_t>(count);
  shard.bytes_per_token_ = static_cast<int>(bytes_per_token);
  shard.vocab_size_ = static_cast<int>(vocab);
  shard.record_length_ = record_length;
  // Every id checked once here, so the trainer can index embeddings without a check per token.
  const int64_t bad =
      bytes_per_token == 2
          ? FirstIdOutOfRange(static_cast<const uint16_t*>(shard.tokens_), shard.size_, vocab)
          : FirstIdOutOfRange(static_cast<const uint32_t*>(shard.tokens_), shard.size_, vocab);
  if (bad >= 0) {
    Fail(path, ": token ", bad, " is id ", shard.token(bad), ", outside the vocabulary [0, ", vocab,
         ")");
  }
  return shard;
}

TokenShard::TokenShard(TokenShard&& other) noexcept { *this = std::move(other); }

TokenShard& TokenShard::operator=(TokenShard&& other) noexcept {
  if (this != &other) {
    Unmap();
    path_ = std::move(other.path_);
    mapping_ = std::exchange(other.mapping_, nullptr);
    mapping_bytes_ = std::exchange(other.mapping_bytes_, 0);
    tokens_ = std::exchange(other.tokens_, nullptr);
    size_ = std::exchange(other.size_, 0);
    bytes_per_token_ = other.bytes_per_token_;
    vocab_size_ = other.vocab_size_;
    record_length_ = other.record_length_;
    tokenizer_sha256_ = std::move(other.tokenizer_sha256_);
  }
  return *this;
}

TokenShard::~TokenShard() { Unmap(); }

void TokenShard::Unmap() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_bytes_);
  mapping_ = nullptr;
  mapping_bytes_ = 0;
}

void TokenShard::Read(int64_t begin, std::span<int> out) const {
  const auto count = static_cast<int64_t>(out.size());
  if (begin < 0 || count > size_ - begin) {
    Fail(path_, ": cannot read tokens [", begin, ", ", begin + count, "): the shard has ", size_,
         " tokens");
  }
  for (int64_t i = 0; i < count; ++i) out[i] = token(begin + i);
}

}  // namespace mixattn
