#include "train/training_data.h"

#include <filesystem>
#include <span>

#include "core/error.h"
#include "core/random.h"

namespace mixattn {
namespace {

// The random stream of sample `index`: one splitmix64 output of the seed decorrelates nearby
// seeds, and indices are spread by the golden-ratio increment splitmix64 itself uses.
Rng SampleRng(uint64_t seed, int64_t index) {
  Rng mixer(seed);
  return Rng(mixer.NextU64() ^ (static_cast<uint64_t>(index) * 0xd1b54a32d192ed03ull));
}

}  // namespace

TrainingData::TrainingData(std::string dir, TokenShard train, TokenShard validation,
                           std::optional<TokenShard> long_range)
    : dir_(std::move(dir)),
      train_(std::move(train)),
      validation_(std::move(validation)),
      long_range_(std::move(long_range)) {
  if (long_range_) {
    const auto lr = static_cast<double>(long_range_->size());
    long_range_fraction_ = lr / (lr + static_cast<double>(train_.size()));
  }
}

TrainingData TrainingData::Open(const std::string& dir, int vocab_size) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir))
    Fail(dir, ": not a directory (make one with `mixattn data --in FILES --out ", dir, "`)");
  TokenShard train = TokenShard::Open((fs::path(dir) / "train.bin").string(), vocab_size);
  const std::string tokenizer = train.tokenizer_sha256();
  TokenShard validation =
      TokenShard::Open((fs::path(dir) / "val.bin").string(), vocab_size, tokenizer);
  std::optional<TokenShard> long_range;
  const fs::path long_range_path = fs::path(dir) / "train_longrange.bin";
  if (fs::exists(long_range_path)) {
    long_range = TokenShard::Open(long_range_path.string(), vocab_size, tokenizer);
    if (long_range->record_length() < 2)
      Fail(long_range_path.string(), ": holds no fixed-length sequences (record length ",
           long_range->record_length(), ")");
  }
  return TrainingData(dir, std::move(train), std::move(validation), std::move(long_range));
}

void TrainingData::set_long_range_fraction(double fraction) {
  if (!(fraction >= 0.0 && fraction <= 1.0))
    Fail("long-range fraction ", fraction, " is outside [0, 1]");
  if (fraction > 0.0 && !long_range_)
    Fail("a long-range fraction of ", fraction, " needs ", dir_,
         "/train_longrange.bin (make it with `mixattn data --long-range-ratio`)");
  long_range_fraction_ = fraction;
}

void TrainingData::CheckSequenceLength(int64_t length) const {
  if (length < 1) Fail("sequence length ", length, " must be at least 1");
  for (const TokenShard* shard : {&train_, &validation_}) {
    if (shard->size() < length + 1)
      Fail(shard->path(), " holds ", shard->size(), " tokens, fewer than the ", length + 1,
           " a training sequence of ", length, " tokens needs (use a smaller --seq)");
  }
  if (long_range_ && long_range_fraction_ > 0.0 && long_range_->record_length() > length + 1)
    Fail(long_range_->path(), " holds sequences of ", long_range_->record_length(),
         " tokens; train with --seq ", long_range_->record_length() - 1,
         " or more, or leave them out with --long-range-mix 0");
}

void TrainingData::FillSample(uint64_t seed, int64_t index, TrainingBatch& batch,
                              int64_t row) const {
  const int64_t t_len = batch.length;
  MIXATTN_CHECK(row >= 0 && row < batch.sequences &&
                static_cast<int64_t>(batch.inputs.size()) == batch.rows());
  int32_t* inputs = batch.inputs.data() + row * t_len;
  int32_t* targets = batch.targets.data() + row * t_len;
  Rng rng = SampleRng(seed, index);
  const bool long_range = long_range_fraction_ > 0.0 && rng.Uniform() < long_range_fraction_;
  const TokenShard& shard = long_range ? *long_range_ : train_;
  int64_t begin = 0, count = t_len + 1;
  if (long_range) {
    const int64_t record = long_range_->record_length();
    begin = static_cast<int64_t>(rng.Below(static_cast<uint64_t>(shard.size() / record))) * record;
    count = record;
  } else {
    begin = static_cast<int64_t>(rng.Below(static_cast<uint64_t>(shard.size() - t_len)));
  }
  for (int64_t t = 0; t < t_len; ++t) {
    const bool real = t + 1 < count;
    inputs[t] = t < count ? shard.token(begin + t) : 0;
    targets[t] = real ? shard.token(begin + t + 1) : -1;
  }
}

TrainingBatch TrainingData::ValidationBatch(int64_t first, int64_t sequences, int64_t total,
                                            int64_t length) const {
  MIXATTN_CHECK(first >= 0 && sequences >= 1 && first + sequences <= total);
  TrainingBatch batch{sequences, length,
                      std::vector<int32_t>(static_cast<size_t>(sequences * length)),
                      std::vector<int32_t>(static_cast<size_t>(sequences * length))};
  const int64_t span = validation_.size() - length - 1;  // last valid start
  std::vector<int> tokens(static_cast<size_t>(length + 1));
  for (int64_t s = 0; s < sequences; ++s) {
    const int64_t window = first + s;
    const int64_t start = total > 1 ? span * window / (total - 1) : 0;
    validation_.Read(start, tokens);
    for (int64_t t = 0; t < length; ++t) {
      batch.inputs[static_cast<size_t>(s * length + t)] = tokens[static_cast<size_t>(t)];
      batch.targets[static_cast<size_t>(s * length + t)] = tokens[static_cast<size_t>(t + 1)];
    }
  }
  return batch;
}

}  // namespace mixattn
