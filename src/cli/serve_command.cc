// mixattn serve: the OpenAI-compatible HTTP server (src/server/) over the engine.
//
// Start-up checks every flag and the model before anything listens, so a mistake is one clear
// message and exit code 1. Then one line states the KV plan in a person's terms: bytes per token
// and how many full-context sequences fit, beside what a standard-attention model of the same
// shape would fit in the same memory, and the admission mode (--admission).
//
// Signals: SIGTERM and SIGINT are blocked before any thread starts, so every thread inherits the
// mask, and the main thread takes them with sigwait; no code runs in a signal handler. The first
// one starts the graceful shutdown (HttpServer::Shutdown), after which the process exits 0.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "cli/commands.h"
#include "cli/model_loading.h"
#include "cli/stop_signals.h"
#include "core/error.h"
#include "core/units.h"
#include "model/kv_plan.h"
#include "model/presets.h"
#include "server/chat_template.h"
#include "server/engine_service.h"
#include "server/http_server.h"
#include "server/metrics.h"

namespace mixattn::cli {
namespace {

// Numbers are taken as text and parsed here, so that every bad value is an Error (exit code 1)
// whose message names the flag, rather than a parser's own exit code.
struct ServeOptions {
  std::string model = kDefaultModelDir;
  std::string host = "127.0.0.1";
  std::string port = "8080";
  std::string api_key;
  std::string kv_memory = "2GiB";
  std::string max_batch = std::to_string(EngineOptions{}.max_running);
  std::string max_context;  // empty: the model's max_position_embeddings
  std::string max_waiting = "128";
  std::string max_body = "4MiB";
  std::string drain_timeout = "30";
  std::string weights_dtype = "bf16";
  std::string kv_dtype = "bf16";
  std::string admission = "reserve";
  bool batch_invariant = false;
};

int64_t ParseWholeNumber(const std::string& text, const char* flag, int64_t min, int64_t max,
                         const char* meaning = "") {
  int64_t value = 0;
  const char* end = text.data() + text.size();
  const auto [stop, error] = std::from_chars(text.data(), end, value);
  if (text.empty() || error != std::errc() || stop != end || value < min || value > max) {
    Fail(flag, " '", text, "': expected a whole number from ", min, " to ", max, meaning);
  }
  return value;
}

DType ParseDType(const std::string& text, const char* flag) {
  if (text == "bf16") return DType::kBF16;
  if (text == "f32") return DType::kF32;
  Fail(flag, " '", text, "': expected bf16 or f32");
}

EngineOptions::Admission ParseAdmission(const std::string& text) {
  if (text == "reserve") return EngineOptions::Admission::kReserveFull;
  if (text == "optimistic") return EngineOptions::Admission::kOptimistic;
  Fail("--admission '", text, "': expected reserve or optimistic");
}

// What /v1/models calls the model: the directory's name.
std::string ModelId(const std::string& dir) {
  std::filesystem::path path = std::filesystem::path(dir).lexically_normal();
  if (path.filename().empty()) path = path.parent_path();
  const std::string name = path.filename().string();
  return name.empty() || name == "." ? "default" : name;
}

void LogKvPlan(const ModelConfig& config, const EngineOptions& options, int64_t num_blocks) {
  const int64_t context = config.max_position_embeddings;
  const KvPlan plan(config);
  ModelConfig standard = config;
  standard.layers = PresetLayers("standard", config.num_layers(), 1);
  const KvPlan standard_plan(standard);
  const auto fits = [&](const KvPlan& p) {
    return p.max_sequences_in_blocks(num_blocks, context, options.block_tokens,
                                     options.prefill_chunk);
  };
  std::fprintf(stderr,
               "mixattn serve: KV cache %s (%lld blocks of %lld tokens), %s per token with %zu of "
               "%d layers caching K/V: %lld sequences of the full %lld-token context fit, where "
               "standard attention of the same shape fits %lld; admission %s\n",
               FormatBytes(options.kv_memory_bytes).c_str(), static_cast<long long>(num_blocks),
               static_cast<long long>(options.block_tokens),
               FormatBytes(plan.kv_bytes_per_token(options.kv_dtype)).c_str(),
               plan.kv_owners().size(), config.num_layers(), static_cast<long long>(fits(plan)),
               static_cast<long long>(context), static_cast<long long>(fits(standard_plan)),
               options.admission == EngineOptions::Admission::kReserveFull
                   ? "reserve (a request starts only when its full-length KV fits; none is "
                     "preempted)"
                   : "optimistic (when KV runs out the newest request is preempted and "
                     "recomputed)");
}

void RunServe(const ServeOptions& options) {
  const int port = static_cast<int>(
      ParseWholeNumber(options.port, "--port", 0, 65535, " (0 picks a free port)"));
  EngineOptions engine_options;
  engine_options.kv_memory_bytes = ParseByteSize(options.kv_memory, "--kv-memory");
  engine_options.max_running = ParseWholeNumber(options.max_batch, "--max-batch", 1, 1 << 16);
  engine_options.weights_dtype = ParseDType(options.weights_dtype, "--weights-dtype");
  engine_options.kv_dtype = ParseDType(options.kv_dtype, "--kv-dtype");
  engine_options.admission = ParseAdmission(options.admission);
  engine_options.batch_invariant = options.batch_invariant;
  const int64_t max_waiting = ParseWholeNumber(options.max_waiting, "--max-waiting", 1, 1 << 16);
  const int64_t max_body = ParseByteSize(options.max_body, "--max-body");
  if (max_body < 1024) Fail("--max-body '", options.max_body, "': expected at least 1KiB");
  const std::chrono::seconds drain_timeout(
      ParseWholeNumber(options.drain_timeout, "--drain-timeout", 0, 24 * 3600, " seconds"));

  // Before any thread exists (the engine's, cpp-httplib's, OpenMP's), so all inherit the mask.
  const StopSignals stop_signals;
  // A client that disconnects makes a write fail with EPIPE instead of killing the process.
  signal(SIGPIPE, SIG_IGN);

  const InferenceModel loaded = LoadInferenceModel(options.model);
  if (!loaded.tokenizer) {
    Fail(loaded.tokenizer_path,
         " does not exist: the server's text API needs the model's tokenizer");
  }
  ModelConfig config = loaded.model.config;
  if (!options.max_context.empty()) {
    // The engine's context limit is the config's; a smaller one serves shorter requests.
    config.max_position_embeddings = static_cast<int>(
        ParseWholeNumber(options.max_context, "--max-context", 2, config.max_position_embeddings,
                         " (the model's max_position_embeddings in config.json is the most)"));
  }
  const server::ChatTemplate chat_template = server::ChatTemplate::LoadFromModelDir(options.model);

  server::ServerMetrics metrics;
  server::EngineService engine(config, loaded.model.weights, engine_options, loaded.tokenizer.get(),
                               max_waiting, metrics);
  LogKvPlan(config, engine_options, engine.snapshot().stats.kv_blocks_total);

  server::ServerOptions server_options;
  server_options.host = options.host;
  server_options.port = port;
  server_options.api_key = options.api_key;
  server_options.max_body_bytes = max_body;
  // A connection holds a thread while its request runs or waits; with this many, the requests
  // past --max-waiting still get their 429, and /health and /metrics still answer.
  server_options.http_threads = static_cast<int>(engine_options.max_running + max_waiting + 16);
  server_options.model_id = ModelId(options.model);
  server_options.context = config.max_position_embeddings;
  server::HttpServer http(server_options, engine, *loaded.tokenizer, chat_template, metrics);
  const int bound_port = http.Bind();
  std::fprintf(stderr, "mixattn serve: model %s (%d layers, context %d) at http://%s:%d%s\n",
               server_options.model_id.c_str(), config.num_layers(), config.max_position_embeddings,
               options.host.c_str(), bound_port,
               options.api_key.empty() ? "" : " (API key required)");

  std::atomic<bool> listener_failed = false;
  std::thread listener([&] {
    if (!http.Run()) {
      listener_failed = true;
      kill(getpid(), SIGTERM);  // wakes the sigwait below
    }
  });
  const int received = stop_signals.Wait();
  if (!listener_failed) {
    std::fprintf(stderr,
                 "mixattn serve: %s: finishing the requests in flight (at most %lld s), then "
                 "stopping\n",
                 strsignal(received), static_cast<long long>(drain_timeout.count()));
  }
  http.Shutdown(std::chrono::steady_clock::now() + drain_timeout);
  listener.join();
  engine.Stop();
  if (listener_failed) Fail("the listener on ", options.host, ":", bound_port, " stopped");
  std::fprintf(stderr, "mixattn serve: stopped\n");
}

}  // namespace

void RegisterServeCommand(CLI::App& app) {
  CLI::App* command = app.add_subcommand(
      "serve", "serve a model over an OpenAI-compatible HTTP API with continuous batching");
  auto options = std::make_shared<ServeOptions>();
  command
      ->add_option("--model", options->model,
                   "model directory (config.json, model.safetensors, tokenizer.model, optional "
                   "chat_template.json)")
      ->type_name("DIR")
      ->capture_default_str();
  command->add_option("--host", options->host, "address to listen on")
      ->type_name("HOST")
      ->capture_default_str();
  command->add_option("--port", options->port, "port to listen on (0: any free port)")
      ->type_name("PORT")
      ->capture_default_str();
  command
      ->add_option("--api-key", options->api_key,
                   "require 'Authorization: Bearer KEY' on the API routes")
      ->type_name("KEY")
      ->envname("MIXATTN_API_KEY");
  auto* limits = command->add_option_group("Engine and limits");
  limits->add_option("--kv-memory", options->kv_memory, "KV cache memory, e.g. 2GiB")
      ->type_name("SIZE")
      ->capture_default_str();
  limits->add_option("--max-batch", options->max_batch, "most requests running at once")
      ->type_name("N")
      ->capture_default_str();
  limits
      ->add_option("--max-context", options->max_context,
                   "most tokens of prompt + completion (default: the model's context)")
      ->type_name("TOKENS");
  limits
      ->add_option("--max-waiting", options->max_waiting,
                   "most requests waiting for a place in the batch; more get 429")
      ->type_name("N")
      ->capture_default_str();
  limits->add_option("--max-body", options->max_body, "largest request body; larger get 413")
      ->type_name("SIZE")
      ->capture_default_str();
  limits
      ->add_option("--drain-timeout", options->drain_timeout,
                   "seconds requests in flight get to finish after SIGTERM before they are "
                   "cancelled")
      ->type_name("SECONDS")
      ->capture_default_str();
  limits->add_option("--weights-dtype", options->weights_dtype, "bf16 or f32")
      ->type_name("DTYPE")
      ->capture_default_str();
  limits->add_option("--kv-dtype", options->kv_dtype, "bf16 or f32")
      ->type_name("DTYPE")
      ->capture_default_str();
  limits
      ->add_option("--admission", options->admission,
                   "reserve: admit a request only when its full-length KV fits, never preempt; "
                   "optimistic: admit more at once, preempting and recomputing the newest when "
                   "KV runs out")
      ->type_name("MODE")
      ->capture_default_str();
  limits->add_flag("--batch-invariant", options->batch_invariant, kBatchInvariantHelp);
  command->callback([options]() { RunServe(*options); });
}

}  // namespace mixattn::cli
