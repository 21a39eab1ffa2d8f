// The engine: continuous batching over the paged KV cache.
//
// Requests join and leave between steps. Each Step() admits waiting requests, builds one batch
// (every decoding request's next token first, then chunked-prefill pieces of prompts up to the
// step's token budget), runs the model once, samples, and reports new text and finished requests.
//
// Admission uses the planner's own per-request block need (KvPlan::kv_blocks_per_sequence via
// KvCache::BlocksToReserve), so the capacity `mixattn plan` reports is what the engine admits.
// With Admission::kReserveFull a request is admitted only if its whole-life need fits beside the
// reservations of the running ones, so it never runs out of blocks. With kOptimistic a request is
// admitted once its first chunk fits; when blocks then run out, the newest running request is
// preempted: its blocks are freed and it goes back to the front of the queue, to be recomputed
// from its prompt plus the tokens it already produced (its sampler state is kept, so its output
// is the same as if it had never been preempted).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "engine/model_runner.h"
#include "engine/sampler.h"
#include "kv/block_pool.h"
#include "kv/kv_cache.h"
#include "tokenizer/tokenizer.h"

namespace mixattn {

using RequestId = int64_t;

struct GenerationRequest {
  std::vector<int> prompt;  // token ids, at least one
  SamplingParams sampling;
  int64_t max_tokens = 256;       // tokens to generate at most (>= 1)
  std::vector<std::string> stop;  // stop strings (need a tokenizer); not part of the output
  bool stop_at_eos = true;
};

enum class FinishReason { kNone, kStop, kLength, kCancelled };
const char* FinishReasonName(FinishReason reason);  // "stop", "length", "cancelled"

struct EngineEvent {
  RequestId request = 0;
  std::vector<int> tokens;  // tokens produced this step (0 or 1)
  std::string text;         // new complete text (empty without a tokenizer)
  FinishReason finish = FinishReason::kNone;
};

// KV block size in tokens. A decode step reads each KV head's part of a block (2 * B * D
// elements, 16 KiB at B = 64, D = 64, bf16) as one run, and DRAM streams long runs faster than
// scattered short ones: `paged_attention_bench` (decode at 32K, 2 threads, cold) moved 16 GB/s
// at B = 16, 17 at 32, 22 at 64 and 24-26 at 128 in one run. 64 keeps most of that while a
// short request still wastes at most 63 slots per owning layer.
constexpr int64_t kDefaultBlockTokens = 64;

struct EngineOptions {
  int64_t kv_memory_bytes = int64_t{1} << 30;
  int64_t block_tokens = kDefaultBlockTokens;
  int64_t prefill_chunk = 256;     // most prompt tokens of one request per step
  int64_t max_batch_tokens = 512;  // most tokens (decodes + prefill) per step
  int64_t max_running = 64;        // most requests in the batch
  DType weights_dtype = DType::kBF16;
  DType kv_dtype = DType::kBF16;
  enum class Admission { kReserveFull, kOptimistic } admission = Admission::kReserveFull;
  // Every matmul row through the small-batch kernel, whose per-row sums run in the same order
  // whatever the batch (ops::LargeBatches::kRowInvariant): a request's output is then bit for bit
  // the same alone and in any batch, in bf16 too. Off by default: prefill steps (hundreds of rows)
  // run slower than on oneDNN. Without it, a step of more than Linear::kMaxSmallRows rows sums in
  // oneDNN's order: logits move by about an f32 ulp (greedy f32 tokens agreed in every test), and
  // in bf16 such a difference can cross a rounding boundary that the KV cache carries forward.
  bool batch_invariant = false;
};

struct EngineStats {
  int64_t running = 0, waiting = 0;
  int64_t preemptions = 0;
  int64_t steps = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0;  // totals since start
  int64_t live_tokens = 0;  // tokens whose K/V the running requests hold now (their lengths)
  KvCache::Usage kv;        // blocks and bytes in use, per kind
  int64_t kv_blocks_total = 0, kv_blocks_free = 0;
};

class Engine {
 public:
  // `tokenizer` may be null (token-level use: tests, benchmarks); stop strings then are an error.
  Engine(const ModelConfig& config, const ModelWeights& weights, const EngineOptions& options,
         const Tokenizer* tokenizer);

  // Validates and queues. Throws mixattn::Error naming the problem (empty prompt, token out of
  // range, a prompt that fills the whole context, a request that can never fit in KV memory,
  // bad sampling parameters, stop strings without a tokenizer). A prompt + max_tokens beyond the
  // context is accepted: generation then ends at the context with FinishReason::kLength.
  RequestId Submit(GenerationRequest request);
  // Stops a request at the next step and frees its blocks; reported with FinishReason::kCancelled.
  void Cancel(RequestId request);

  // One step. Returns an event per request that produced text or finished.
  std::vector<EngineEvent> Step();
  bool idle() const { return running_.empty() && waiting_.empty(); }

  EngineStats stats() const;
  const ModelRunner& runner() const { return runner_; }
  const KvCache& kv_cache() const { return cache_; }
  // Test hook: called with each batch's logits rows (see ModelRunner::Forward) after each step.
  void set_logits_observer(
      std::function<void(std::span<const BatchItem>, const std::vector<float>&)> observer) {
    logits_observer_ = std::move(observer);
  }

 private:
  struct Request {
    RequestId id = 0;
    GenerationRequest spec;
    std::vector<int> tokens;  // prompt + generated
    int64_t generated = 0;
    int64_t cached = 0;  // tokens whose K/V is in the cache
    std::optional<SequenceId> sequence;
    std::unique_ptr<Sampler> sampler;
    std::unique_ptr<TokenStreamDecoder> decoder;
    std::string text;             // output text so far (with a tokenizer)
    size_t text_emitted = 0;      // bytes of `text` already reported
    int64_t reserved_blocks = 0;  // kReserveFull: this request's whole-life block need
    bool cancelled = false;
    bool stopped_by_string = false;  // the output text was cut at a stop string
  };

  int64_t BlocksToReserve(const Request& request) const;
  void Admit();
  void Preempt(Request& request);
  void Finish(Request& request, FinishReason reason, std::vector<EngineEvent>& events);
  // Appends a sampled token; returns the finish reason it causes (kNone to go on).
  FinishReason AcceptToken(Request& request, int token, EngineEvent& event);

  ModelConfig config_;
  EngineOptions options_;
  const Tokenizer* tokenizer_;
  ModelRunner runner_;
  KvBlockPool pool_;
  KvCache cache_;
  RequestId next_id_ = 1;
  std::deque<std::unique_ptr<Request>> waiting_;
  std::vector<std::unique_ptr<Request>> running_;  // in admission order: the newest is last
  int64_t reserved_blocks_ = 0;
  EngineStats counters_;
  std::function<void(std::span<const BatchItem>, const std::vector<float>&)> logits_observer_;
};

}  // namespace mixattn
