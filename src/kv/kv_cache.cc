#include "kv/kv_cache.h"

#include <algorithm>
#include <limits>

#include "core/error.h"

namespace mixattn {
namespace {

constexpr int kSlotBits = 32;
constexpr int64_t kSlotMask = (int64_t{1} << kSlotBits) - 1;

SequenceId MakeId(uint32_t generation, uint32_t slot) {
  return static_cast<SequenceId>((static_cast<uint64_t>(generation) << kSlotBits) | slot) &
         std::numeric_limits<int64_t>::max();  // generation wraps within 31 bits: ids stay >= 0
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

KvCache::KvCache(const KvPlan& plan, KvBlockPool& pool)
    : plan_(plan), pool_(pool), owner_index_of_layer_(static_cast<size_t>(plan.num_layers()), -1) {
  // The pool was sized for some model; make sure it is this one (KVH * D * dtype per token).
  MIXATTN_CHECK(pool.block_bytes() ==
                pool.block_tokens() * plan.kv_bytes_per_token_slot(pool.dtype()));
  const std::vector<int>& owners = plan_.kv_owners();
  for (size_t k = 0; k < owners.size(); ++k) {
    for (int reader : plan_.kv_readers(owners[k])) {
      owner_index_of_layer_[static_cast<size_t>(reader)] = static_cast<int>(k);
    }
  }
}

KvCache::~KvCache() {
  for (Sequence& seq : slots_) {
    if (!seq.live) continue;
    for (OwnerTable& table : seq.tables) {
      for (int32_t block : table.block_ids) pool_.Free(block);
    }
  }
}

KvCache::Sequence& KvCache::Lookup(SequenceId sequence) {
  return const_cast<Sequence&>(static_cast<const KvCache*>(this)->Lookup(sequence));
}

const KvCache::Sequence& KvCache::Lookup(SequenceId sequence) const {
  // An unknown or released id is a bug in the engine's bookkeeping, not user input.
  MIXATTN_CHECK(contains(sequence));
  return slots_[static_cast<size_t>(sequence & kSlotMask)];
}

bool KvCache::contains(SequenceId sequence) const {
  if (sequence < 0) return false;
  const auto slot = static_cast<size_t>(sequence & kSlotMask);
  if (slot >= slots_.size()) return false;
  const Sequence& seq = slots_[slot];
  return seq.live && MakeId(seq.generation, static_cast<uint32_t>(slot)) == sequence;
}

bool KvCache::is_sliding_owner(size_t owner_index) const {
  return plan_.layer(plan_.kv_owners()[owner_index]).kind == AttentionKind::kSliding;
}

int KvCache::OwnerIndex(int layer) const {
  MIXATTN_CHECK(layer >= 0 && layer < plan_.num_layers());
  return owner_index_of_layer_[static_cast<size_t>(layer)];
}

SequenceId KvCache::AddSequence() {
  uint32_t slot;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    MIXATTN_CHECK(slots_.size() < static_cast<size_t>(kSlotMask));
    slot = static_cast<uint32_t>(slots_.size());
    slots_.emplace_back();
    slots_.back().tables.resize(plan_.kv_owners().size());
  }
  Sequence& seq = slots_[slot];
  seq.live = true;
  seq.length = 0;
  // A reused slot keeps its tables' capacity: no allocation for a recycled sequence.
  for (OwnerTable& table : seq.tables) {
    table.block_ids.clear();
    table.first_block = 0;
  }
  ++num_live_;
  return MakeId(seq.generation, slot);
}

KvCache::OwnerStep KvCache::PlanStep(const Sequence& seq, size_t owner_index, int64_t count) const {
  const OwnerTable& table = seq.tables[owner_index];
  const int64_t B = pool_.block_tokens();
  const int64_t end_block = table.first_block + static_cast<int64_t>(table.block_ids.size());
  OwnerStep step;
  int64_t keep_from_block = table.first_block;
  if (is_sliding_owner(owner_index)) {
    const int64_t window = plan_.layer(plan_.kv_owners()[owner_index]).window;
    // Oldest key the first new query (position T) sees; blocks wholly below it are dead.
    const int64_t oldest_needed = std::max<int64_t>(0, seq.length - window + 1);
    // oldest_needed <= T, so this never passes end_block == ceil(T / B).
    keep_from_block = std::max(keep_from_block, oldest_needed / B);
    step.frees = keep_from_block - table.first_block;
  }
  const int64_t new_end_block = CeilDiv(seq.length + count, B);
  step.allocs = new_end_block - std::max(end_block, keep_from_block);
  return step;
}

int64_t KvCache::BlocksNeededToAppend(SequenceId sequence, int64_t count) const {
  MIXATTN_CHECK(count >= 0);
  const Sequence& seq = Lookup(sequence);
  if (count == 0) return 0;
  int64_t net = 0;
  for (size_t k = 0; k < seq.tables.size(); ++k) {
    const OwnerStep step = PlanStep(seq, k, count);
    net += step.allocs - step.frees;
  }
  return net;
}

bool KvCache::Append(SequenceId sequence, int64_t count) {
  if (BlocksNeededToAppend(sequence, count) > pool_.num_free()) return false;
  if (count == 0) return true;
  Sequence& seq = Lookup(sequence);
  const size_t num_owners = seq.tables.size();
  // Every owner frees before any owner allocates: the check above counts frees as available.
  // Both passes read the length before the append, so each owner's step is computed as above.
  for (size_t k = 0; k < num_owners; ++k) {
    const OwnerStep step = PlanStep(seq, k, count);
    if (step.frees == 0) continue;
    OwnerTable& table = seq.tables[k];
    const auto dropped = table.block_ids.begin() + step.frees;
    for (auto it = table.block_ids.begin(); it != dropped; ++it) pool_.Free(*it);
    table.block_ids.erase(table.block_ids.begin(), dropped);  // a few ids: W/B + C/B at most
    table.first_block += step.frees;
    total_.sliding_blocks -= step.frees;
  }
  // After the frees, PlanStep reports frees == 0 and the allocations still to make.
  for (size_t k = 0; k < num_owners; ++k) {
    const OwnerStep step = PlanStep(seq, k, count);
    MIXATTN_CHECK(step.frees == 0);
    OwnerTable& table = seq.tables[k];
    for (int64_t i = 0; i < step.allocs; ++i) {
      const int32_t block = pool_.Allocate();
      MIXATTN_CHECK(block >= 0);  // guaranteed by the all-or-nothing check
      table.block_ids.push_back(block);
    }
    (is_sliding_owner(k) ? total_.sliding_blocks : total_.full_blocks) += step.allocs;
  }
  seq.length += count;
  total_.full_bytes = total_.full_blocks * pool_.block_bytes();
  total_.sliding_bytes = total_.sliding_blocks * pool_.block_bytes();
  return true;
}

void KvCache::Release(SequenceId sequence) {
  Sequence& seq = Lookup(sequence);
  for (size_t k = 0; k < seq.tables.size(); ++k) {
    OwnerTable& table = seq.tables[k];
    for (int32_t block : table.block_ids) pool_.Free(block);
    (is_sliding_owner(k) ? total_.sliding_blocks : total_.full_blocks) -=
        static_cast<int64_t>(table.block_ids.size());
    table.block_ids.clear();
    table.first_block = 0;
  }
  total_.full_bytes = total_.full_blocks * pool_.block_bytes();
  total_.sliding_bytes = total_.sliding_blocks * pool_.block_bytes();
  seq.live = false;
  seq.length = 0;
  ++seq.generation;
  free_slots_.push_back(static_cast<uint32_t>(sequence & kSlotMask));
  --num_live_;
}

int64_t KvCache::length(SequenceId sequence) const { return Lookup(sequence).length; }

ops::PagedKvView KvCache::View(SequenceId sequence, int layer) const {
  const Sequence& seq = Lookup(sequence);
  const int owner_index = OwnerIndex(layer);
  MIXATTN_CHECK(owner_index >= 0);
  const OwnerTable& table = seq.tables[static_cast<size_t>(owner_index)];
  ops::PagedKvView view;
  view.pool_base = pool_.base();  // writable: the caller writes K/V through the view
  view.block_bytes = pool_.block_bytes();
  view.block_tokens = pool_.block_tokens();
  view.kv_heads = pool_.kv_heads();
  view.head_dim = pool_.head_dim();
  view.dtype = pool_.dtype();
  view.block_ids = table.block_ids.data();
  view.first_block = table.first_block;
  view.num_blocks = static_cast<int64_t>(table.block_ids.size());
  view.num_tokens = seq.length;
  return view;
}

int64_t KvCache::BlocksHeld(SequenceId sequence, int layer) const {
  const Sequence& seq = Lookup(sequence);
  const int owner_index = OwnerIndex(layer);  // checks the layer's range
  if (!plan_.owns_kv(layer)) return 0;        // a reader holds nothing of its own
  return static_cast<int64_t>(seq.tables[static_cast<size_t>(owner_index)].block_ids.size());
}

KvCache::Usage KvCache::SequenceUsage(SequenceId sequence) const {
  const Sequence& seq = Lookup(sequence);
  Usage usage;
  for (size_t k = 0; k < seq.tables.size(); ++k) {
    const auto blocks = static_cast<int64_t>(seq.tables[k].block_ids.size());
    (is_sliding_owner(k) ? usage.sliding_blocks : usage.full_blocks) += blocks;
  }
  usage.full_bytes = usage.full_blocks * pool_.block_bytes();
  usage.sliding_bytes = usage.sliding_blocks * pool_.block_bytes();
  return usage;
}

KvCache::Usage KvCache::TotalUsage() const { return total_; }

int64_t KvCache::BlocksToReserve(int64_t context, int64_t chunk) const {
  return plan_.kv_blocks_per_sequence(context, pool_.block_tokens(), chunk);
}

}  // namespace mixattn
