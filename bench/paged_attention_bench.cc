// Decode attention over the paged KV cache: time per call and the effective bandwidth of the K/V
// bytes the kernel must read, next to this machine's DRAM read roofline at the same thread count.
//
// Legend: NH = query heads, KVH = KV heads, D = head dim, B = block tokens, C = context (cached
// positions per sequence), W = window (0 = full attention).
// Shape: a batch of 4 decodes (Q = 1 at position C - 1), NH = 8, KVH = 2, D = 64, bf16 KV, blocks
// of B = 16 or 64 tokens (8 or 32 KiB; a KV head's part of a block, which the kernel reads as one
// run, is half of that). K/V bytes a call must read: 4 sequences * min(C, W or C) keys * KVH * D *
// 2 (K and V) * 2 bytes
//   = 4 * 512 B per key: 8 MiB at C = 4K, 128 MiB at C = 64K, 1 MiB for W = 512 at any C.
// Cold cache: each call uses the next of enough independent batches (>= kColdBytes of K/V in all)
// that nothing is left in L3 from the previous use, as in a real model where every other layer's
// weights and KV pass through the cache between two decode steps of one layer. A sliding layer
// holds only the blocks of its window (leading blocks are freed, first_block > 0), as the engine's
// KV cache does.
//
// Run: ./paged_attention_bench [--benchmark_format=json]; OMP_NUM_THREADS sets the threads.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "core/arena.h"
#include "core/dtype.h"
#include "core/random.h"
#include "ops/paged_attention.h"

namespace mixattn::ops {
namespace {

constexpr int64_t kBatch = 4;
constexpr int64_t kQueryHeads = 8;                                   // NH
constexpr int64_t kKvHeads = 2;                                      // KVH
constexpr int64_t kHeadDim = 64;                                     // D
constexpr int64_t kElemBytes = 2;                                    // bf16
constexpr int64_t kKeyBytes = 2 * kKvHeads * kHeadDim * kElemBytes;  // K and V of one position
constexpr int64_t kColdBytes = int64_t{256} << 20;  // > 8x the 32 MiB L3 of this machine

// Batches of decode jobs over one shared pool, rotated through call after call.
class DecodeBatches {
 public:
  DecodeBatches(int64_t context, int64_t window, bool cold, bool huge_pages, int64_t block_tokens)
      : keys_per_sequence_(window > 0 ? std::min(context, window) : context) {
    const int64_t block_bytes = 2 * block_tokens * kKvHeads * kHeadDim * kElemBytes;
    const int64_t position = context - 1;  // the query's position
    const int64_t first_key = window > 0 ? std::max<int64_t>(0, position - window + 1) : 0;
    const int64_t first_block = first_key / block_tokens;
    const int64_t blocks_per_sequence = position / block_tokens + 1 - first_block;
    rotation_ = cold ? std::max<int64_t>(1, kColdBytes / bytes_per_call()) : 1;
    const int64_t sequences = rotation_ * kBatch;
    const int64_t pool_blocks = sequences * blocks_per_sequence;

    // Shuffled block ids, as a long-running pool hands them out.
    block_ids_.resize(static_cast<size_t>(pool_blocks));
    std::iota(block_ids_.begin(), block_ids_.end(), 0);
    Rng rng(42);
    for (size_t i = block_ids_.size(); i > 1; --i)
      std::swap(block_ids_[i - 1], block_ids_[rng.Below(i)]);

    // Allocated as the engine's KV pool is (kv/block_pool.cc), with or without huge pages.
    pool_ = Arena(static_cast<size_t>(pool_blocks * block_bytes), 64, huge_pages);
    auto* elems = reinterpret_cast<uint16_t*>(pool_.data());
    const auto num_elems = static_cast<int64_t>(pool_.size()) / kElemBytes;
    uint32_t state = 1;
    for (int64_t i = 0; i < num_elems; ++i) {  // small random bf16 values
      state = state * 1664525u + 1013904223u;
      elems[i] =
          F32ToBf16(static_cast<float>(static_cast<int32_t>(state >> 8) - (1 << 23)) * 0x1p-24f);
    }
    q_.resize(static_cast<size_t>(sequences * kQueryHeads * kHeadDim));
    for (float& x : q_) x = static_cast<float>(rng.Uniform() - 0.5);
    out_.resize(q_.size());

    jobs_.resize(static_cast<size_t>(sequences));
    for (int64_t s = 0; s < sequences; ++s) {
      AttentionJob& job = jobs_[static_cast<size_t>(s)];
      job.q = q_.data() + s * kQueryHeads * kHeadDim;      // [1, NH, D]
      job.out = out_.data() + s * kQueryHeads * kHeadDim;  // [1, NH, D]
      job.query_len = 1;
      job.q_start = position;
      job.window = window;
      PagedKvView& kv = job.kv;
      kv.pool_base = pool_.data();
      kv.block_bytes = block_bytes;
      kv.block_tokens = block_tokens;
      kv.kv_heads = kKvHeads;
      kv.head_dim = kHeadDim;
      kv.dtype = DType::kBF16;
      kv.block_ids = block_ids_.data() + s * blocks_per_sequence;  // logical first_block..
      kv.first_block = first_block;
      kv.num_blocks = blocks_per_sequence;
      kv.num_tokens = context;
    }
  }

  int64_t bytes_per_call() const { return kBatch * keys_per_sequence_ * kKeyBytes; }
  int64_t rotation() const { return rotation_; }

  // The next batch of kBatch jobs.
  std::span<const AttentionJob> Next() {
    const auto first = static_cast<size_t>(next_ * kBatch);
    next_ = (next_ + 1) % rotation_;
    return {jobs_.data() + first, static_cast<size_t>(kBatch)};
  }

 private:
  int64_t keys_per_sequence_;
  int64_t rotation_ = 1;
  int64_t next_ = 0;
  std::vector<int32_t> block_ids_;
  Arena pool_;              // never zero-filled by a constructor (filled once, above)
  std::vector<float> q_;    // [sequences, NH, D]
  std::vector<float> out_;  // [sequences, NH, D]
  std::vector<AttentionJob> jobs_;
};

// Arguments: context C, window W (0 = full), cold (1: K/V come from DRAM; 0: the same batch every
// call, so K/V that fit stay in cache and the kernel's compute speed shows), huge (1: the pool on
// transparent huge pages, as the engine allocates it; 0: on 4 KiB pages, for comparison), block B.
void BM_PagedAttentionDecode(benchmark::State& state) {
  DecodeBatches batches(state.range(0), state.range(1), state.range(2) != 0, state.range(3) != 0,
                        state.range(4));
  for (auto _ : state) {
    PagedAttention(batches.Next(), kQueryHeads);
    benchmark::ClobberMemory();
  }
  state.SetLabel(AttentionIsaName(BestAttentionIsa()));
  state.counters["threads"] = omp_get_max_threads();
  state.counters["kv_MiB"] = static_cast<double>(batches.bytes_per_call()) / (1 << 20);
  state.counters["kv_GB"] = benchmark::Counter(static_cast<double>(batches.bytes_per_call()) * 1e-9,
                                               benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_PagedAttentionDecode)
    ->ArgNames({"context", "window", "cold", "huge", "block"})
    ->ArgsProduct({{4096, 32768, 65536}, {0, 512}, {1, 0}, {1, 0}, {16, 32, 64, 128}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// The roofline: all OpenMP threads summing a kColdBytes buffer (each call reads it all once).
void BM_DramReadRoofline(benchmark::State& state) {
  const int64_t words = kColdBytes / 8;
  std::vector<uint64_t> buffer(static_cast<size_t>(words), 1);
  uint64_t total = 0;
  for (auto _ : state) {
    uint64_t sum = 0;
#pragma omp parallel for reduction(+ : sum) schedule(static)
    for (int64_t i = 0; i < words; ++i) sum += buffer[static_cast<size_t>(i)];
    total += sum;
  }
  benchmark::DoNotOptimize(total);
  state.counters["threads"] = omp_get_max_threads();
  state.counters["read_GB"] = benchmark::Counter(static_cast<double>(kColdBytes) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_DramReadRoofline)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace mixattn::ops
