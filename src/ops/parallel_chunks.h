// Splitting a 1-D elementwise loop across OpenMP threads, shared by the forward (elementwise.cc)
// and backward (backward.cc) kernels. Internal to src/ops.
#ifndef MIXATTN_OPS_PARALLEL_CHUNKS_H_
#define MIXATTN_OPS_PARALLEL_CHUNKS_H_

#include <algorithm>
#include <cstdint>

namespace mixattn::ops {

// Below this many elements one thread finishes before an OpenMP fork/join (a few microseconds)
// pays off; above it the second core adds its own read bandwidth.
inline constexpr int64_t kParallelMinElements = int64_t{1} << 16;
// Unit of work for the 1-D kernels when split across threads (64 KiB of f32).
inline constexpr int64_t kChunkElements = int64_t{1} << 14;

// Runs kernel(begin, count) over [0, total) in chunks, on all threads when total is large.
template <typename Kernel>
void ForChunks(int64_t total, const Kernel& kernel) {
  if (total < kParallelMinElements) {
    kernel(0, total);
    return;
  }
  const int64_t chunks = (total + kChunkElements - 1) / kChunkElements;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunkElements;
    kernel(begin, std::min(kChunkElements, total - begin));
  }
}

}  // namespace mixattn::ops

#endif  // MIXATTN_OPS_PARALLEL_CHUNKS_H_
