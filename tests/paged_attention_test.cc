// Tests of attention over the paged KV cache.
//
// Legend: T = tokens of a sequence, Q = a job's query_len, NH = query heads, KVH = KV heads,
// D = head dim, B = block tokens.
//
// Every pool here starts as all-NaN and every sequence's blocks get shuffled ids, so a kernel that
// reads a slot nobody wrote (past num_tokens, in a freed block, in the wrong block) puts NaN in
// its output. The chain of oracles: CausalAttentionScalar (whole sequence, contiguous K/V)
// == PagedAttentionScalar (paged, any job) == PagedAttention (fast, every supported ISA).
#include "ops/paged_attention.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "core/dtype.h"
#include "core/random.h"
#include "ops/scalar_ops.h"
#include "test_util.h"

namespace mixattn::ops {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct LayerShape {
  int64_t block_tokens;  // B
  int64_t head_dim;      // D
  int64_t query_heads;   // NH
  int64_t kv_heads;      // KVH
  int64_t window;        // 0 = full
  DType dtype;

  int64_t elem_bytes() const { return DTypeSize(dtype); }
  int64_t block_bytes() const { return 2 * block_tokens * kv_heads * head_dim * elem_bytes(); }
  int64_t BlocksFor(int64_t tokens) const { return (tokens + block_tokens - 1) / block_tokens; }
};

int64_t FirstVisibleKey(int64_t position, int64_t window) {
  return window > 0 ? std::max<int64_t>(0, position - window + 1) : 0;
}

// A whole sequence as contiguous tensors, and the reference answer over all of it.
struct SequenceData {
  int64_t tokens = 0;      // T
  std::vector<float> q;    // [T, NH, D]
  std::vector<float> k;    // [T, KVH, D] as stored in the pool (rounded to bf16 for a bf16 pool)
  std::vector<float> v;    // [T, KVH, D] likewise
  std::vector<float> out;  // [T, NH, D] CausalAttentionScalar(q, k, v)
};

float RoundTo(DType dtype, float x) { return dtype == DType::kBF16 ? Bf16ToF32(F32ToBf16(x)) : x; }

SequenceData MakeSequence(const LayerShape& shape, int64_t tokens, uint64_t seed) {
  Rng rng(seed);
  SequenceData seq;
  seq.tokens = tokens;
  const auto n_q = static_cast<size_t>(tokens * shape.query_heads * shape.head_dim);
  const auto n_kv = static_cast<size_t>(tokens * shape.kv_heads * shape.head_dim);
  seq.q.resize(n_q);
  seq.k.resize(n_kv);
  seq.v.resize(n_kv);
  // Uniform with unit variance (cheaper than normal draws); q has variance 4, so the scores
  // q.k / sqrt(D) have variance 4: peaked softmaxes that exercise the running max.
  auto draw = [&rng] { return static_cast<float>((2.0 * rng.Uniform() - 1.0) * std::sqrt(3.0)); };
  for (float& x : seq.q) x = 2.0f * draw();
  for (float& x : seq.k) x = RoundTo(shape.dtype, draw());
  for (float& x : seq.v) x = RoundTo(shape.dtype, draw());
  seq.out.resize(n_q);
  CausalAttentionScalar(seq.q.data(), seq.k.data(), seq.v.data(), tokens, shape.query_heads,
                        shape.kv_heads, shape.head_dim, shape.window, seq.out.data());
  return seq;
}

// Stores `count` K/V elements of `dtype` at `dst`: bf16 by F32ToBf16 (exact for values that are
// already bf16), f32 as is.
void StoreElements(std::byte* dst, const float* src, int64_t count, DType dtype) {
  for (int64_t i = 0; i < count; ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(dst + 4 * i, &src[i], 4);
    } else {
      const uint16_t bits = F32ToBf16(src[i]);
      std::memcpy(dst + 2 * i, &bits, 2);
    }
  }
}

void FillNaN(std::byte* dst, int64_t count, DType dtype) {
  const std::vector<float> nans(static_cast<size_t>(count), kNaN);
  StoreElements(dst, nans.data(), count, dtype);
}

// Blocks of one layer's pool in caller-provided memory, handed out in a shuffled order.
class TestPool {
 public:
  TestPool(const LayerShape& shape, int64_t num_blocks, std::byte* memory, uint64_t seed)
      : shape_(shape), memory_(memory), ids_(static_cast<size_t>(num_blocks)) {
    std::iota(ids_.begin(), ids_.end(), 0);
    Rng rng(seed);
    for (size_t i = ids_.size(); i > 1; --i) std::swap(ids_[i - 1], ids_[rng.Below(i)]);
    FillNaN(memory_, num_blocks * shape.block_bytes() / shape.elem_bytes(), shape.dtype);
  }

  std::byte* base() const { return memory_; }
  std::byte* block(int32_t id) const { return memory_ + id * shape_.block_bytes(); }

  // Takes blocks for positions [0, tokens) of `seq` and writes them in the layout paged_kv.h
  // documents (spelled out here, not through PagedKvView, so that the view's addressing is tested
  // too); returns the ids of logical blocks 0, 1, ... Slots past `tokens` in the last block stay
  // NaN.
  std::vector<int32_t> Write(const SequenceData& seq, int64_t tokens) {
    const int64_t B = shape_.block_tokens, KVH = shape_.kv_heads, D = shape_.head_dim;
    const int64_t elem = shape_.elem_bytes(), per_word = 4 / elem;  // P elements per word
    std::vector<int32_t> ids(static_cast<size_t>(shape_.BlocksFor(tokens)));
    for (int32_t& id : ids) id = ids_.at(next_++);
    for (int64_t p = 0; p < tokens; ++p) {
      std::byte* block_start = block(ids[static_cast<size_t>(p / B)]);
      const int64_t slot = p % B;
      for (int64_t h = 0; h < KVH; ++h) {
        // KV head h's part: K words [D / P, B], element d of slot s in word (d / P) * B + s;
        // then V [B, D].
        std::byte* part = block_start + h * 2 * B * D * elem;
        const float* k = &seq.k[static_cast<size_t>((p * KVH + h) * D)];
        for (int64_t d = 0; d < D; ++d) {
          StoreElements(part + ((d / per_word) * B + slot) * 4 + (d % per_word) * elem, k + d, 1,
                        shape_.dtype);
        }
        StoreElements(part + B * D * elem + slot * D * elem,
                      &seq.v[static_cast<size_t>((p * KVH + h) * D)], D, shape_.dtype);
      }
    }
    return ids;
  }

  // What a freed block that was handed to someone else may hold.
  void Poison(int32_t id) {
    FillNaN(block(id), shape_.block_bytes() / shape_.elem_bytes(), shape_.dtype);
  }

 private:
  LayerShape shape_;
  std::byte* memory_;
  std::vector<int32_t> ids_;
  size_t next_ = 0;
};

// One job as the engine would issue it: queries [q_start, q_start + Q) of `seq`, whose cache holds
// positions [0, q_start + Q). With `free_leading`, the blocks before the first one any query sees
// are dropped from the view and poisoned.
struct JobSpec {
  const SequenceData* seq;
  int64_t q_start;
  int64_t query_len;
  bool free_leading = true;
};

struct PreparedJob {
  JobSpec spec;
  std::vector<int32_t> ids;  // all logical blocks 0.. (the view skips the freed ones)
  int64_t first_block = 0;
  std::vector<float> out;  // [Q, NH, D]
};

int64_t BlocksNeeded(const LayerShape& shape, const std::vector<JobSpec>& specs) {
  int64_t blocks = 0;
  for (const JobSpec& s : specs) blocks += shape.BlocksFor(s.q_start + s.query_len);
  return blocks;
}

std::vector<PreparedJob> Prepare(const LayerShape& shape, const std::vector<JobSpec>& specs,
                                 TestPool& pool) {
  std::vector<PreparedJob> prepared;
  for (const JobSpec& spec : specs) {
    PreparedJob p;
    p.spec = spec;
    p.ids = pool.Write(*spec.seq, spec.q_start + spec.query_len);
    if (spec.free_leading) {
      p.first_block = FirstVisibleKey(spec.q_start, shape.window) / shape.block_tokens;
      for (int64_t b = 0; b < p.first_block; ++b) pool.Poison(p.ids[static_cast<size_t>(b)]);
    }
    p.out.assign(static_cast<size_t>(spec.query_len * shape.query_heads * shape.head_dim), kNaN);
    prepared.push_back(std::move(p));
  }
  return prepared;
}

AttentionJob MakeJob(const LayerShape& shape, const TestPool& pool, PreparedJob& p) {
  const int64_t row = shape.query_heads * shape.head_dim;
  AttentionJob job;
  job.q = p.spec.seq->q.data() + p.spec.q_start * row;
  job.out = p.out.data();
  job.query_len = p.spec.query_len;
  job.q_start = p.spec.q_start;
  job.window = shape.window;
  PagedKvView& kv = job.kv;
  kv.pool_base = pool.base();
  kv.block_bytes = shape.block_bytes();
  kv.block_tokens = shape.block_tokens;
  kv.kv_heads = shape.kv_heads;
  kv.head_dim = shape.head_dim;
  kv.dtype = shape.dtype;
  kv.block_ids = p.ids.data() + p.first_block;
  kv.first_block = p.first_block;
  kv.num_blocks = static_cast<int64_t>(p.ids.size()) - p.first_block;
  kv.num_tokens = p.spec.q_start + p.spec.query_len;
  return job;
}

std::vector<AttentionJob> MakeJobs(const LayerShape& shape, const TestPool& pool,
                                   std::vector<PreparedJob>& prepared) {
  std::vector<AttentionJob> jobs;
  for (PreparedJob& p : prepared) jobs.push_back(MakeJob(shape, pool, p));
  return jobs;
}

double MaxAbs(const std::vector<float>& x) {
  double m = 0;
  for (float v : x) m = std::max(m, std::fabs(double{v}));
  return m;
}

// Largest |a - b|; NaN anywhere counts as infinitely far.
double MaxAbsDiff(const float* a, const float* b, size_t n) {
  double worst = 0;
  for (size_t i = 0; i < n; ++i) {
    const double diff = std::fabs(double{a[i]} - double{b[i]});
    if (std::isnan(diff)) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, diff);
  }
  return worst;
}

std::vector<AttentionIsa> SupportedIsas() {
  std::vector<AttentionIsa> isas;
  for (AttentionIsa isa : {AttentionIsa::kPortable, AttentionIsa::kAvx2, AttentionIsa::kAvx512})
    if (AttentionIsaSupported(isa)) isas.push_back(isa);
  return isas;
}

std::string JobName(const JobSpec& s) {
  return "job T=" + std::to_string(s.seq->tokens) + " q_start=" + std::to_string(s.q_start) +
         " Q=" + std::to_string(s.query_len) + (s.free_leading ? " (leading blocks freed)" : "");
}

// Runs `specs` as one call of each kernel and checks the chain of oracles:
//   scalar == whole-sequence CausalAttentionScalar rows to 1e-6,
//   fast (every supported ISA) == scalar to 1e-5 (bf16: 1e-5 times the largest |out|).
void CheckAllKernels(const LayerShape& shape, const std::vector<JobSpec>& specs, uint64_t seed) {
  const int64_t blocks = BlocksNeeded(shape, specs);
  std::vector<std::byte> memory(static_cast<size_t>(blocks * shape.block_bytes()));
  TestPool pool(shape, blocks, memory.data(), seed);
  std::vector<PreparedJob> prepared = Prepare(shape, specs, pool);
  std::vector<AttentionJob> jobs = MakeJobs(shape, pool, prepared);
  const int64_t row = shape.query_heads * shape.head_dim;

  PagedAttentionScalar(jobs, shape.query_heads);
  std::vector<std::vector<float>> reference;
  for (const PreparedJob& p : prepared) {
    SCOPED_TRACE(JobName(p.spec));
    const float* whole = p.spec.seq->out.data() + p.spec.q_start * row;
    EXPECT_LE(MaxAbsDiff(p.out.data(), whole, p.out.size()), 1e-6);
    reference.push_back(p.out);
  }

  for (AttentionIsa isa : SupportedIsas()) {
    SCOPED_TRACE(std::string("isa ") + AttentionIsaName(isa));
    for (PreparedJob& p : prepared) std::fill(p.out.begin(), p.out.end(), kNaN);
    PagedAttention(jobs, shape.query_heads, isa);
    for (size_t j = 0; j < prepared.size(); ++j) {
      SCOPED_TRACE(JobName(prepared[j].spec));
      const double scale = shape.dtype == DType::kBF16 ? MaxAbs(reference[j]) : 1.0;
      EXPECT_LE(MaxAbsDiff(prepared[j].out.data(), reference[j].data(), reference[j].size()),
                1e-5 * scale);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// The sweep: odd shapes, every job kind, many jobs of different lengths in one call.

using SweepParam = std::tuple<int64_t, int64_t, std::pair<int64_t, int64_t>, int64_t, DType>;

class PagedAttentionSweep : public ::testing::TestWithParam<SweepParam> {};

TEST_P(PagedAttentionSweep, ScalarMatchesWholeSequenceAndFastMatchesScalar) {
  const auto& [block_tokens, head_dim, heads, window, dtype] = GetParam();
  const LayerShape shape{block_tokens, head_dim, heads.first, heads.second, window, dtype};
  const uint64_t seed = static_cast<uint64_t>(block_tokens * 1000003 + head_dim * 1009 +
                                              heads.first * 101 + heads.second * 11 + window) *
                            2 +
                        (dtype == DType::kBF16);

  std::vector<SequenceData> sequences;
  for (int64_t tokens : {1, 2, 7, 16, 17, 100, 300})
    sequences.push_back(MakeSequence(shape, tokens, seed + static_cast<uint64_t>(tokens)));

  // Per sequence: the whole prefill; decode steps (Q = 1) at the start, middle and end; chunks of
  // Q = 7 at the start, middle and end.
  std::vector<JobSpec> specs;
  for (const SequenceData& seq : sequences) {
    const int64_t T = seq.tokens;
    std::vector<std::pair<int64_t, int64_t>> kinds = {{0, T}, {0, 1}, {T / 2, 1}, {T - 1, 1}};
    if (T >= 7) kinds.insert(kinds.end(), {{0, 7}, {(T - 7) / 2, 7}, {T - 7, 7}});
    std::sort(kinds.begin(), kinds.end());
    kinds.erase(std::unique(kinds.begin(), kinds.end()), kinds.end());
    for (const auto& [q_start, query_len] : kinds) specs.push_back({&seq, q_start, query_len});
  }
  CheckAllKernels(shape, specs, seed);
}

std::string SweepName(const ::testing::TestParamInfo<SweepParam>& info) {
  const auto& [block_tokens, head_dim, heads, window, dtype] = info.param;
  return "B" + std::to_string(block_tokens) + "_D" + std::to_string(head_dim) + "_H" +
         std::to_string(heads.first) + "x" + std::to_string(heads.second) + "_W" +
         std::to_string(window) + "_" + (dtype == DType::kBF16 ? "bf16" : "f32");
}

INSTANTIATE_TEST_SUITE_P(PagedAttention, PagedAttentionSweep,
                         ::testing::Combine(::testing::Values<int64_t>(1, 4, 16, 32),
                                            ::testing::Values<int64_t>(8, 64, 128, 80),
                                            ::testing::Values(std::pair<int64_t, int64_t>{1, 1},
                                                              std::pair<int64_t, int64_t>{4, 1},
                                                              std::pair<int64_t, int64_t>{8, 2},
                                                              std::pair<int64_t, int64_t>{6, 3}),
                                            ::testing::Values<int64_t>(0, 1, 5, 16, 64),
                                            ::testing::Values(DType::kF32, DType::kBF16)),
                         SweepName);

// ------------------------------------------------------------------------------------------------
// Focused cases.

LayerShape SmallShape(int64_t window, DType dtype = DType::kBF16) {
  return LayerShape{4, 16, 4, 2, window, dtype};
}

TEST(PagedAttentionTest, ReportsInstructionSets) {
  std::string names;
  for (AttentionIsa isa : SupportedIsas()) names += std::string(AttentionIsaName(isa)) + " ";
  std::printf("paged attention kernels tested here: %sbest: %s\n", names.c_str(),
              AttentionIsaName(BestAttentionIsa()));
  EXPECT_TRUE(AttentionIsaSupported(AttentionIsa::kPortable));
  if (!AttentionIsaSupported(AttentionIsa::kAvx512))
    GTEST_SKIP() << "this CPU has no AVX-512F: the avx512 kernel was built but not run";
}

TEST(PagedAttentionTest, FreedLeadingBlocksChangeNothing) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const LayerShape shape = SmallShape(/*window=*/6, dtype);
    const SequenceData seq = MakeSequence(shape, 41, 7);
    // Decode at 40 and a chunk [30, 41): the first needed blocks are 35 / 4 = 8 and 25 / 4 = 6.
    const std::vector<JobSpec> specs = {
        {&seq, 40, 1, false}, {&seq, 40, 1, true}, {&seq, 30, 11, false}, {&seq, 30, 11, true}};
    std::vector<std::byte> memory(
        static_cast<size_t>(BlocksNeeded(shape, specs) * shape.block_bytes()));
    TestPool pool(shape, BlocksNeeded(shape, specs), memory.data(), 3);
    std::vector<PreparedJob> prepared = Prepare(shape, specs, pool);
    EXPECT_EQ(prepared[1].first_block, 8);
    EXPECT_EQ(prepared[3].first_block, 6);
    const std::vector<AttentionJob> jobs = MakeJobs(shape, pool, prepared);
    PagedAttention(jobs, shape.query_heads);
    for (const PreparedJob& p : prepared)
      for (float x : p.out) ASSERT_FALSE(std::isnan(x)) << JobName(p.spec);
    EXPECT_EQ(prepared[0].out, prepared[1].out) << "bit-identical with and without freed blocks";
    EXPECT_EQ(prepared[2].out, prepared[3].out);
  }
}

// Runs `specs` (a pool on its own mapping, blocks a whole number of pages) on every instruction set
// with the first `untouchable(job)` logical blocks of each job on pages with no access at all, so
// touching one crashes the test, and checks every output against the whole-sequence reference.
// Adds the number of blocks so protected to `protected_blocks`.
void CheckWithLeadingBlocksUnmapped(const LayerShape& shape, const SequenceData& seq,
                                    const std::vector<JobSpec>& specs, uint64_t pool_seed,
                                    const std::function<int64_t(const PreparedJob&)>& untouchable,
                                    int64_t& protected_blocks) {
  ASSERT_EQ(shape.block_bytes() % sysconf(_SC_PAGESIZE), 0);
  const int64_t blocks = BlocksNeeded(shape, specs);
  const auto bytes = static_cast<size_t>(blocks * shape.block_bytes());
  void* mapping = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mapping, MAP_FAILED);
  {
    TestPool pool(shape, blocks, static_cast<std::byte*>(mapping), pool_seed);
    std::vector<PreparedJob> prepared = Prepare(shape, specs, pool);
    for (const PreparedJob& p : prepared) {
      const int64_t leading = untouchable(p);
      for (int64_t b = 0; b < leading; ++b, ++protected_blocks) {
        ASSERT_EQ(mprotect(pool.block(p.ids[static_cast<size_t>(b)]),
                           static_cast<size_t>(shape.block_bytes()), PROT_NONE),
                  0);
      }
    }
    const std::vector<AttentionJob> jobs = MakeJobs(shape, pool, prepared);
    for (AttentionIsa isa : SupportedIsas()) {
      PagedAttention(jobs, shape.query_heads, isa);
      for (const PreparedJob& p : prepared) {
        const float* whole = seq.out.data() + p.spec.q_start * shape.query_heads * shape.head_dim;
        EXPECT_LE(MaxAbsDiff(p.out.data(), whole, p.out.size()), 1e-5 * MaxAbs(seq.out))
            << AttentionIsaName(isa) << " B=" << shape.block_tokens << " " << JobName(p.spec);
      }
    }
  }
  munmap(mapping, bytes);
}

// Freed blocks sit on pages with no access at all: touching one crashes the test.
TEST(PagedAttentionTest, FastKernelNeverTouchesFreedBlocks) {
  // B = 16, KVH = 2, D = 64, bf16: 8 KiB blocks, a whole number of pages.
  const LayerShape shape{16, 64, 8, 2, /*window=*/20, DType::kBF16};
  const SequenceData seq = MakeSequence(shape, 200, 11);
  int64_t protected_blocks = 0;
  CheckWithLeadingBlocksUnmapped(
      shape, seq, {{&seq, 199, 1}, {&seq, 150, 30}, {&seq, 100, 1}}, 5,
      [](const PreparedJob& p) { return p.first_block; }, protected_blocks);
  EXPECT_EQ(protected_blocks, 11 + 8 + 5);  // first needed keys 180, 131, 81
}

// A sliding layer reading a full owner's cache sees a view that still holds every block, the ones
// wholly before its window included: the kernel must skip those without touching them (so a
// sliding reader's cost does not grow with the owner's length). They sit on pages with no access.
TEST(PagedAttentionTest, FastKernelSkipsInViewBlocksBeforeTheWindow) {
  for (const int64_t block_tokens : {16, 64}) {
    // KVH = 2, D = 64, bf16: 8 KiB blocks at B = 16, 32 KiB at B = 64, whole numbers of pages.
    const LayerShape shape{block_tokens, 64, 8, 2, /*window=*/40, DType::kBF16};
    const SequenceData seq = MakeSequence(shape, 400, 17);
    int64_t protected_blocks = 0;
    CheckWithLeadingBlocksUnmapped(
        shape, seq, {{&seq, 399, 1, false}, {&seq, 300, 45, false}, {&seq, 170, 1, false}}, 7,
        [&](const PreparedJob& p) {
          EXPECT_EQ(p.first_block, 0) << "the view keeps the leading blocks";
          // Blocks whose last key is before the first key the job's first query sees.
          return FirstVisibleKey(p.spec.q_start, shape.window) / block_tokens;
        },
        protected_blocks);
    // First visible keys 360, 261, 131.
    EXPECT_EQ(protected_blocks, block_tokens == 16 ? 22 + 16 + 8 : 5 + 4 + 2);
  }
}

TEST(PagedAttentionTest, WindowLongerThanTheSequenceIsFullAttention) {
  const SequenceData full = MakeSequence(SmallShape(0), 23, 13);
  const LayerShape long_window = SmallShape(1000);
  const SequenceData windowed = MakeSequence(long_window, 23, 13);  // same data, same seed
  EXPECT_EQ(windowed.out, full.out);
  CheckAllKernels(long_window, {{&windowed, 0, 23}, {&windowed, 22, 1}, {&windowed, 10, 13}}, 17);
}

// One key: softmax weight 1, so every query head reads its KV head's v_0.
TEST(PagedAttentionTest, FirstTokenDecodeReturnsTheFirstValue) {
  for (int64_t window : {0, 1, 3}) {
    const LayerShape shape = SmallShape(window, DType::kF32);
    const SequenceData seq = MakeSequence(shape, 1, 19);
    std::vector<std::byte> memory(static_cast<size_t>(shape.block_bytes()));
    TestPool pool(shape, 1, memory.data(), 1);
    std::vector<PreparedJob> prepared = Prepare(shape, {{&seq, 0, 1}}, pool);
    const std::vector<AttentionJob> jobs = MakeJobs(shape, pool, prepared);
    for (AttentionIsa isa : SupportedIsas()) {
      PagedAttention(jobs, shape.query_heads, isa);
      const int64_t group = shape.query_heads / shape.kv_heads;
      for (int64_t n = 0; n < shape.query_heads; ++n)
        for (int64_t d = 0; d < shape.head_dim; ++d)
          EXPECT_FLOAT_EQ(prepared[0].out[static_cast<size_t>(n * shape.head_dim + d)],
                          seq.v[static_cast<size_t>((n / group) * shape.head_dim + d)])
              << AttentionIsaName(isa);
    }
  }
}

// The last block is partly written (num_tokens = 21 with B = 4 leaves 3 NaN slots, and with
// B = 16 leaves 11): nothing past num_tokens is read.
TEST(PagedAttentionTest, PartlyWrittenLastBlock) {
  for (int64_t block_tokens : {4, 16}) {
    for (int64_t window : {0, 5}) {
      LayerShape shape = SmallShape(window);
      shape.block_tokens = block_tokens;
      const SequenceData seq = MakeSequence(shape, 21, 23);
      CheckAllKernels(shape, {{&seq, 20, 1}, {&seq, 14, 7}, {&seq, 0, 21}, {&seq, 0, 3}}, 29);
    }
  }
}

// An f32 cache takes any head_dim (a word holds one element): D = 9 leaves an odd word at the end
// of each K column and a V row shorter than any vector.
TEST(PagedAttentionTest, OddHeadDimInF32) {
  for (int64_t block_tokens : {3, 16}) {
    const LayerShape shape{block_tokens, 9, 4, 2, 0, DType::kF32};
    const SequenceData seq = MakeSequence(shape, 40, 47);
    CheckAllKernels(shape, {{&seq, 39, 1}, {&seq, 0, 40}, {&seq, 20, 7}}, 53);
  }
}

// PagedKvView addresses K where TestPool::Write (which spells out paged_kv.h's layout) put it, and
// WriteKey / ReadKey and WriteValue / ReadValue move whole [KVH, D] vectors to and from the same
// places.
TEST(PagedAttentionTest, ViewAddressesTheDocumentedKeyLayout) {
  for (DType dtype : {DType::kBF16, DType::kF32}) {
    LayerShape shape = SmallShape(0, dtype);
    shape.block_tokens = 5;
    const int64_t tokens = 12, KVH = shape.kv_heads, D = shape.head_dim;
    const SequenceData seq = MakeSequence(shape, tokens, 41);
    std::vector<std::byte> memory(
        static_cast<size_t>(shape.BlocksFor(tokens) * shape.block_bytes()));
    TestPool pool(shape, shape.BlocksFor(tokens), memory.data(), 43);
    std::vector<PreparedJob> prepared = Prepare(shape, {{&seq, 0, tokens, false}}, pool);
    const PagedKvView view = MakeJob(shape, pool, prepared[0]).kv;
    std::vector<std::byte> expected(static_cast<size_t>(KVH * D * shape.elem_bytes()));
    std::vector<std::byte> read(expected.size());
    for (int64_t p = 0; p < tokens; ++p) {
      SCOPED_TRACE("position " + std::to_string(p) + " " + std::string(DTypeName(dtype)));
      StoreElements(expected.data(), &seq.k[static_cast<size_t>(p * KVH * D)], KVH * D, dtype);
      for (int64_t h = 0; h < KVH; ++h)
        for (int64_t d = 0; d < D; ++d)
          ASSERT_EQ(std::memcmp(view.key_element(p, h, d),
                                expected.data() + (h * D + d) * shape.elem_bytes(),
                                static_cast<size_t>(shape.elem_bytes())),
                    0)
              << "head " << h << " dim " << d;
      view.ReadKey(p, read.data());
      EXPECT_EQ(read, expected);
    }
    // WriteKey into a copy of the pool's memory wiped to NaN reproduces it byte for byte.
    std::vector<std::byte> copy = memory;
    FillNaN(copy.data(), static_cast<int64_t>(copy.size()) / shape.elem_bytes(), dtype);
    PagedKvView copy_view = view;
    copy_view.pool_base = copy.data();
    for (int64_t p = 0; p < tokens; ++p) {
      StoreElements(expected.data(), &seq.k[static_cast<size_t>(p * KVH * D)], KVH * D, dtype);
      copy_view.WriteKey(p, expected.data());
      StoreElements(expected.data(), &seq.v[static_cast<size_t>(p * KVH * D)], KVH * D, dtype);
      copy_view.WriteValue(p, expected.data());
      view.ReadValue(p, read.data());
      EXPECT_EQ(read, expected);
    }
    EXPECT_EQ(copy, memory);
  }
}

TEST(PagedAttentionTest, EmptyCallsAndEmptyJobsDoNothing) {
  PagedAttention({}, 8);
  PagedAttentionScalar({}, 8);
  AttentionJob empty;  // query_len 0: nothing to read or write
  PagedAttention({&empty, 1}, 8);
  PagedAttentionScalar({&empty, 1}, 8);
}

TEST(PagedAttentionTest, ChecksPreconditions) {
  const LayerShape shape = SmallShape(/*window=*/4);
  const SequenceData seq = MakeSequence(shape, 20, 31);
  std::vector<std::byte> memory(static_cast<size_t>(shape.BlocksFor(20) * shape.block_bytes()));
  TestPool pool(shape, shape.BlocksFor(20), memory.data(), 37);
  std::vector<PreparedJob> prepared = Prepare(shape, {{&seq, 16, 4}}, pool);  // first block 3
  const AttentionJob good = MakeJob(shape, pool, prepared[0]);
  using Kernel = void (*)(std::span<const AttentionJob>, int64_t);
  for (Kernel kernel : {Kernel{PagedAttention}, Kernel{PagedAttentionScalar}}) {
    kernel({&good, 1}, shape.query_heads);

    AttentionJob job = good;
    job.kv.num_tokens = 19;  // the chunk's own K/V are not all written
    EXPECT_NE(testing::ErrorMessage([&] {
                kernel({&job, 1}, shape.query_heads);
              }).find("num_tokens >= job.q_start + job.query_len"),
              std::string::npos);

    job = good;
    job.q_start = 11;  // would need position 8, in freed block 2
    job.query_len = 1;
    EXPECT_NE(testing::ErrorMessage([&] {
                kernel({&job, 1}, shape.query_heads);
              }).find(">= kv.first_block"),
              std::string::npos);

    EXPECT_NE(testing::ErrorMessage([&] {
                kernel({&good, 1}, 3);
              }).find("query_heads % kv.kv_heads == 0"),
              std::string::npos);
  }
}

}  // namespace
}  // namespace mixattn::ops
