// Safetensors reader and writer: round trips, zero-copy mapping, atomic writes, and one test per
// validation rule (each failure must be a mixattn::Error naming the file, tensor and rule).
#include "model/safetensors.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <string>
#include <vector>

#include "core/error.h"

namespace mixattn {
namespace {

namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("mixattn_safetensors_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string PathOf(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

std::vector<std::byte> ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> bytes(chars.size());
  if (!chars.empty()) std::memcpy(bytes.data(), chars.data(), chars.size());
  return bytes;
}

void WriteFileBytes(const std::string& path, std::span<const std::byte> bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

// A file image: little-endian length, the header text as given, then `buffer_bytes` bytes.
std::vector<std::byte> MakeImage(const std::string& header, size_t buffer_bytes) {
  std::vector<std::byte> image(8 + header.size() + buffer_bytes, std::byte{0x5a});
  const uint64_t length = header.size();
  for (int i = 0; i < 8; ++i) image[i] = static_cast<std::byte>(length >> (8 * i));
  std::memcpy(image.data() + 8, header.data(), header.size());
  return image;
}

std::vector<std::byte> ImageWithLength(uint64_t length, size_t total_bytes) {
  std::vector<std::byte> image(total_bytes, std::byte{'{'});
  for (int i = 0; i < 8; ++i) image[i] = static_cast<std::byte>(length >> (8 * i));
  return image;
}

// Runs `action`, which must throw mixattn::Error whose message contains every one of `facts`.
void ExpectError(const std::function<void()>& action, std::initializer_list<std::string> facts) {
  try {
    action();
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const std::string& fact : facts) {
      EXPECT_NE(message.find(fact), std::string::npos)
          << "message '" << message << "' lacks '" << fact << "'";
    }
    return;
  }  // any other exception type escapes and fails the test
  ADD_FAILURE() << "no mixattn::Error thrown; expected one mentioning " << *facts.begin();
}

void ExpectParseError(const std::vector<std::byte>& image,
                      std::initializer_list<std::string> facts) {
  ExpectError([&] { ParseSafetensors(image, "model.safetensors"); }, facts);
}

// A one-tensor header: "w" of the given dtype, shape and offsets (as JSON fragments).
std::string OneTensorHeader(const std::string& dtype, const std::string& shape,
                            const std::string& offsets) {
  return R"({"w":{"dtype":)" + dtype + R"(,"shape":)" + shape + R"(,"data_offsets":)" + offsets +
         "}}";
}

template <typename T>
std::vector<T> ValuesOf(const SafetensorsTensor& tensor) {
  std::vector<T> values(static_cast<size_t>(tensor.num_elements));
  std::memcpy(values.data(), tensor.data, static_cast<size_t>(tensor.num_bytes()));
  return values;
}

TEST_F(SafetensorsTest, RoundTripF32AndBf16WithMetadata) {
  const std::vector<float> weight = {1.5f, -2.0f, 3.25f, 0.0f, -0.125f, 1e-3f};  // [2, 3]
  std::vector<uint16_t> bias;                                                    // [3]
  for (float v : {0.5f, -1.0f, 7.0f}) bias.push_back(F32ToBf16(v));
  const float scalar = 42.0f;  // []
  const std::string path = PathOf("model.safetensors");
  WriteSafetensors(path,
                   {{"layer.weight", DType::kF32, {2, 3}, weight.data()},
                    {"layer.bias", DType::kBF16, {3}, bias.data()},
                    {"scale", DType::kF32, {}, &scalar}},
                   {{"format", "pt"}, {"note", "héllo"}});

  const SafetensorsFile file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.path(), path);
  EXPECT_EQ(file.metadata(),
            (std::map<std::string, std::string>{{"format", "pt"}, {"note", "héllo"}}));
  ASSERT_EQ(file.tensors().size(), 3u);
  // Sorted by data offset, which is the order written.
  EXPECT_EQ(file.tensors()[0].name, "layer.weight");
  EXPECT_EQ(file.tensors()[1].name, "layer.bias");
  EXPECT_EQ(file.tensors()[2].name, "scale");

  const SafetensorsTensor& w = file.Get("layer.weight");
  EXPECT_EQ(w.dtype, DType::kF32);
  EXPECT_EQ(w.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(w.num_elements, 6);
  EXPECT_EQ(w.num_bytes(), 24);
  EXPECT_EQ(ValuesOf<float>(w), weight);

  const SafetensorsTensor& b = file.Get("layer.bias");
  EXPECT_EQ(b.dtype, DType::kBF16);
  EXPECT_EQ(b.shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(b.num_bytes(), 6);
  EXPECT_EQ(ValuesOf<uint16_t>(b), bias);
  EXPECT_EQ(Bf16ToF32(ValuesOf<uint16_t>(b)[2]), 7.0f);

  const SafetensorsTensor& s = file.Get("scale");
  EXPECT_TRUE(s.shape.empty());
  EXPECT_EQ(s.num_elements, 1);
  EXPECT_EQ(ValuesOf<float>(s), std::vector<float>{42.0f});
}

TEST_F(SafetensorsTest, EmptyTensorsAndEmptyFilesRoundTrip) {
  const float one = 1.0f;
  const std::string path = PathOf("empty.safetensors");
  WriteSafetensors(path, {{"a_empty", DType::kF32, {0, 3}, nullptr},
                          {"b_one", DType::kF32, {1}, &one},
                          {"c_empty", DType::kBF16, {4, 0}, nullptr}});
  const SafetensorsFile file = SafetensorsFile::Open(path);
  ASSERT_EQ(file.tensors().size(), 3u);
  EXPECT_EQ(file.Get("a_empty").num_elements, 0);
  EXPECT_EQ(file.Get("a_empty").num_bytes(), 0);
  EXPECT_EQ(file.Get("c_empty").shape, (std::vector<int64_t>{4, 0}));
  EXPECT_EQ(ValuesOf<float>(file.Get("b_one")), std::vector<float>{1.0f});

  const std::string none_path = PathOf("none.safetensors");
  WriteSafetensors(none_path, {});
  const SafetensorsFile none = SafetensorsFile::Open(none_path);
  EXPECT_TRUE(none.tensors().empty());
  EXPECT_TRUE(none.metadata().empty());
}

TEST_F(SafetensorsTest, OpenIsZeroCopyAndDataIsAligned) {
  std::vector<float> a(5, 1.0f), b(7, 2.0f);
  const std::string path = PathOf("zc.safetensors");
  WriteSafetensors(path, {{"a", DType::kF32, {5}, a.data()}, {"b", DType::kF32, {7}, b.data()}});
  const SafetensorsFile file = SafetensorsFile::Open(path);
  const std::span<const std::byte> mapped = file.mapped_bytes();
  EXPECT_EQ(mapped.size(), fs::file_size(path));
  for (const SafetensorsTensor& tensor : file.tensors()) {
    EXPECT_GE(tensor.data, mapped.data()) << tensor.name;
    EXPECT_LE(tensor.data + tensor.num_bytes(), mapped.data() + mapped.size()) << tensor.name;
  }
  // The writer pads the header so the buffer (and here the first tensor) is 8-byte aligned.
  EXPECT_EQ((file.Get("a").data - mapped.data()) % 8, 0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(file.Get("a").data) % 8, 0u);
}

TEST_F(SafetensorsTest, WriterPadsHeaderWithSpacesToEightBytes) {
  const float value = 3.0f;
  for (int name_length = 1; name_length <= 9; ++name_length) {
    const std::string path = PathOf("pad.safetensors");
    WriteSafetensors(path, {{std::string(name_length, 'x'), DType::kF32, {1}, &value}});
    const std::vector<std::byte> image = ReadFileBytes(path);
    uint64_t header_length = 0;
    for (int i = 0; i < 8; ++i) header_length |= static_cast<uint64_t>(image[i]) << (8 * i);
    EXPECT_EQ(header_length % 8, 0u) << name_length;
    EXPECT_EQ(image.size(), 8 + header_length + 4);
    const std::string header(reinterpret_cast<const char*>(image.data()) + 8, header_length);
    const size_t json_end = header.rfind('}');
    EXPECT_EQ(header.find_first_not_of(' ', json_end + 1), std::string::npos) << header;
  }
}

TEST_F(SafetensorsTest, FindAndGet) {
  const float value = 1.0f;
  const std::string path = PathOf("find.safetensors");
  WriteSafetensors(path, {{"present", DType::kF32, {1}, &value}});
  const SafetensorsFile file = SafetensorsFile::Open(path);
  EXPECT_NE(file.Find("present"), nullptr);
  EXPECT_EQ(file.Find("absent"), nullptr);
  ExpectError([&] { file.Get("absent"); }, {path, "tensor 'absent' not found"});
}

TEST_F(SafetensorsTest, MovedFileKeepsMappingAlive) {
  const std::vector<float> values = {1.0f, 2.0f};
  const std::string path = PathOf("move.safetensors");
  WriteSafetensors(path, {{"v", DType::kF32, {2}, values.data()}});
  SafetensorsFile first = SafetensorsFile::Open(path);
  const std::byte* data = first.Get("v").data;
  SafetensorsFile second = std::move(first);
  EXPECT_EQ(second.Get("v").data, data);
  EXPECT_EQ(ValuesOf<float>(second.Get("v")), values);
  SafetensorsFile third = SafetensorsFile::Open(path);
  third = std::move(second);
  EXPECT_EQ(ValuesOf<float>(third.Get("v")), values);
}

TEST_F(SafetensorsTest, TensorsAreSortedByOffsetNotName) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                             R"("b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  const std::vector<std::byte> image = MakeImage(header, 8);
  const SafetensorsContents contents = ParseSafetensors(image, "x");
  ASSERT_EQ(contents.tensors.size(), 2u);
  EXPECT_EQ(contents.tensors[0].name, "b");
  EXPECT_EQ(contents.tensors[1].name, "a");
  EXPECT_EQ(contents.tensors[0].data, image.data() + 8 + header.size());
}

TEST_F(SafetensorsTest, RejectsBadLengthField) {
  for (size_t size = 0; size < 8; ++size) {
    SCOPED_TRACE(size);
    ExpectParseError(std::vector<std::byte>(size),
                     {"model.safetensors", "shorter than the 8-byte"});
  }
  ExpectParseError(ImageWithLength(0, 16), {"header length is 0"});
  ExpectParseError(ImageWithLength(100'000'001, 16), {"100000001", "exceeds the limit"});
  ExpectParseError(ImageWithLength(~uint64_t{0}, 16), {"exceeds the limit"});
  ExpectParseError(ImageWithLength(9, 16), {"header length 9 runs past the end", "only 8 bytes"});
}

// One row per rule: a header (with a data buffer of `buffer_bytes`) and the facts its error
// message must mention.
struct BadHeaderCase {
  std::string rule;
  std::string header;
  size_t buffer_bytes;
  std::vector<std::string> facts;
};

TEST_F(SafetensorsTest, RejectsEveryInvalidHeader) {
  const std::vector<BadHeaderCase> cases = {
      {"malformed JSON", R"({"w":)", 0, {"not valid JSON"}},
      {"trailing garbage", R"({} x)", 0, {"not valid JSON"}},
      {"number overflow",
       OneTensorHeader(R"("F32")", "[1e400]", "[0,4]"),
       4,
       {"not valid JSON", "number overflow"}},
      {"invalid UTF-8", "{\"\xff\":1}", 0, {"not valid JSON"}},
      {"not an object", R"([1, 2])", 0, {"header must be a JSON object", "array"}},
      {"string header", R"("hi")", 0, {"header must be a JSON object"}},
      {"entry not an object", R"({"w": 5})", 0, {"tensor 'w'", "entry must be an object"}},
      {"missing dtype",
       R"({"w":{"shape":[1],"data_offsets":[0,4]}})",
       4,
       {"tensor 'w'", "missing key 'dtype'"}},
      {"missing shape",
       R"({"w":{"dtype":"F32","data_offsets":[0,4]}})",
       4,
       {"missing key 'shape'"}},
      {"missing offsets",
       R"({"w":{"dtype":"F32","shape":[1]}})",
       4,
       {"missing key 'data_offsets'"}},
      {"extra key",
       R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})",
       4,
       {"tensor 'w'", "unexpected key 'x'"}},
      {"dtype not a string",
       OneTensorHeader("7", "[1]", "[0,4]"),
       4,
       {"tensor 'w'", "dtype must be a string", "7"}},
      {"unsupported dtype",
       OneTensorHeader(R"("F16")", "[1]", "[0,2]"),
       2,
       {"tensor 'w'", "unsupported dtype \"F16\"", "supported: F32, BF16"}},
      {"shape not an array",
       OneTensorHeader(R"("F32")", "3", "[0,12]"),
       12,
       {"shape must be an array"}},
      {"negative dim",
       OneTensorHeader(R"("F32")", "[2,-1]", "[0,0]"),
       0,
       {"tensor 'w'", "shape[1] is -1", "non-negative"}},
      {"fractional dim",
       OneTensorHeader(R"("F32")", "[1.5]", "[0,4]"),
       4,
       {"shape[0] must be a non-negative integer", "1.5"}},
      {"string dim",
       OneTensorHeader(R"("F32")", R"(["2"])", "[0,8]"),
       8,
       {"shape[0] must be a non-negative integer", "\"2\""}},
      {"dim past int64",
       OneTensorHeader(R"("F32")", "[18446744073709551615]", "[0,4]"),
       4,
       {"shape[0] is 18446744073709551615", "int64"}},
      {"element count overflow",
       OneTensorHeader(R"("F32")", "[4294967296,4294967296]", "[0,4]"),
       4,
       {"tensor 'w'", "[4294967296, 4294967296]", "more bytes than fit in int64"}},
      {"byte count overflow",
       OneTensorHeader(R"("F32")", "[4611686018427387904]", "[0,4]"),
       4,
       {"more bytes than fit in int64"}},
      {"offsets not an array",
       OneTensorHeader(R"("F32")", "[1]", "4"),
       4,
       {"data_offsets must be an array of two"}},
      {"three offsets",
       OneTensorHeader(R"("F32")", "[1]", "[0,4,8]"),
       4,
       {"data_offsets must be an array of two", "got an array of 3 elements"}},
      {"negative offset",
       OneTensorHeader(R"("F32")", "[1]", "[-4,0]"),
       4,
       {"data_offsets begin is -4"}},
      {"float offset",
       OneTensorHeader(R"("F32")", "[1]", "[0,4.0]"),
       4,
       {"data_offsets end must be a non-negative integer"}},
      {"begin after end",
       OneTensorHeader(R"("F32")", "[0]", "[4,0]"),
       4,
       {"tensor 'w'", "[4, 0] has begin after end"}},
      {"end past buffer",
       OneTensorHeader(R"("F32")", "[2]", "[0,8]"),
       4,
       {"tensor 'w'", "end 8 is past the end of the data buffer (4 bytes)"}},
      {"huge end",
       OneTensorHeader(R"("F32")", "[1]", "[0,9223372036854775807]"),
       4,
       {"past the end of the data buffer"}},
      {"size mismatch",
       OneTensorHeader(R"("BF16")", "[2,2]", "[0,4]"),
       4,
       {"tensor 'w'", "hold 4 bytes", "[2, 2] of BF16 needs 8 bytes"}},
      {"overlap",
       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
       R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
       8,
       {"tensors 'a' and 'b' overlap"}},
      {"same range twice",
       R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
       R"("b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
       4,
       {"'a' and 'b' overlap"}},
      {"hole between tensors",
       R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
       R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
       12,
       {"hole in the data buffer", "[4, 8)", "before tensor 'b'"}},
      {"hole at start",
       OneTensorHeader(R"("F32")", "[1]", "[4,8]"),
       8,
       {"hole in the data buffer", "[0, 4)"}},
      {"unused tail",
       OneTensorHeader(R"("F32")", "[1]", "[0,4]"),
       6,
       {"2 unused bytes at the end of the data buffer"}},
      {"no tensors but data", R"({})", 3, {"3 unused bytes"}},
      {"duplicate tensor",
       R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
       R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
       8,
       {"duplicate tensor name 'w'"}},
      {"duplicate entry key",
       R"({"w":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
       4,
       {"duplicate key 'dtype'"}},
      {"duplicate metadata", R"({"__metadata__":{"k":"a","k":"b"}})", 0, {"duplicate key 'k'"}},
      {"metadata not an object",
       R"({"__metadata__":["a"]})",
       0,
       {"__metadata__ must be an object of strings"}},
      {"metadata value not a string",
       R"({"__metadata__":{"epoch":3}})",
       0,
       {"__metadata__ value of key 'epoch' must be a string", "3"}},
      {"deep nesting", R"({"w":{"shape":[[[1]]]}})", 0, {"nests deeper than 3 levels"}},
  };
  for (const BadHeaderCase& c : cases) {
    SCOPED_TRACE(c.rule);
    std::vector<std::byte> image = MakeImage(c.header, c.buffer_bytes);
    ExpectError([&] { ParseSafetensors(image, "model.safetensors"); }, {"model.safetensors"});
    for (const std::string& fact : c.facts) ExpectParseError(image, {fact});
  }
}

TEST_F(SafetensorsTest, AcceptsTrailingSpacesAndEmptyTensorBetweenTensors) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                             R"("b":{"dtype":"BF16","shape":[0],"data_offsets":[4,4]},)"
                             R"("c":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]}}     )";
  const SafetensorsContents contents = ParseSafetensors(MakeImage(header, 8), "x");
  ASSERT_EQ(contents.tensors.size(), 3u);
  EXPECT_EQ(contents.tensors[1].name, "b");
  EXPECT_EQ(contents.tensors[1].num_elements, 0);
}

TEST_F(SafetensorsTest, RejectsEveryTruncationOfAValidFile) {
  const std::vector<float> a = {1.0f, 2.0f, 3.0f};
  const uint16_t b = F32ToBf16(4.0f);
  const std::string path = PathOf("full.safetensors");
  WriteSafetensors(path, {{"a", DType::kF32, {3}, a.data()}, {"b", DType::kBF16, {1}, &b}},
                   {{"k", "v"}});
  const std::vector<std::byte> image = ReadFileBytes(path);
  ASSERT_NO_THROW(ParseSafetensors(image, "full"));
  for (size_t length = 0; length < image.size(); ++length) {
    SCOPED_TRACE(length);
    // A fresh, exactly sized copy so AddressSanitizer would catch a read past its end.
    const std::vector<std::byte> truncated(image.begin(), image.begin() + length);
    ExpectError([&] { ParseSafetensors(truncated, "cut.safetensors"); }, {"cut.safetensors"});
  }
}

TEST_F(SafetensorsTest, OpenReportsUnusableFiles) {
  ExpectError([&] { SafetensorsFile::Open(PathOf("missing.safetensors")); },
              {PathOf("missing.safetensors"), "cannot open", "No such file or directory"});
  ExpectError([&] { SafetensorsFile::Open(dir_.string()); }, {"is a directory"});

  const std::string empty_path = PathOf("empty.safetensors");
  WriteFileBytes(empty_path, {});
  ExpectError([&] { SafetensorsFile::Open(empty_path); }, {empty_path, "file is 0 bytes"});

  const std::string bad_path = PathOf("bad.safetensors");
  WriteFileBytes(bad_path, MakeImage(R"({"w": 1})", 0));
  ExpectError([&] { SafetensorsFile::Open(bad_path); }, {bad_path, "tensor 'w'"});

  if (::geteuid() != 0) {  // root reads files regardless of their mode
    const std::string locked_path = PathOf("locked.safetensors");
    WriteSafetensors(locked_path, {});
    ASSERT_EQ(::chmod(locked_path.c_str(), 0), 0);
    ExpectError([&] { SafetensorsFile::Open(locked_path); }, {"Permission denied"});
  }
}

TEST_F(SafetensorsTest, AtomicWriteLeavesNoTempFile) {
  const std::vector<float> values(100, 0.5f);
  WriteSafetensors(PathOf("only.safetensors"), {{"v", DType::kF32, {10, 10}, values.data()}});
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir_)) {
    names.push_back(entry.path().filename().string());
  }
  EXPECT_EQ(names, std::vector<std::string>{"only.safetensors"});
}

TEST_F(SafetensorsTest, WritingOverAnExistingFileReplacesIt) {
  const std::string path = PathOf("model.safetensors");
  const std::vector<float> old_values(64, 1.0f);
  WriteSafetensors(path, {{"old", DType::kF32, {64}, old_values.data()}}, {{"v", "1"}});
  const SafetensorsFile old_file = SafetensorsFile::Open(path);  // stays mapped meanwhile

  const float new_value = 2.0f;
  WriteSafetensors(path, {{"new", DType::kF32, {1}, &new_value}}, {{"v", "2"}});
  const SafetensorsFile new_file = SafetensorsFile::Open(path);
  EXPECT_EQ(new_file.Find("old"), nullptr);
  EXPECT_EQ(ValuesOf<float>(new_file.Get("new")), std::vector<float>{2.0f});
  EXPECT_EQ(new_file.metadata().at("v"), "2");
  // rename() replaced the directory entry; the old mapping still sees the old inode.
  EXPECT_EQ(ValuesOf<float>(old_file.Get("old")), old_values);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(SafetensorsTest, WriterRejectsInvalidItems) {
  const float value = 1.0f;
  const std::string path = PathOf("w.safetensors");
  ExpectError(
      [&] {
        WriteSafetensors(path, {{"__metadata__", DType::kF32, {1}, &value}});
      },
      {path, "tensor '__metadata__'", "reserved"});
  ExpectError(
      [&] {
        WriteSafetensors(path, {{"x", DType::kF32, {1}, &value}, {"x", DType::kF32, {1}, &value}});
      },
      {"tensor 'x'", "duplicate tensor name"});
  ExpectError(
      [&] {
        WriteSafetensors(path, {{"x", DType::kF32, {2, -3}, &value}});
      },
      {"tensor 'x'", "[2, -3]", "negative"});
  ExpectError(
      [&] {
        WriteSafetensors(path, {{"x", DType::kBF16, {3}, nullptr}});
      },
      {"tensor 'x'", "data is null", "needs 6 bytes"});
  ExpectError(
      [&] {
        WriteSafetensors(path, {{"x", DType::kF32, {1LL << 40, 1LL << 40}, &value}});
      },
      {"tensor 'x'", "larger than int64"});
  ExpectError(
      [&] {
        WriteSafetensors(path, {{"bad\xff", DType::kF32, {1}, &value}});
      },
      {"cannot encode the header", "UTF-8"});
  EXPECT_FALSE(fs::exists(path));

  const std::string no_dir_path = PathOf("no/such/dir/w.safetensors");
  ExpectError([&] { WriteSafetensors(no_dir_path, {}); },
              {no_dir_path, "cannot create temporary file", "No such file or directory"});
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 0);
}

}  // namespace
}  // namespace mixattn
