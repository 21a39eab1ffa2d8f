#include "train/token_shards.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/error.h"
#include "test_util.h"

namespace mixattn {
namespace {

namespace fs = std::filesystem;
using testing::ErrorMessage;
using ::testing::HasSubstr;
using testing::TempDir;

const std::string kSha(64, 'a');  // a well-formed tokenizer sha256 for the tests
const std::string kOtherSha(64, 'b');

std::string ReadBytes(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file << bytes;
}

std::vector<std::string> Listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  return names;
}

std::vector<int> AllTokens(const TokenShard& shard) {
  std::vector<int> tokens(static_cast<size_t>(shard.size()));
  shard.Read(0, tokens);
  return tokens;
}

TEST(TokenShardSha256Test, MatchesFips180Vectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // Crosses the 64-byte block boundary at every offset of the buffered path.
  EXPECT_EQ(Sha256Hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(TokenShardSha256Test, FileHashEqualsMemoryHash) {
  TempDir dir;
  std::string bytes;
  for (int i = 0; i < 200000; ++i) bytes += static_cast<char>(i * 31 + 7);
  WriteBytes(dir.file("blob"), bytes);
  EXPECT_EQ(Sha256FileHex(dir.file("blob")), Sha256Hex(bytes));
  EXPECT_THAT(ErrorMessage([&] { Sha256FileHex(dir.file("missing")); }),
              HasSubstr(dir.file("missing")));
}

TEST(TokenShardTest, RoundTripsUint16Ids) {
  TempDir dir;
  const std::vector<int> tokens = {1, 17, 8191, 0, 42, 2};
  WriteTokenShard(dir.file("train.bin"), tokens, 8192, kSha);
  EXPECT_EQ(fs::file_size(dir.file("train.bin")), 64u + 2u * tokens.size());
  const TokenShard shard = TokenShard::Open(dir.file("train.bin"), 8192, kSha);
  EXPECT_EQ(shard.size(), 6);
  EXPECT_EQ(shard.bytes_per_token(), 2);
  EXPECT_EQ(shard.vocab_size(), 8192);
  EXPECT_EQ(shard.record_length(), 0);
  EXPECT_EQ(shard.tokenizer_sha256(), kSha);
  EXPECT_EQ(shard.path(), dir.file("train.bin"));
  EXPECT_EQ(AllTokens(shard), tokens);
  EXPECT_EQ(shard.token(2), 8191);
  std::vector<int> middle(3);
  shard.Read(2, middle);
  EXPECT_EQ(middle, (std::vector<int>{8191, 0, 42}));
  // The write left only the shard, no temporary file.
  EXPECT_EQ(Listing(dir.path()), std::vector<std::string>{"train.bin"});
}

TEST(TokenShardTest, HeaderIsTheDocumentedLayout) {
  TempDir dir;
  WriteTokenShard(dir.file("s.bin"), std::vector<int>{258, 3}, 300, kSha);
  const std::string bytes = ReadBytes(dir.file("s.bin"));
  ASSERT_EQ(bytes.size(), 68u);
  EXPECT_EQ(bytes.substr(0, 8), "MXTOKENS");
  const auto u8 = [&](size_t i) { return static_cast<unsigned char>(bytes[i]); };
  EXPECT_EQ(u8(8), 1);    // version, little-endian u32
  EXPECT_EQ(u8(12), 2);   // bytes per token
  EXPECT_EQ(u8(16), 2);   // token count
  EXPECT_EQ(u8(24), 44);  // vocab 300 = 0x012C
  EXPECT_EQ(u8(25), 1);
  EXPECT_EQ(u8(32), 0xaa);  // sha256 raw bytes
  EXPECT_EQ(u8(64), 2);     // first id 258 = 0x0102, little-endian
  EXPECT_EQ(u8(65), 1);
}

TEST(TokenShardTest, LargeVocabUsesUint32Ids) {
  TempDir dir;
  const std::vector<int> tokens = {1, 65535, 65536, 69999, 2};
  WriteTokenShard(dir.file("big.bin"), tokens, 70000, "");
  EXPECT_EQ(fs::file_size(dir.file("big.bin")), 64u + 4u * tokens.size());
  const TokenShard shard = TokenShard::Open(dir.file("big.bin"));
  EXPECT_EQ(shard.bytes_per_token(), 4);
  EXPECT_EQ(shard.tokenizer_sha256(), "");  // unknown tokenizer
  EXPECT_EQ(AllTokens(shard), tokens);
}

TEST(TokenShardTest, Vocab65536StillFitsUint16) {
  TempDir dir;
  WriteTokenShard(dir.file("s.bin"), std::vector<int>{65535}, 65536, kSha);
  const TokenShard shard = TokenShard::Open(dir.file("s.bin"));
  EXPECT_EQ(shard.bytes_per_token(), 2);
  EXPECT_EQ(shard.token(0), 65535);
}

TEST(TokenShardTest, EmptyShardAndRecordLength) {
  TempDir dir;
  WriteTokenShard(dir.file("empty.bin"), std::vector<int>{}, 100, kSha);
  EXPECT_EQ(TokenShard::Open(dir.file("empty.bin")).size(), 0);

  WriteTokenShard(dir.file("records.bin"), std::vector<int>{1, 5, 2, 1, 6, 2}, 100, kSha, 3);
  EXPECT_EQ(TokenShard::Open(dir.file("records.bin")).record_length(), 3);
  EXPECT_THAT(ErrorMessage([&] {
                WriteTokenShard(dir.file("bad.bin"), std::vector<int>{1, 2, 3, 4}, 100, kSha, 3);
              }),
              HasSubstr("record length 3 does not divide the 4 tokens"));
}

TEST(TokenShardTest, MovesKeepTheMapping) {
  TempDir dir;
  WriteTokenShard(dir.file("s.bin"), std::vector<int>{4, 5, 6}, 10, kSha);
  TokenShard first = TokenShard::Open(dir.file("s.bin"));
  TokenShard second = std::move(first);
  EXPECT_EQ(second.token(1), 5);
  TokenShard third = TokenShard::Open(dir.file("s.bin"));
  third = std::move(second);
  EXPECT_EQ(third.token(2), 6);
}

TEST(TokenShardTest, WriteRejectsIdsOutsideTheVocabAndBadHashes) {
  TempDir dir;
  const std::string path = dir.file("s.bin");
  EXPECT_THAT(ErrorMessage([&] {
                WriteTokenShard(path, std::vector<int>{1, 10}, 10, kSha);
              }),
              HasSubstr("token 1 is id 10, outside the vocabulary [0, 10)"));
  EXPECT_THAT(ErrorMessage([&] { WriteTokenShard(path, std::vector<int>{-1}, 10, kSha); }),
              HasSubstr("id -1"));
  EXPECT_THAT(ErrorMessage([&] { WriteTokenShard(path, std::vector<int>{1}, 10, "abc"); }),
              HasSubstr("64 lowercase hex digits"));
  EXPECT_TRUE(Listing(dir.path()).empty()) << "a failed write leaves nothing behind";
}

TEST(TokenShardTest, WriteReplacesAnOldShardAtomically) {
  TempDir dir;
  WriteTokenShard(dir.file("s.bin"), std::vector<int>{1, 2, 3}, 10, kSha);
  WriteTokenShard(dir.file("s.bin"), std::vector<int>{7}, 10, kOtherSha);
  const TokenShard shard = TokenShard::Open(dir.file("s.bin"));
  EXPECT_EQ(AllTokens(shard), std::vector<int>{7});
  EXPECT_EQ(shard.tokenizer_sha256(), kOtherSha);
  EXPECT_EQ(Listing(dir.path()), std::vector<std::string>{"s.bin"});
}

class TokenShardValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteTokenShard(path_, std::vector<int>{1, 100, 200, 2}, 256, kSha);
    bytes_ = ReadBytes(path_);
  }
  // Writes a modified copy of the good shard and returns the error opening it.
  std::string OpenModified(const std::string& bytes, int expected_vocab = 0,
                           const std::string& expected_sha = "") {
    WriteBytes(path_, bytes);
    return ErrorMessage([&] { TokenShard::Open(path_, expected_vocab, expected_sha); });
  }

  TempDir dir_;
  const std::string path_ = dir_.file("shard.bin");
  std::string bytes_;
};

TEST_F(TokenShardValidationTest, BadMagic) {
  std::string bytes = bytes_;
  bytes[0] = 'X';
  const std::string message = OpenModified(bytes);
  EXPECT_THAT(message, HasSubstr(path_));
  EXPECT_THAT(message, HasSubstr("not a token shard"));
}

TEST_F(TokenShardValidationTest, TruncatedHeader) {
  const std::string message = OpenModified(bytes_.substr(0, 40));
  EXPECT_THAT(message, HasSubstr(path_));
  EXPECT_THAT(message, HasSubstr("truncated token shard: 40 bytes"));
}

TEST_F(TokenShardValidationTest, TruncatedTokens) {
  const std::string message = OpenModified(bytes_.substr(0, bytes_.size() - 1));
  EXPECT_THAT(message, HasSubstr(path_));
  EXPECT_THAT(message, HasSubstr("truncated token shard: header says 4 tokens of 2 bytes"));
}

TEST_F(TokenShardValidationTest, TrailingBytes) {
  EXPECT_THAT(OpenModified(bytes_ + "xy"), HasSubstr("corrupt token shard"));
}

TEST_F(TokenShardValidationTest, HugeTokenCountDoesNotOverflow) {
  std::string bytes = bytes_;
  for (int i = 16; i < 24; ++i) bytes[i] = '\xff';
  EXPECT_THAT(OpenModified(bytes), HasSubstr("truncated token shard"));
}

TEST_F(TokenShardValidationTest, UnsupportedVersionAndWidth) {
  std::string bytes = bytes_;
  bytes[8] = 9;
  EXPECT_THAT(OpenModified(bytes), HasSubstr("version 9 is not supported"));
  bytes = bytes_;
  bytes[12] = 3;
  EXPECT_THAT(OpenModified(bytes), HasSubstr("bytes_per_token is 3"));
}

TEST_F(TokenShardValidationTest, WrongVocab) {
  WriteBytes(path_, bytes_);
  EXPECT_NO_THROW(TokenShard::Open(path_, 256));
  const std::string message = OpenModified(bytes_, 8192);
  EXPECT_THAT(message, HasSubstr(path_));
  EXPECT_THAT(message, HasSubstr("vocab size 256, but the model expects 8192"));
}

TEST_F(TokenShardValidationTest, WrongTokenizer) {
  WriteBytes(path_, bytes_);
  EXPECT_NO_THROW(TokenShard::Open(path_, 0, kSha));
  const std::string message = OpenModified(bytes_, 0, kOtherSha);
  EXPECT_THAT(message, HasSubstr("made with tokenizer sha256 " + kSha));
  EXPECT_THAT(message, HasSubstr(kOtherSha));
}

TEST_F(TokenShardValidationTest, IdOutsideTheHeaderVocab) {
  std::string bytes = bytes_;
  bytes[64 + 2 * 2] = '\xff';  // token 2: 200 -> 255, still fine
  WriteBytes(path_, bytes);
  EXPECT_EQ(TokenShard::Open(path_).token(2), 255);
  bytes[64 + 2 * 2 + 1] = 1;  // token 2: 511 >= 256
  EXPECT_THAT(OpenModified(bytes), HasSubstr("token 2 is id 511, outside the vocabulary [0, 256)"));
}

TEST_F(TokenShardValidationTest, MissingFileAndDirectory) {
  EXPECT_THAT(ErrorMessage([&] { TokenShard::Open(dir_.file("nope.bin")); }),
              HasSubstr(dir_.file("nope.bin")));
  EXPECT_THAT(ErrorMessage([&] { TokenShard::Open(dir_.path()); }),
              HasSubstr("is a directory, expected a token shard"));
}

TEST_F(TokenShardValidationTest, ReadOutsideTheShard) {
  WriteBytes(path_, bytes_);
  const TokenShard shard = TokenShard::Open(path_);
  std::vector<int> out(3);
  EXPECT_THAT(ErrorMessage([&] { shard.Read(2, out); }),
              HasSubstr("cannot read tokens [2, 5): the shard has 4 tokens"));
  EXPECT_THAT(ErrorMessage([&] { shard.Read(-1, out); }), HasSubstr("cannot read tokens"));
}

}  // namespace
}  // namespace mixattn
