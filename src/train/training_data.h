// The trainer's view of a `mixattn data` directory: training samples drawn by index, and a fixed
// validation set.
//
// Sampling is stateless: sample number n of a run (counted over the whole run, every rank and
// micro-batch) is a pure function of (seed, n). So the data position a checkpoint must record is
// one counter, a resumed run draws exactly the samples an uninterrupted one would, and data-
// parallel ranks split a global batch by index without talking to each other.
//
// Sample n: with probability long_range_fraction (decided by the sample's own random stream) one
// of the synthetic long-range sequences of train_longrange.bin, else a window of T + 1
// consecutive tokens of train.bin starting at a uniformly random offset (documents are laid end
// to end with BOS/EOS between them, so a window may span two documents, as in GPT-style
// training). Inputs are the first T tokens, targets the next T. A long-range sequence of
// T' + 1 <= T + 1 tokens fills the first T' rows; the rest are padding (token 0, target -1:
// not scored).
//
// Validation: windows of val.bin spread evenly over the shard, the same for every run with the
// same T and window count, so validation losses of different runs compare.
//
// Legend: T = tokens per training sequence, N = tokens in a shard.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "train/token_shards.h"
#include "train/training_model.h"

namespace mixattn {

class TrainingData {
 public:
  // Opens DIR/train.bin, DIR/val.bin and, if present, DIR/train_longrange.bin, all of which must
  // hold ids of the same tokenizer and vocabulary `vocab_size`. Throws Error naming the file.
  static TrainingData Open(const std::string& dir, int vocab_size);

  // Fraction of samples drawn from train_longrange.bin. Defaults to its share of the training
  // tokens (what `mixattn data --long-range-ratio` asked for); 0 without the shard. Throws
  // Error for a fraction outside [0, 1] or a positive one without the shard.
  double long_range_fraction() const { return long_range_fraction_; }
  void set_long_range_fraction(double fraction);

  // Checks that samples of T tokens can be drawn: train.bin and val.bin need T + 1 tokens, and
  // long-range sequences must not be longer than T + 1 (they are never cut: the question and
  // answer sit at the end, the fact anywhere). Throws Error saying which T would fit.
  void CheckSequenceLength(int64_t length) const;

  // Writes sample `index` of the run with `seed` into row `row` of `batch` (inputs and targets
  // [B T], already sized).
  void FillSample(uint64_t seed, int64_t index, TrainingBatch& batch, int64_t row) const;

  // Windows [first, first + sequences) of `total` evenly spread windows of val.bin, as a batch
  // of `length` tokens each.
  TrainingBatch ValidationBatch(int64_t first, int64_t sequences, int64_t total,
                                int64_t length) const;

  const TokenShard& train() const { return train_; }
  const TokenShard& validation() const { return validation_; }
  const std::optional<TokenShard>& long_range() const { return long_range_; }
  const std::string& dir() const { return dir_; }

 private:
  TrainingData(std::string dir, TokenShard train, TokenShard validation,
               std::optional<TokenShard> long_range);

  std::string dir_;
  TokenShard train_;
  TokenShard validation_;
  std::optional<TokenShard> long_range_;
  double long_range_fraction_ = 0.0;
};

}  // namespace mixattn
