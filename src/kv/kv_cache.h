// The KV cache: per-sequence, per-owner block tables over one KvBlockPool.
//
// Legend: T = a sequence's length (tokens written), B = block_tokens, W = a sliding owner's window,
// C = the most tokens one Append adds (the prefill chunk).
//
// Only owning layers (KvPlan::kv_owners) allocate blocks; a layer that reads another layer's K/V
// holds nothing and reads its owner's blocks through the owner's view. Full and sliding owners
// draw from the same pool.
//
// Block table of one owner: logical block l holds positions l*B .. l*B + B-1; the table stores the
// pool ids of logical blocks first_block .. first_block + size - 1, always ending at the block of
// position T-1 (so size == ceil(T/B) - first_block). A full owner never drops a block
// (first_block == 0). A sliding owner drops, at the start of every Append, each block wholly below
// T - W + 1: the query at position T (the first one the new chunk brings) sees keys T-W+1 .. T,
// and every later query sees only later keys. While it writes a chunk [T, T+n) it therefore holds
// the W + n - 1 positions T-W+1 .. T+n-1, i.e. at most ceil((W + C - 2) / B) + 1 blocks, which is
// KvPlan::kv_blocks_held — the very number admission reserves (BlocksToReserve). Freeing before
// allocating is what keeps the peak at W + C tokens rather than vLLM's allocate-then-free
// T + C (research/inference-anchors.md, section 2a).
#pragma once

#include <cstdint>
#include <vector>

#include "kv/block_pool.h"
#include "model/kv_plan.h"
#include "ops/paged_kv.h"

namespace mixattn {

// A handle to one sequence of a KvCache. It encodes a slot and a generation, so a released id is
// never mistaken for the sequence that later reuses its slot.
using SequenceId = int64_t;

class KvCache {
 public:
  // The pool's block size must match the plan's K/V shape (B * kv_bytes_per_token_slot). The cache
  // copies the plan and keeps a reference to the pool, which must outlive it. One pool per cache.
  KvCache(const KvPlan& plan, KvBlockPool& pool);
  ~KvCache();  // returns every block still held to the pool
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  // A new, empty sequence (0 tokens, no blocks).
  SequenceId AddSequence();

  // Makes room for `count` more tokens of `sequence` (positions T .. T+count-1) in every owner:
  // first frees, for each sliding owner, every block wholly below T - W + 1, then allocates the
  // blocks the new positions need. All or nothing: returns false and changes nothing (tables,
  // length, pool) if the pool lacks blocks. On success the length becomes T + count and the caller
  // writes the K/V of those positions through View(). count == 0 is a no-op that returns true.
  bool Append(SequenceId sequence, int64_t count);
  // The change in the pool's num_used that Append(sequence, count) would make: blocks allocated
  // minus blocks freed (negative when a decode step frees more than it takes). Append succeeds iff
  // this is <= pool.num_free().
  int64_t BlocksNeededToAppend(SequenceId sequence, int64_t count) const;
  // Frees every block of `sequence` and forgets it; its id becomes invalid.
  void Release(SequenceId sequence);

  bool contains(SequenceId sequence) const;   // false for released or never-issued ids
  int64_t length(SequenceId sequence) const;  // T
  int64_t num_sequences() const { return num_live_; }

  // The blocks `layer` attends over for `sequence`: its owner's view (a reader gets exactly the
  // view of the layer it reads). Valid until the next Append or Release of this sequence.
  ops::PagedKvView View(SequenceId sequence, int layer) const;

  // ---- Accounting, exact, from the block tables ----
  // Blocks `layer` itself holds for `sequence`: 0 for a reader.
  int64_t BlocksHeld(SequenceId sequence, int layer) const;
  struct Usage {
    int64_t full_blocks = 0;
    int64_t sliding_blocks = 0;
    int64_t full_bytes = 0;     // full_blocks * block_bytes
    int64_t sliding_bytes = 0;  // sliding_blocks * block_bytes
    int64_t blocks() const { return full_blocks + sliding_blocks; }
    int64_t bytes() const { return full_bytes + sliding_bytes; }
    bool operator==(const Usage&) const = default;
  };
  Usage SequenceUsage(SequenceId sequence) const;
  Usage TotalUsage() const;  // over all live sequences; kept as running counters, O(1)

  // Blocks one sequence of `context` tokens, appended in chunks of at most `chunk` tokens, can hold
  // at its peak: KvPlan::kv_blocks_per_sequence at this pool's block size. Admission reserves
  // exactly this, so the capacity the planner reports (KvPlan::max_sequences_in_blocks) is what
  // the engine admits.
  int64_t BlocksToReserve(int64_t context, int64_t chunk) const;

  const KvPlan& plan() const { return plan_; }
  const KvBlockPool& pool() const { return pool_; }
  int64_t block_tokens() const { return pool_.block_tokens(); }

 private:
  struct OwnerTable {
    std::vector<int32_t> block_ids;  // pool ids of logical blocks first_block ..
    int64_t first_block = 0;
  };
  struct Sequence {
    uint32_t generation = 0;
    bool live = false;
    int64_t length = 0;
    std::vector<OwnerTable> tables;  // [num owners], in kv_owners() order
  };
  // What Append(count) does to one owner: drop `frees` blocks from the front, add `allocs`.
  struct OwnerStep {
    int64_t frees = 0;
    int64_t allocs = 0;
  };

  Sequence& Lookup(SequenceId sequence);
  const Sequence& Lookup(SequenceId sequence) const;
  OwnerStep PlanStep(const Sequence& seq, size_t owner_index, int64_t count) const;
  bool is_sliding_owner(size_t owner_index) const;
  int OwnerIndex(int layer) const;  // index into tables of `layer`'s owner

  KvPlan plan_;
  KvBlockPool& pool_;
  std::vector<int> owner_index_of_layer_;  // [num_layers] index of the layer's owner in tables
  std::vector<Sequence> slots_;            // indexed by the low 32 bits of a SequenceId
  std::vector<uint32_t> free_slots_;       // slots of released sequences, reused first
  int64_t num_live_ = 0;
  Usage total_;
};

}  // namespace mixattn
