// The engine on its own thread, and the thread-safe doors through which HTTP handlers reach it.
//
// Engine (engine/engine.h) is single-threaded. EngineService owns it and is the only code that
// touches it after construction, from one engine thread; HTTP threads talk to that thread
// through:
//   - an inbox guarded by one mutex, with a condition variable the engine thread sleeps on:
//     submissions and cancellations. A submission carries a promise, so the handler that
//     submitted learns at once whether the engine took the request, or why not (400 from the
//     engine's own validation, 429 when too many requests wait, 503 once draining began);
//   - one RequestStream per request: the engine thread appends its EngineEvents, the handler
//     waits on the stream's own condition variable. Streams are shared_ptrs, so either side may
//     let go first.
// The engine thread's loop: sleep until the inbox has something or the engine has work; take the
// inbox (submit, cancel); Step once; hand each event to its stream and record its latencies;
// publish a stats snapshot for /metrics. A cancellation takes effect at the next Step, which
// frees the request's KV blocks, so a client that disconnects gives its memory back within one
// step.
//
// If the engine ever throws (an internal error: it validates what users send in Submit), every
// open stream ends with the message and the service refuses new work; /health then reports it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/engine.h"
#include "server/metrics.h"

namespace mixattn::server {

// The events of one request, from the engine thread to the handler that waits for them.
class RequestStream {
 public:
  RequestId id() const { return id_; }

  // The next event, waiting at most `timeout`; nullopt if none came in time. The event whose
  // `finish` is set is the last one. A request the server cancelled (shutdown, engine failure)
  // finishes with FinishReason::kCancelled.
  std::optional<EngineEvent> Next(std::chrono::milliseconds timeout);
  // Why the engine failed, when it did; empty otherwise.
  std::string failure() const;

 private:
  friend class EngineService;
  void Push(EngineEvent event);
  void Fail(const std::string& message);

  RequestId id_ = 0;  // set by the engine thread before Submit returns the stream
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<EngineEvent> events_;
  std::string failure_;
};

// Bytes a standard-attention model of the same shape would hold for the tokens `usage` covers.
// A paged cache holds ceil(T / B) blocks per layer for a sequence of T tokens when every layer is
// full attention, which is exactly what each full-attention owner holds here; so the full
// owners' blocks divided by their number count the live tokens in blocks, and a standard model
// holds that for every one of its layers. nullopt when the plan has no full-attention owner.
std::optional<int64_t> StandardAttentionBytes(const KvPlan& plan, const KvCache::Usage& usage,
                                              int64_t block_bytes);

class EngineService {
 public:
  // Builds the engine (throws Error as Engine does) and starts the engine thread. A request is
  // refused with 429 while `max_waiting` requests already wait for admission. `tokenizer` and
  // `metrics` must outlive the service.
  EngineService(const ModelConfig& config, const ModelWeights& weights,
                const EngineOptions& options, const Tokenizer* tokenizer, int64_t max_waiting,
                ServerMetrics& metrics);
  ~EngineService();  // Stop()
  EngineService(const EngineService&) = delete;
  EngineService& operator=(const EngineService&) = delete;

  // Hands `request` to the engine and returns its stream. Throws ApiError: 400 with the engine's
  // message when it rejects the request, 429 when too many wait, 503 after StopAccepting or a
  // failure.
  std::shared_ptr<RequestStream> Submit(GenerationRequest request);
  // Cancels a request at the next step (its stream then ends with kCancelled); unknown or
  // finished ids are ignored.
  void Cancel(RequestId id);

  // Graceful shutdown, in order: refuse new submissions (503); wait for the requests in flight;
  // cancel those still running at the deadline; Stop.
  void StopAccepting();
  // True once no request is in flight; false if `deadline` came first.
  bool WaitIdle(std::chrono::steady_clock::time_point deadline);
  void CancelAll();
  // Cancels whatever is left, lets the engine release it, and joins the engine thread.
  void Stop();

  EngineSnapshot snapshot() const;
  std::string failure() const;  // empty while the engine is healthy

 private:
  using Clock = std::chrono::steady_clock;

  struct PendingSubmit {
    GenerationRequest request;
    std::shared_ptr<RequestStream> stream;
    Clock::time_point arrival;
    std::promise<void> accepted;  // or the ApiError that refused it
  };
  struct LiveRequest {
    std::shared_ptr<RequestStream> stream;
    Clock::time_point arrival;
    Clock::time_point last_token;
    bool has_token = false;
  };

  void Loop();
  void Accept(PendingSubmit& pending, bool accepting);
  void Deliver(std::vector<EngineEvent> events);
  void Publish();
  void FailEverything(const std::string& message);
  void FinishedInFlight(int64_t count);  // count requests left the engine (or were refused)

  // Engine thread only (after construction).
  Engine engine_;
  const int64_t max_waiting_;
  ServerMetrics& metrics_;
  std::unordered_map<RequestId, LiveRequest> live_;

  // Shared, under mutex_.
  mutable std::mutex mutex_;
  std::condition_variable wake_;  // the engine thread: inbox, cancellations or stop
  std::condition_variable idle_;  // WaitIdle: in_flight_ reached 0
  std::vector<std::unique_ptr<PendingSubmit>> inbox_;
  std::vector<RequestId> cancels_;
  bool cancel_all_ = false;
  bool accepting_ = true;
  bool stopping_ = false;
  int64_t in_flight_ = 0;  // submitted and neither refused nor finished
  EngineSnapshot snapshot_;
  std::string failure_;

  std::thread thread_;  // last: starts once everything above exists
};

}  // namespace mixattn::server
