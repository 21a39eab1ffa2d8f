// The server's Prometheus metrics, rendered in the text exposition format (version 0.0.4).
//
// Names follow vLLM's ("Production Metrics" in its docs) with the prefix "mixattn:" in place of
// "vllm:", so a dashboard built for vLLM needs only the prefix changed:
//   mixattn:num_requests_running, num_requests_waiting                  gauges
//   mixattn:prompt_tokens_total, generation_tokens_total,
//           num_preemptions_total                                       counters (engine totals)
//   mixattn:request_success_total{finished_reason="stop|length|abort"}  counter
//   mixattn:time_to_first_token_seconds, inter_token_latency_seconds,
//           e2e_request_latency_seconds                                 histograms
//   mixattn:kv_cache_usage_perc                                         gauge, 0..1
// and what only a MixAttention server has to say about its KV cache:
//   mixattn:kv_blocks_used{kind="full|sliding"}  blocks held by full / sliding KV owners
//   mixattn:kv_blocks_free, kv_blocks_total      the one pool both kinds draw from
//   mixattn:kv_bytes_used{kind="full|sliding"}
//   mixattn:kv_standard_attention_bytes          bytes a standard-attention model of the same
//                                                shape would hold for the same live tokens
// plus mixattn:http_responses_total{code="..."}, every HTTP response by status.
//
// Latency buckets are vLLM's, extended downwards: a small model on a CPU answers in milliseconds.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace mixattn::server {

// What the engine thread publishes after each step (engine_service.h).
struct EngineSnapshot {
  EngineStats stats;
  int64_t kv_block_bytes = 0;
  // Absent when the plan has no full-attention owner to count live tokens from (see
  // StandardAttentionBytes in engine_service.h).
  std::optional<int64_t> standard_attention_bytes;
};

// A Prometheus histogram: counts per bucket, their sum and count. Not thread-safe.
class Histogram {
 public:
  // `upper_bounds` increasing; a last bucket, +Inf, is implied.
  explicit Histogram(std::vector<double> upper_bounds);

  void Observe(double value);
  // Appends the cumulative `name`_bucket{le="..."} lines, `name`_sum and `name`_count.
  void Render(const std::string& name, std::string& out) const;

 private:
  std::vector<double> upper_bounds_;
  std::vector<int64_t> counts_;  // [upper_bounds + 1] per bucket (not cumulative); last: +Inf
  double sum_ = 0;
  int64_t count_ = 0;
};

// Everything /metrics reports besides the engine snapshot. Thread-safe: the engine thread records
// latencies, HTTP threads count responses and render.
class ServerMetrics {
 public:
  ServerMetrics();

  void ObserveTimeToFirstToken(double seconds);
  void ObserveInterTokenLatency(double seconds);
  // A request left the engine: its finish reason (kCancelled counts as "abort") and its time
  // from arrival to the last event.
  void ObserveRequestFinished(FinishReason reason, double e2e_seconds);
  void CountResponse(int status);

  std::string Render(const EngineSnapshot& engine) const;

 private:
  mutable std::mutex mutex_;
  Histogram time_to_first_token_;
  Histogram inter_token_latency_;
  Histogram e2e_request_latency_;
  std::map<std::string, int64_t> finished_;  // finished_reason -> requests
  std::map<int, int64_t> responses_;         // HTTP status -> responses
};

}  // namespace mixattn::server
