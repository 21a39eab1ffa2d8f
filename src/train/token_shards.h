// Token shards: the tokenized training corpus on disk, the file the trainer reads its batches from.
//
// A shard is one flat array of token ids with a 64-byte header. `mixattn data` writes three:
// train.bin and val.bin (documents laid end to end, each BOS + tokens + EOS) and, on request,
// train_longrange.bin (fixed-length synthetic retrieval sequences, see corpus.h). The header
// carries what a reader needs to refuse a shard that does not fit its model: the vocabulary size
// and the sha256 of the tokenizer model the ids came from.
//
// Layout (all integers little-endian):
//   offset  size  field
//        0     8  magic "MXTOKENS"
//        8     4  u32 version (1)
//       12     4  u32 bytes per token: 2 (uint16 ids, vocab <= 65536) or 4 (uint32 ids)
//       16     8  u64 token count N
//       24     4  u32 vocab size V; every id is < V
//       28     4  u32 record length: 0 = a stream of documents, T = N/T sequences of T tokens
//       32    32  sha256 of the tokenizer model file (raw bytes; all zero = unknown)
//       64   N*w  token ids [N]
// The header is 64 bytes so the ids of a memory-mapped shard start 64-byte aligned.
//
// Legend: N = tokens in the shard, V = vocab size, T = record length.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace mixattn {

inline constexpr char kTokenShardMagic[8] = {'M', 'X', 'T', 'O', 'K', 'E', 'N', 'S'};
inline constexpr uint32_t kTokenShardVersion = 1;
inline constexpr int64_t kTokenShardHeaderBytes = 64;

// A read-only token shard, memory-mapped. Open validates the whole file (header fields, size,
// every id < V), so later reads need no checks. Move-only; unmaps when destroyed.
class TokenShard {
 public:
  // Opens and validates `path`. `expected_vocab` > 0 requires the shard's vocab size to equal
  // it; a non-empty `expected_tokenizer_sha256` (64 hex digits) requires the shard to come from
  // that tokenizer. Throws Error naming the file and the field for a missing, truncated or
  // corrupt shard, and for one that does not match the expectations.
  static TokenShard Open(const std::string& path, int expected_vocab = 0,
                         std::string_view expected_tokenizer_sha256 = {});

  TokenShard(TokenShard&& other) noexcept;
  TokenShard& operator=(TokenShard&& other) noexcept;
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;
  ~TokenShard();

  int64_t size() const { return size_; }  // N
  // The id at position i, unchecked: i must be in [0, N) (Open checked every id is < V).
  int token(int64_t i) const {
    return bytes_per_token_ == 2 ? static_cast<const uint16_t*>(tokens_)[i]
                                 : static_cast<int>(static_cast<const uint32_t*>(tokens_)[i]);
  }
  // Copies ids [begin, begin + out.size()) into out: the trainer's batch loader. Throws Error
  // when the range leaves [0, N).
  void Read(int64_t begin, std::span<int> out) const;

  int vocab_size() const { return vocab_size_; }
  int bytes_per_token() const { return bytes_per_token_; }
  // 0 for a stream of documents; T when the shard holds N/T sequences of exactly T tokens.
  int64_t record_length() const { return record_length_; }
  // 64 lowercase hex digits; empty when the writer did not know the tokenizer.
  const std::string& tokenizer_sha256() const { return tokenizer_sha256_; }
  const std::string& path() const { return path_; }

 private:
  TokenShard() = default;
  void Unmap();

  std::string path_;
  void* mapping_ = nullptr;  // the whole file, PROT_READ
  size_t mapping_bytes_ = 0;
  const void* tokens_ = nullptr;  // [N] uint16 or uint32, inside mapping_
  int64_t size_ = 0;
  int bytes_per_token_ = 2;
  int vocab_size_ = 0;
  int64_t record_length_ = 0;
  std::string tokenizer_sha256_;
};

// Writes `tokens` [N] as a shard at `path`, atomically (a temporary file in the same directory,
// fsync, rename): a reader sees the old file or the complete new one. Ids are stored as uint16
// when vocab_size <= 65536, else uint32. `tokenizer_sha256` is 64 hex digits or empty (unknown);
// `record_length` is 0 or a T that divides N. Throws Error for an id outside [0, vocab_size),
// a malformed hash, or a write failure (naming the file).
void WriteTokenShard(const std::string& path, std::span<const int> tokens, int vocab_size,
                     std::string_view tokenizer_sha256, int64_t record_length = 0);

// Writes `bytes` to `path` atomically, as WriteTokenShard does (data.json, tokenizer copies).
void WriteBytesAtomically(const std::string& path, std::string_view bytes);

// SHA-256 (FIPS 180-4) as 64 lowercase hex digits: of bytes in memory, and of a file's content
// (Throws Error naming the file when it cannot be read).
std::string Sha256Hex(std::string_view bytes);
std::string Sha256FileHex(const std::string& path);

}  // namespace mixattn
