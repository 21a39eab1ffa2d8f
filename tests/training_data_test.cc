#include "train/training_data.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include "test_util.h"

namespace mixattn {
namespace {

using testing::ErrorMessage;
using ::testing::HasSubstr;
using testing::TempDir;

constexpr int kVocab = 50;

// train.bin holds 0, 1, 2, ... (mod kVocab) so a window's position shows in its first id;
// val.bin the same from 7; train_longrange.bin `records` sequences of `record` tokens, each filled
// with its index + 10.
void WriteShards(const TempDir& dir, int64_t train_tokens, int64_t records, int64_t record) {
  std::vector<int> train(static_cast<size_t>(train_tokens)), val(300);
  for (size_t i = 0; i < train.size(); ++i) train[i] = static_cast<int>(i % kVocab);
  for (size_t i = 0; i < val.size(); ++i) val[i] = static_cast<int>((i + 7) % kVocab);
  WriteTokenShard(dir.file("train.bin"), train, kVocab, "");
  WriteTokenShard(dir.file("val.bin"), val, kVocab, "");
  if (records > 0) {
    std::vector<int> long_range;
    for (int64_t r = 0; r < records; ++r)
      long_range.insert(long_range.end(), static_cast<size_t>(record), static_cast<int>(r + 10));
    WriteTokenShard(dir.file("train_longrange.bin"), long_range, kVocab, "", record);
  }
}

TrainingBatch EmptyBatch(int64_t sequences, int64_t length) {
  return {sequences, length, std::vector<int32_t>(static_cast<size_t>(sequences * length)),
          std::vector<int32_t>(static_cast<size_t>(sequences * length))};
}

TEST(TrainingDataTest, SamplesAreNextTokenWindowsAndDependOnlyOnSeedAndIndex) {
  TempDir dir;
  WriteShards(dir, 1000, 0, 0);
  const TrainingData data = TrainingData::Open(dir.path(), kVocab);
  EXPECT_EQ(data.long_range_fraction(), 0.0);
  TrainingBatch a = EmptyBatch(2, 16), b = EmptyBatch(2, 16);
  data.FillSample(3, 41, a, 0);
  data.FillSample(3, 41, b, 1);  // same sample, other row
  data.FillSample(3, 42, a, 1);
  for (int t = 0; t < 16; ++t) {
    EXPECT_EQ(a.inputs[static_cast<size_t>(t)], b.inputs[static_cast<size_t>(16 + t)]);
    EXPECT_EQ(a.targets[static_cast<size_t>(t)], (a.inputs[static_cast<size_t>(t)] + 1) % kVocab);
    if (t > 0) {
      EXPECT_EQ(a.inputs[static_cast<size_t>(t)],
                (a.inputs[static_cast<size_t>(t - 1)] + 1) % kVocab);
    }
  }
  // Different indices and seeds start elsewhere (windows of 1000 tokens; collisions are rare).
  std::set<int> starts;
  for (int64_t index = 0; index < 20; ++index) {
    TrainingBatch one = EmptyBatch(1, 16);
    data.FillSample(3, index, one, 0);
    starts.insert(one.inputs[0]);
  }
  EXPECT_GT(starts.size(), 10u);
}

TEST(TrainingDataTest, LongRangeSequencesArePaddedNeverCut) {
  TempDir dir;
  WriteShards(dir, 1000, 4, 9);  // 36 long-range tokens against 1000: fraction 36/1036
  TrainingData data = TrainingData::Open(dir.path(), kVocab);
  EXPECT_NEAR(data.long_range_fraction(), 36.0 / 1036.0, 1e-12);
  data.set_long_range_fraction(1.0);
  data.CheckSequenceLength(8);
  EXPECT_THAT(ErrorMessage([&] { data.CheckSequenceLength(7); }), HasSubstr("--seq 8 or more"));
  TrainingBatch batch = EmptyBatch(1, 12);
  data.FillSample(1, 5, batch, 0);
  const int id = batch.inputs[0];
  EXPECT_GE(id, 10);
  EXPECT_LT(id, 14);
  for (int t = 0; t < 12; ++t) {
    EXPECT_EQ(batch.inputs[static_cast<size_t>(t)], t < 9 ? id : 0) << t;
    EXPECT_EQ(batch.targets[static_cast<size_t>(t)], t < 8 ? id : -1) << t;
  }
  EXPECT_THAT(ErrorMessage([&] { data.set_long_range_fraction(1.5); }),
              HasSubstr("outside [0, 1]"));
}

TEST(TrainingDataTest, ValidationWindowsDoNotDependOnHowTheBatchIsSplit) {
  TempDir dir;
  WriteShards(dir, 1000, 0, 0);
  const TrainingData data = TrainingData::Open(dir.path(), kVocab);
  const TrainingBatch whole = data.ValidationBatch(0, 4, 8, 10);
  const TrainingBatch second_half = data.ValidationBatch(2, 2, 8, 10);
  for (size_t i = 0; i < second_half.inputs.size(); ++i) {
    EXPECT_EQ(second_half.inputs[i], whole.inputs[20 + i]);
    EXPECT_EQ(second_half.targets[i], whole.targets[20 + i]);
  }
  EXPECT_EQ(whole.inputs[0], 7);  // the first window starts at the shard's start
}

TEST(TrainingDataTest, RejectsDataThatCannotServe) {
  TempDir dir;
  WriteShards(dir, 20, 0, 0);
  const TrainingData data = TrainingData::Open(dir.path(), kVocab);
  EXPECT_THAT(ErrorMessage([&] { data.CheckSequenceLength(20); }),
              HasSubstr("fewer than the 21 a training sequence of 20 tokens needs"));
  EXPECT_THAT(ErrorMessage([&] { TrainingData::Open(dir.path(), kVocab + 1); }),
              HasSubstr("vocab size"));
  TempDir empty;
  EXPECT_THAT(ErrorMessage([&] { TrainingData::Open(empty.file("missing"), kVocab); }),
              HasSubstr("not a directory"));
  TrainingData no_long_range = TrainingData::Open(dir.path(), kVocab);
  EXPECT_THAT(ErrorMessage([&] { no_long_range.set_long_range_fraction(0.5); }),
              HasSubstr("train_longrange.bin"));
}

}  // namespace
}  // namespace mixattn
