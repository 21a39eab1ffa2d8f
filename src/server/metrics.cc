#include "server/metrics.h"

#include <algorithm>
#include <cstdio>
#include <utility>

namespace mixattn::server {
namespace {

std::string FormatNumber(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.9g", value);
  return text;
}

void AppendHeader(std::string& out, const std::string& name, const char* type, const char* help) {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void AppendSample(std::string& out, const std::string& name, int64_t value) {
  out += name + " " + std::to_string(value) + "\n";
}

void AppendMetric(std::string& out, const std::string& name, const char* type, const char* help,
                  int64_t value) {
  AppendHeader(out, name, type, help);
  AppendSample(out, name, value);
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : upper_bounds_(std::move(upper_bounds)), counts_(upper_bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  // The first bucket whose upper bound is >= value (Prometheus buckets are "le").
  const size_t bucket = static_cast<size_t>(
      std::lower_bound(upper_bounds_.begin(), upper_bounds_.end(), value) - upper_bounds_.begin());
  ++counts_[bucket];
  sum_ += value;
  ++count_;
}

void Histogram::Render(const std::string& name, std::string& out) const {
  int64_t cumulative = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    cumulative += counts_[i];
    const std::string le = i < upper_bounds_.size() ? FormatNumber(upper_bounds_[i]) : "+Inf";
    out += name + "_bucket{le=\"" + le + "\"} " + std::to_string(cumulative) + "\n";
  }
  out += name + "_sum " + FormatNumber(sum_) + "\n";
  out += name + "_count " + std::to_string(count_) + "\n";
}

ServerMetrics::ServerMetrics()
    : time_to_first_token_({0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                            0.75, 1.0, 2.5, 5.0, 7.5, 10.0}),
      inter_token_latency_({0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                            0.3, 0.4, 0.5, 0.75, 1.0, 2.5}),
      e2e_request_latency_({0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0,
                            30.0, 40.0, 50.0, 60.0}),
      finished_{{"stop", 0}, {"length", 0}, {"abort", 0}} {}

void ServerMetrics::ObserveTimeToFirstToken(double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  time_to_first_token_.Observe(seconds);
}

void ServerMetrics::ObserveInterTokenLatency(double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  inter_token_latency_.Observe(seconds);
}

void ServerMetrics::ObserveRequestFinished(FinishReason reason, double e2e_seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++finished_[reason == FinishReason::kCancelled ? "abort" : FinishReasonName(reason)];
  e2e_request_latency_.Observe(e2e_seconds);
}

void ServerMetrics::CountResponse(int status) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++responses_[status];
}

std::string ServerMetrics::Render(const EngineSnapshot& engine) const {
  const EngineStats& stats = engine.stats;
  std::string out;
  AppendMetric(out, "mixattn:num_requests_running", "gauge", "Requests in the running batch.",
               stats.running);
  AppendMetric(out, "mixattn:num_requests_waiting", "gauge",
               "Requests waiting for admission (new or preempted).", stats.waiting);
  AppendMetric(out, "mixattn:prompt_tokens_total", "counter", "Prefill tokens computed.",
               stats.prompt_tokens);
  AppendMetric(out, "mixattn:generation_tokens_total", "counter", "Tokens generated.",
               stats.generated_tokens);
  AppendMetric(out, "mixattn:num_preemptions_total", "counter",
               "Requests preempted to free KV blocks.", stats.preemptions);

  const int64_t used = stats.kv.blocks();
  AppendHeader(out, "mixattn:kv_cache_usage_perc", "gauge",
               "Fraction of the KV block pool in use (1 = full).");
  out += "mixattn:kv_cache_usage_perc " +
         FormatNumber(stats.kv_blocks_total > 0
                          ? static_cast<double>(used) / static_cast<double>(stats.kv_blocks_total)
                          : 0.0) +
         "\n";
  AppendHeader(out, "mixattn:kv_blocks_used", "gauge",
               "KV blocks held, by the kind of the owning layer.");
  AppendSample(out, "mixattn:kv_blocks_used{kind=\"full\"}", stats.kv.full_blocks);
  AppendSample(out, "mixattn:kv_blocks_used{kind=\"sliding\"}", stats.kv.sliding_blocks);
  AppendMetric(out, "mixattn:kv_blocks_free", "gauge",
               "Free KV blocks (one pool for full and sliding owners).", stats.kv_blocks_free);
  AppendMetric(out, "mixattn:kv_blocks_total", "gauge", "KV blocks in the pool.",
               stats.kv_blocks_total);
  AppendHeader(out, "mixattn:kv_bytes_used", "gauge",
               "KV bytes held, by the kind of the owning layer.");
  AppendSample(out, "mixattn:kv_bytes_used{kind=\"full\"}", stats.kv.full_bytes);
  AppendSample(out, "mixattn:kv_bytes_used{kind=\"sliding\"}", stats.kv.sliding_bytes);
  if (engine.standard_attention_bytes) {
    AppendMetric(out, "mixattn:kv_standard_attention_bytes", "gauge",
                 "KV bytes a standard-attention model of the same shape would hold for the same "
                 "live tokens.",
                 *engine.standard_attention_bytes);
  }

  std::lock_guard<std::mutex> lock(mutex_);
  AppendHeader(out, "mixattn:request_success_total", "counter",
               "Requests finished, by finish reason (abort: cancelled).");
  for (const auto& [reason, count] : finished_)
    AppendSample(out, "mixattn:request_success_total{finished_reason=\"" + reason + "\"}", count);
  AppendHeader(out, "mixattn:time_to_first_token_seconds", "histogram",
               "From arrival to the first generated token.");
  time_to_first_token_.Render("mixattn:time_to_first_token_seconds", out);
  AppendHeader(out, "mixattn:inter_token_latency_seconds", "histogram",
               "Between consecutive generated tokens of a request.");
  inter_token_latency_.Render("mixattn:inter_token_latency_seconds", out);
  AppendHeader(out, "mixattn:e2e_request_latency_seconds", "histogram",
               "From arrival to the end of a request.");
  e2e_request_latency_.Render("mixattn:e2e_request_latency_seconds", out);
  AppendHeader(out, "mixattn:http_responses_total", "counter", "HTTP responses, by status code.");
  for (const auto& [status, count] : responses_)
    AppendSample(out, "mixattn:http_responses_total{code=\"" + std::to_string(status) + "\"}",
                 count);
  return out;
}

}  // namespace mixattn::server
