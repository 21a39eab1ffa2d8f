#include "server/engine_service.h"

#include <cstdio>
#include <exception>
#include <utility>

#include "core/error.h"
#include "server/api_error.h"

namespace mixattn::server {
namespace {

double Seconds(std::chrono::steady_clock::duration duration) {
  return std::chrono::duration<double>(duration).count();
}

ApiError ShuttingDown() {
  return ApiError(503, "the server is shutting down and takes no new requests", "server_error", "",
                  "server_shutting_down");
}

}  // namespace

std::optional<EngineEvent> RequestStream::Next(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!ready_.wait_for(lock, timeout, [&] { return !events_.empty(); })) return std::nullopt;
  EngineEvent event = std::move(events_.front());
  events_.pop_front();
  return event;
}

std::string RequestStream::failure() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return failure_;
}

void RequestStream::Push(EngineEvent event) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    events_.push_back(std::move(event));
  }
  ready_.notify_one();
}

void RequestStream::Fail(const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    failure_ = message;
    events_.push_back(EngineEvent{id_, {}, {}, FinishReason::kCancelled});
  }
  ready_.notify_one();
}

std::optional<int64_t> StandardAttentionBytes(const KvPlan& plan, const KvCache::Usage& usage,
                                              int64_t block_bytes) {
  int64_t full_owners = 0;
  for (int owner : plan.kv_owners()) full_owners += plan.layer(owner).kind == AttentionKind::kFull;
  if (full_owners == 0) return std::nullopt;
  return usage.full_blocks / full_owners * plan.num_layers() * block_bytes;
}

EngineService::EngineService(const ModelConfig& config, const ModelWeights& weights,
                             const EngineOptions& options, const Tokenizer* tokenizer,
                             int64_t max_waiting, ServerMetrics& metrics)
    : engine_(config, weights, options, tokenizer), max_waiting_(max_waiting), metrics_(metrics) {
  Publish();
  thread_ = std::thread([this] { Loop(); });
}

EngineService::~EngineService() { Stop(); }

std::shared_ptr<RequestStream> EngineService::Submit(GenerationRequest request) {
  auto pending = std::make_unique<PendingSubmit>();
  pending->request = std::move(request);
  pending->stream = std::make_shared<RequestStream>();
  pending->arrival = Clock::now();
  std::future<void> accepted = pending->accepted.get_future();
  std::shared_ptr<RequestStream> stream = pending->stream;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!failure_.empty()) {
      throw ApiError(503, "the engine failed: " + failure_, "server_error", "", "engine_failed");
    }
    if (!accepting_) throw ShuttingDown();
    ++in_flight_;
    inbox_.push_back(std::move(pending));
  }
  wake_.notify_one();
  accepted.get();  // rethrows the ApiError of a refusal
  return stream;
}

void EngineService::Cancel(RequestId id) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    cancels_.push_back(id);
  }
  wake_.notify_one();
}

void EngineService::StopAccepting() {
  std::lock_guard<std::mutex> lock(mutex_);
  accepting_ = false;
}

bool EngineService::WaitIdle(Clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mutex_);
  return idle_.wait_until(lock, deadline, [&] { return in_flight_ == 0; });
}

void EngineService::CancelAll() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    cancel_all_ = true;
  }
  wake_.notify_one();
}

void EngineService::Stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    accepting_ = false;
    stopping_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
}

EngineSnapshot EngineService::snapshot() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return snapshot_;
}

std::string EngineService::failure() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return failure_;
}

void EngineService::Loop() {
  for (;;) {
    std::vector<std::unique_ptr<PendingSubmit>> submits;
    std::vector<RequestId> cancels;
    bool cancel_all = false, accepting = false, stopping = false;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] {
        return !inbox_.empty() || !cancels_.empty() || cancel_all_ || stopping_ || !engine_.idle();
      });
      submits.swap(inbox_);
      cancels.swap(cancels_);
      cancel_all = std::exchange(cancel_all_, false);
      accepting = accepting_;
      stopping = stopping_;
    }
    for (const auto& pending : submits) Accept(*pending, accepting);
    for (RequestId id : cancels) engine_.Cancel(id);
    if (cancel_all || stopping) {
      for (const auto& [id, live] : live_) engine_.Cancel(id);
    }
    if (!engine_.idle()) {
      try {
        std::vector<EngineEvent> events = engine_.Step();
        // Published before the events go out: whoever sees a request finish sees its blocks
        // back in the pool.
        Publish();
        Deliver(std::move(events));
      } catch (const std::exception& e) {
        FailEverything(e.what());
        return;
      }
    }
    if (stopping && engine_.idle()) return;
  }
}

void EngineService::Accept(PendingSubmit& pending, bool accepting) {
  try {
    if (!accepting) throw ShuttingDown();
    const int64_t waiting = engine_.stats().waiting;
    if (waiting >= max_waiting_) {
      throw ApiError(429,
                     std::to_string(waiting) +
                         " requests are already waiting for the engine (the server's "
                         "--max-waiting); retry later",
                     "rate_limit_error", "", "rate_limit_exceeded");
    }
    const RequestId id = engine_.Submit(std::move(pending.request));
    pending.stream->id_ = id;
    live_.emplace(id, LiveRequest{pending.stream, pending.arrival, {}, false});
    pending.accepted.set_value();
  } catch (const ApiError&) {
    FinishedInFlight(1);
    pending.accepted.set_exception(std::current_exception());
  } catch (const Error& e) {
    FinishedInFlight(1);
    pending.accepted.set_exception(
        std::make_exception_ptr(ApiError(400, e.what(), "invalid_request_error")));
  }
}

void EngineService::Deliver(std::vector<EngineEvent> events) {
  const Clock::time_point now = Clock::now();
  int64_t finished = 0;
  for (EngineEvent& event : events) {
    const auto it = live_.find(event.request);
    MIXATTN_CHECK(it != live_.end());
    LiveRequest& live = it->second;
    if (!event.tokens.empty()) {
      if (live.has_token) {
        metrics_.ObserveInterTokenLatency(Seconds(now - live.last_token));
      } else {
        metrics_.ObserveTimeToFirstToken(Seconds(now - live.arrival));
      }
      live.has_token = true;
      live.last_token = now;
    }
    const FinishReason finish = event.finish;
    live.stream->Push(std::move(event));
    if (finish != FinishReason::kNone) {
      metrics_.ObserveRequestFinished(finish, Seconds(now - live.arrival));
      live_.erase(it);
      ++finished;
    }
  }
  if (finished > 0) FinishedInFlight(finished);
}

void EngineService::Publish() {
  EngineSnapshot snapshot;
  snapshot.stats = engine_.stats();
  snapshot.kv_block_bytes = engine_.kv_cache().pool().block_bytes();
  snapshot.standard_attention_bytes =
      StandardAttentionBytes(engine_.kv_cache().plan(), snapshot.stats.kv, snapshot.kv_block_bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  snapshot_ = snapshot;
}

void EngineService::FailEverything(const std::string& message) {
  std::fprintf(stderr, "mixattn serve: the engine failed: %s\n", message.c_str());
  for (auto& [id, live] : live_) live.stream->Fail(message);
  const int64_t failed = static_cast<int64_t>(live_.size());
  live_.clear();
  std::vector<std::unique_ptr<PendingSubmit>> submits;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    failure_ = message;
    submits.swap(inbox_);
  }
  for (const auto& pending : submits) {
    FinishedInFlight(1);
    pending->accepted.set_exception(std::make_exception_ptr(
        ApiError(503, "the engine failed: " + message, "server_error", "", "engine_failed")));
  }
  FinishedInFlight(failed);
}

void EngineService::FinishedInFlight(int64_t count) {
  bool idle = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    in_flight_ -= count;
    idle = in_flight_ == 0;
  }
  if (idle) idle_.notify_all();
}

}  // namespace mixattn::server
