// Attention over the paged KV cache: the engine's hot path for decode and chunked prefill.
//
// Legend: NH = query heads, KVH = KV heads, G = NH / KVH (query heads per KV head, the GQA
// group), D = head dim, B = block tokens, Q = a job's query_len, P = positions in the cache.
//
// Mask (the spec is CausalAttentionScalar in scalar_ops.h): the query at position p sees key j iff
//   j <= p  and  (window == 0 or p - j < window),
// scores are q.k / sqrt(D), and query head n reads KV head n / G.
#pragma once

#include <cstdint>
#include <span>

#include "ops/paged_kv.h"

namespace mixattn::ops {

// One attention job: `query_len` queries of one sequence at positions q_start .. q_start+Q-1
// (a decode step has Q = 1; a chunked-prefill chunk has Q = C), attending over `kv`, whose
// num_tokens >= q_start + Q: the chunk's own K/V are already written.
struct AttentionJob {
  const float* q = nullptr;  // [Q, NH, D] f32, RoPE already applied
  float* out = nullptr;      // [Q, NH, D] f32
  int64_t query_len = 0;     // Q
  int64_t q_start = 0;       // position of the first query
  PagedKvView kv;            // the owner layer's K/V of this sequence
  int64_t window = 0;        // 0 = full attention; else tokens a query sees, itself included
};

// Instruction sets the fast kernel is built for. All share one algorithm (a template over a thin
// layer of vector operations); PagedAttention runs the best one the CPU supports.
enum class AttentionIsa { kPortable, kAvx2, kAvx512 };

const char* AttentionIsaName(AttentionIsa isa);
bool AttentionIsaSupported(AttentionIsa isa);  // built in and runnable on this CPU
AttentionIsa BestAttentionIsa();

// Runs every job (many sequences of one layer in one call; the engine batches decodes this way),
// spreading work over OpenMP threads by (job, KV head, query tile). Reads only the blocks that
// intersect some query's window: a sliding layer's cost does not grow with context length.
// Online softmax (Milakov & Gimelshein 2018), one KV head's whole query group per K/V load.
void PagedAttention(std::span<const AttentionJob> jobs, int64_t query_heads);

// The same with a chosen instruction set (tests run every supported one against the reference).
void PagedAttention(std::span<const AttentionJob> jobs, int64_t query_heads, AttentionIsa isa);

// Plain scalar reference: same contract, double accumulation, no threads, obviously right.
void PagedAttentionScalar(std::span<const AttentionJob> jobs, int64_t query_heads);

}  // namespace mixattn::ops
