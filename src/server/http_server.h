// The OpenAI-compatible HTTP API: routes, authentication, limits, streaming, graceful shutdown.
//
// Endpoints (README, "Serving"):
//   POST /v1/completions, POST /v1/chat/completions   generation, whole or streamed (SSE)
//   GET  /v1/models                                    the one model served
//   POST /tokenize, POST /detokenize                   vLLM's shapes
//   GET  /health                                       200 serving, 503 draining, 500 failed
//   GET  /metrics                                      Prometheus text (metrics.h)
//
// Threads: cpp-httplib serves each connection on a thread of its pool; handlers parse and check
// the request, then hand it to the EngineService (engine_service.h), whose one thread runs the
// engine. A streamed response is a chunked content provider that waits on the request's stream
// in slices of 50 ms; between slices cpp-httplib checks the socket, so a client that went away
// ends the provider within one slice, and the provider's releaser cancels the request (its KV
// blocks are freed at the next engine step). A whole response waits in its handler, and runs to
// its end even if the client leaves (cpp-httplib 0.11 gives a handler no view of the socket).
//
// Every failure is an ApiError in OpenAI's shape: handler errors are caught per request, and
// cpp-httplib's own (unknown route, body over the limit, malformed HTTP) go through its error
// handler; no exception leaves a handler, so one bad request never affects another. Routes
// answer other methods with 405 and an Allow header.
//
// Shutdown (SIGTERM): new generation requests get 503 at once; those in flight have until the
// deadline to finish and are cancelled after it (a stream then ends with an error event and
// [DONE], a whole response is a 503); open streams get a moment to send their last chunk; then
// the listener stops.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "server/chat_template.h"
#include "server/engine_service.h"
#include "server/metrics.h"
#include "server/openai_request.h"
#include "server/openai_response.h"
#include "tokenizer/tokenizer.h"

namespace httplib {
class Server;
struct Request;
struct Response;
class DataSink;
}  // namespace httplib

namespace mixattn::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                   // 0: any free port (Bind returns it)
  std::string api_key;               // empty: no authentication
  int64_t max_body_bytes = 4 << 20;  // larger bodies get 413
  int http_threads = 64;             // connections served at once
  std::string model_id = "default";  // what /v1/models lists and responses name
  int64_t context = 0;               // most tokens of prompt + completion
};

class HttpServer {
 public:
  // All references must outlive the server.
  HttpServer(const ServerOptions& options, EngineService& engine, const Tokenizer& tokenizer,
             const ChatTemplate& chat_template, ServerMetrics& metrics);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Opens the listening socket; returns its port. Throws Error naming host and port.
  int Bind();
  // Serves until Shutdown (blocking; run it on its own thread). False if listening failed.
  bool Run();
  // The graceful stop described above; in-flight requests are cancelled at `deadline`. Call it
  // once Run has been started (on another thread); it returns when Run has returned.
  void Shutdown(std::chrono::steady_clock::time_point deadline);

 private:
  using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;
  struct StreamState;

  // Registers `handler` for method + path and 405 for the path's other methods. The handler
  // runs behind the API key check (when `authenticated`) and the ApiError catch.
  void Route(const std::string& method, const std::string& path, bool authenticated,
             Handler handler);
  void CheckApiKey(const httplib::Request& request) const;

  void Generate(Endpoint endpoint, const httplib::Request& request, httplib::Response& response);
  GenerationRequest MakeGenerationRequest(Endpoint endpoint, std::vector<int> prompt,
                                          const GenerationParams& params);
  void SendWhole(Endpoint endpoint, const ResponseHeader& header, RequestStream& stream,
                 int64_t prompt_tokens, httplib::Response& response);
  void SendStream(Endpoint endpoint, const ResponseHeader& header,
                  std::shared_ptr<RequestStream> stream, int64_t prompt_tokens, bool include_usage,
                  httplib::Response& response);
  // One call of the chunked content provider: waits for the next event and writes its chunks.
  bool WriteStreamEvents(StreamState& state, httplib::DataSink& sink);
  void StreamClosed();

  void Tokenize(const httplib::Request& request, httplib::Response& response);
  void Detokenize(const httplib::Request& request, httplib::Response& response);
  void Models(httplib::Response& response);
  void Health(httplib::Response& response);
  void Metrics(httplib::Response& response);

  std::vector<int> EncodePrompt(const std::string& text, bool add_bos) const;
  std::string NextResponseId(Endpoint endpoint);

  ServerOptions options_;
  EngineService& engine_;
  const Tokenizer& tokenizer_;
  const ChatTemplate& chat_template_;
  ServerMetrics& metrics_;
  const int64_t started_;  // Unix seconds: /v1/models "created"
  std::unique_ptr<httplib::Server> http_;
  std::vector<std::string> routes_;  // "METHOD /path", for 404 messages

  std::atomic<bool> draining_{false};  // /health says so
  std::atomic<uint64_t> next_id_;      // response ids, from a random start
  std::atomic<uint64_t> next_seed_;    // seeds of requests that give none, from a random start

  std::mutex mutex_;
  std::condition_variable streams_closed_;  // open_streams_ reached 0
  std::condition_variable run_returned_;    // Run returned
  int64_t open_streams_ = 0;
  bool running_ = true;  // false once Run returned
};

}  // namespace mixattn::server
