#include "server/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <cstdio>
#include <random>
#include <string_view>
#include <utility>

#include "core/error.h"
#include "server/api_error.h"
#include "server/utf8.h"

namespace mixattn::server {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// How long a streamed response waits for the next event before cpp-httplib checks that the client
// is still connected: the delay before a disconnect cancels a request that produces nothing.
constexpr std::chrono::milliseconds kDisconnectPoll(50);
// How long open streams get to send their last chunk after a shutdown cancelled their requests.
constexpr std::chrono::seconds kStreamGrace(5);
// Requests one keep-alive connection may carry (cpp-httplib's default is 5).
constexpr size_t kKeepAliveRequests = 1000;
constexpr const char* kMethods[] = {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};

void SendJson(httplib::Response& response, int status, const Json& body) {
  response.status = status;
  response.set_content(DumpJson(body), "application/json");
}

void SendError(httplib::Response& response, const ApiError& error) {
  SendJson(response, error.status(), ErrorJson(error));
  if (error.status() == 429) response.set_header("Retry-After", "1");
}

// Compares in time that depends only on the lengths, so response times do not reveal how much of
// an API key a guess got right.
bool SameSecret(std::string_view given, std::string_view expected) {
  unsigned char difference = given.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < given.size(); ++i)
    difference |= static_cast<unsigned char>(given[i] ^ expected[i % expected.size()]);
  return difference == 0;
}

// Why a request the server cancelled ended: the engine failed (500) or the server shut down (503).
ApiError CancelledError(const RequestStream& stream) {
  const std::string failure = stream.failure();
  if (!failure.empty()) {
    return ApiError(500, "the engine failed: " + failure, "server_error", "", "engine_failed");
  }
  return ApiError(503, "the server shut down before this request finished", "server_error", "",
                  "server_shutting_down");
}

int64_t UnixSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

uint64_t RandomStart() {
  std::random_device device;
  return (uint64_t{device()} << 32) | device();
}

}  // namespace

struct HttpServer::StreamState {
  Endpoint endpoint;
  ResponseHeader header;
  std::shared_ptr<RequestStream> stream;
  int64_t prompt_tokens = 0;
  bool include_usage = false;
  int64_t completion_tokens = 0;
  std::string held_text;  // the first bytes of a character whose last bytes are still to come
  bool started = false;   // the provider ran once (a chat stream has sent its role chunk)
  bool finished = false;  // the last event and [DONE] went out
};

HttpServer::HttpServer(const ServerOptions& options, EngineService& engine,
                       const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                       ServerMetrics& metrics)
    : options_(options),
      engine_(engine),
      tokenizer_(tokenizer),
      chat_template_(chat_template),
      metrics_(metrics),
      started_(UnixSeconds()),
      http_(std::make_unique<httplib::Server>()),
      next_id_(RandomStart()),
      next_seed_(RandomStart()) {
  const size_t threads = static_cast<size_t>(options_.http_threads);
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http_->set_payload_max_length(static_cast<size_t>(options_.max_body_bytes));
  http_->set_keep_alive_max_count(kKeepAliveRequests);
  http_->set_tcp_nodelay(true);  // stream chunks leave at once
  // cpp-httplib's default also sets SO_REUSEPORT, which would let a second server bind a port
  // that is in use instead of failing with a clear error.
  http_->set_socket_options([](socket_t sock) {
    const int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  // Errors cpp-httplib raises itself: unknown routes, bodies over the limit, malformed HTTP.
  const httplib::Server::HandlerWithResponse fill_error = [this](const httplib::Request& request,
                                                                 httplib::Response& response) {
    if (!response.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    std::string message;
    switch (response.status) {
      case 404:
        message = "no route for " + request.method + " " + request.path + "; the routes are:";
        for (const std::string& route : routes_) message += " " + route + ",";
        message.pop_back();
        break;
      case 413:
        message = "the request body is larger than this server's limit of " +
                  std::to_string(options_.max_body_bytes) + " bytes";
        break;
      case 400:
        message = "the HTTP request is malformed";
        break;
      default:
        message = "HTTP status " + std::to_string(response.status);
        break;
    }
    SendError(response, ErrorForStatus(response.status, message));
    return httplib::Server::HandlerResponse::Handled;
  };
  http_->set_error_handler(fill_error);
  http_->set_exception_handler(
      [](const httplib::Request&, httplib::Response& response, std::exception_ptr exception) {
        std::string what = "unknown exception";
        try {
          std::rethrow_exception(exception);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        SendError(response, ApiError(500, "internal error: " + what, "server_error"));
      });
  http_->set_logger([this](const httplib::Request& request, const httplib::Response& response) {
    metrics_.CountResponse(response.status);
    if (response.status >= 500) {
      std::fprintf(stderr, "mixattn serve: %s %s -> %d %s\n", request.method.c_str(),
                   request.path.c_str(), response.status, response.body.c_str());
    }
  });

  Route("POST", "/v1/completions", true, [this](const auto& request, auto& response) {
    Generate(Endpoint::kCompletions, request, response);
  });
  Route("POST", "/v1/chat/completions", true, [this](const auto& request, auto& response) {
    Generate(Endpoint::kChat, request, response);
  });
  Route("GET", "/v1/models", true, [this](const auto&, auto& response) { Models(response); });
  Route("POST", "/tokenize", true,
        [this](const auto& request, auto& response) { Tokenize(request, response); });
  Route("POST", "/detokenize", true,
        [this](const auto& request, auto& response) { Detokenize(request, response); });
  Route("GET", "/health", false, [this](const auto&, auto& response) { Health(response); });
  Route("GET", "/metrics", false, [this](const auto&, auto& response) { Metrics(response); });
}

HttpServer::~HttpServer() = default;

void HttpServer::Route(const std::string& method, const std::string& path, bool authenticated,
                       Handler handler) {
  routes_.push_back(method + " " + path);
  const Handler guarded = [this, authenticated, handler = std::move(handler)](
                              const httplib::Request& request, httplib::Response& response) {
    try {
      if (authenticated) CheckApiKey(request);
      handler(request, response);
    } catch (const ApiError& e) {
      SendError(response, e);
    } catch (const Error& e) {
      // Raised below the server (tokenizer, engine) by what the request asked for.
      SendError(response, ApiError(400, e.what(), "invalid_request_error"));
    }
  };
  const Handler not_allowed = [method, path](const httplib::Request& request,
                                             httplib::Response& response) {
    SendError(response, ErrorForStatus(405, request.method + " is not allowed on " + path +
                                                "; use " + method));
    response.set_header("Allow", method);
  };
  // Each path serves one method; cpp-httplib answers HEAD with the GET handler.
  for (const std::string verb : kMethods) {
    const Handler& chosen = verb == method ? guarded : not_allowed;
    if (verb == "GET") http_->Get(path, chosen);
    if (verb == "POST") http_->Post(path, chosen);
    if (verb == "PUT") http_->Put(path, chosen);
    if (verb == "PATCH") http_->Patch(path, chosen);
    if (verb == "DELETE") http_->Delete(path, chosen);
    if (verb == "OPTIONS") http_->Options(path, chosen);
  }
}

void HttpServer::CheckApiKey(const httplib::Request& request) const {
  if (options_.api_key.empty()) return;
  const std::string given = request.get_header_value("Authorization");
  if (given.empty()) {
    throw ErrorForStatus(401, "no API key: send the header 'Authorization: Bearer <key>'");
  }
  if (!SameSecret(given, "Bearer " + options_.api_key)) {
    throw ErrorForStatus(401, "the API key in the Authorization header is not valid");
  }
}

int HttpServer::Bind() {
  const int port = options_.port == 0
                       ? http_->bind_to_any_port(options_.host)
                       : (http_->bind_to_port(options_.host, options_.port) ? options_.port : -1);
  if (port < 0) {
    Fail("cannot listen on ", options_.host, ":", options_.port,
         ": the port is in use, or the host is not an address of this machine");
  }
  return port;
}

bool HttpServer::Run() {
  const bool ok = http_->listen_after_bind();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    running_ = false;
  }
  run_returned_.notify_all();
  return ok;
}

void HttpServer::Shutdown(Clock::time_point deadline) {
  draining_ = true;
  engine_.StopAccepting();
  if (!engine_.WaitIdle(deadline)) {
    std::fprintf(stderr, "mixattn serve: deadline reached; cancelling the requests in flight\n");
    engine_.CancelAll();
  }
  std::unique_lock<std::mutex> lock(mutex_);
  streams_closed_.wait_for(lock, kStreamGrace, [&] { return open_streams_ == 0; });
  // cpp-httplib's stop() does nothing before the listener runs, and it offers no signal for
  // that moment: a signal right at start-up waits here until it does.
  while (running_ && !http_->is_running()) {
    run_returned_.wait_for(lock, std::chrono::milliseconds(10), [&] { return !running_; });
  }
  if (running_) {
    lock.unlock();
    http_->stop();
    lock.lock();
    // Run returns once every connection thread has finished.
    run_returned_.wait(lock, [&] { return !running_; });
  }
}

void HttpServer::Generate(Endpoint endpoint, const httplib::Request& request,
                          httplib::Response& response) {
  const Json body = ParseJsonBody(request.body);
  GenerationParams params;
  std::vector<int> prompt;
  if (endpoint == Endpoint::kCompletions) {
    CompletionRequest completion = ParseCompletionRequest(body);
    params = std::move(completion.params);
    if (const auto* text = std::get_if<std::string>(&completion.prompt)) {
      prompt = EncodePrompt(*text, true);
    } else {
      prompt = std::move(std::get<std::vector<int>>(completion.prompt));
    }
  } else {
    ChatRequest chat = ParseChatRequest(body);
    params = std::move(chat.params);
    prompt = EncodePrompt(chat_template_.Render(chat.messages), true);
    params.stop.insert(params.stop.end(), chat_template_.stop.begin(), chat_template_.stop.end());
  }
  const int64_t prompt_tokens = static_cast<int64_t>(prompt.size());
  const ResponseHeader header{NextResponseId(endpoint), UnixSeconds(), options_.model_id};
  std::shared_ptr<RequestStream> stream =
      engine_.Submit(MakeGenerationRequest(endpoint, std::move(prompt), params));
  if (params.stream) {
    SendStream(endpoint, header, std::move(stream), prompt_tokens, params.include_usage, response);
  } else {
    SendWhole(endpoint, header, *stream, prompt_tokens, response);
  }
}

GenerationRequest HttpServer::MakeGenerationRequest(Endpoint endpoint, std::vector<int> prompt,
                                                    const GenerationParams& params) {
  const int64_t prompt_tokens = static_cast<int64_t>(prompt.size());
  const int64_t context = options_.context;
  if (prompt_tokens >= context) {
    FailBadRequest(endpoint == Endpoint::kChat ? "messages" : "prompt", "context_length_exceeded",
                   "the prompt has " + std::to_string(prompt_tokens) + " tokens; the context is " +
                       std::to_string(context) +
                       " tokens (prompt and completion together), which leaves no room to "
                       "generate");
  }
  const int64_t room = context - prompt_tokens;
  if (params.max_tokens && *params.max_tokens > room) {
    FailBadRequest("max_tokens", "context_length_exceeded",
                   "max_tokens = " + std::to_string(*params.max_tokens) +
                       " does not fit: the prompt has " + std::to_string(prompt_tokens) +
                       " tokens and the context is " + std::to_string(context) + ", so at most " +
                       std::to_string(room) + " tokens can be generated");
  }
  GenerationRequest request;
  request.prompt = std::move(prompt);
  request.sampling = params.sampling;
  request.sampling.seed = params.seed ? *params.seed : next_seed_.fetch_add(1);
  request.max_tokens = params.max_tokens.value_or(room);
  request.stop = params.stop;
  request.stop_at_eos = !params.ignore_eos;
  return request;
}

void HttpServer::SendWhole(Endpoint endpoint, const ResponseHeader& header, RequestStream& stream,
                           int64_t prompt_tokens, httplib::Response& response) {
  std::string text;
  int64_t completion_tokens = 0;
  for (;;) {
    const std::optional<EngineEvent> event = stream.Next(std::chrono::seconds(1));
    if (!event) continue;
    text += event->text;
    completion_tokens += static_cast<int64_t>(event->tokens.size());
    if (event->finish == FinishReason::kCancelled) throw CancelledError(stream);
    if (event->finish != FinishReason::kNone) {
      SendJson(response, 200,
               ResponseJson(endpoint, header, text, FinishReasonName(event->finish),
                            TokenUsage{prompt_tokens, completion_tokens}));
      return;
    }
  }
}

void HttpServer::SendStream(Endpoint endpoint, const ResponseHeader& header,
                            std::shared_ptr<RequestStream> stream, int64_t prompt_tokens,
                            bool include_usage, httplib::Response& response) {
  auto state = std::make_shared<StreamState>();
  state->endpoint = endpoint;
  state->header = header;
  state->stream = std::move(stream);
  state->prompt_tokens = prompt_tokens;
  state->include_usage = include_usage;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++open_streams_;
  }
  response.set_header("Cache-Control", "no-cache");
  response.set_chunked_content_provider(
      "text/event-stream",
      [this, state](size_t, httplib::DataSink& sink) { return WriteStreamEvents(*state, sink); },
      [this, state](bool) {
        // The response is over: written in full, or cut short because the client went away.
        if (!state->finished) engine_.Cancel(state->stream->id());
        StreamClosed();
      });
}

bool HttpServer::WriteStreamEvents(StreamState& state, httplib::DataSink& sink) {
  std::string out;
  if (!state.started) {
    state.started = true;
    if (state.endpoint == Endpoint::kChat) {
      out =
          SseEvent(ChunkJson(state.endpoint, state.header, "", nullptr, true, state.include_usage));
    }
  } else {
    std::optional<EngineEvent> event = state.stream->Next(kDisconnectPoll);
    if (!event) return true;  // cpp-httplib checks the connection before the next call
    state.completion_tokens += static_cast<int64_t>(event->tokens.size());
    // The engine may end an event's text inside a character (it holds back the bytes that could
    // start a stop string); the rest of the character comes with the next event.
    std::string text = std::move(state.held_text) + event->text;
    const size_t complete =
        event->finish == FinishReason::kNone ? CompleteUtf8Prefix(text) : text.size();
    state.held_text = text.substr(complete);
    text.resize(complete);
    if (!text.empty()) {
      out += SseEvent(
          ChunkJson(state.endpoint, state.header, text, nullptr, false, state.include_usage));
    }
    if (event->finish == FinishReason::kCancelled) {
      out += SseEvent(ErrorJson(CancelledError(*state.stream)));
    } else if (event->finish != FinishReason::kNone) {
      out += SseEvent(ChunkJson(state.endpoint, state.header, "", FinishReasonName(event->finish),
                                false, state.include_usage));
      if (state.include_usage) {
        out += SseEvent(UsageChunkJson(state.endpoint, state.header,
                                       TokenUsage{state.prompt_tokens, state.completion_tokens}));
      }
    }
    if (event->finish != FinishReason::kNone) {
      out += kSseDone;
      state.finished = true;
    }
  }
  if (!out.empty() && !sink.write(out.data(), out.size())) return false;
  if (state.finished) sink.done();
  return true;
}

void HttpServer::StreamClosed() {
  bool none_open = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    none_open = --open_streams_ == 0;
  }
  if (none_open) streams_closed_.notify_all();
}

void HttpServer::Tokenize(const httplib::Request& request, httplib::Response& response) {
  const TokenizeRequest tokenize = ParseTokenizeRequest(ParseJsonBody(request.body));
  const auto* text = std::get_if<std::string>(&tokenize.input);
  const std::vector<int> tokens = EncodePrompt(
      text ? *text : chat_template_.Render(std::get<std::vector<ChatMessage>>(tokenize.input)),
      tokenize.add_special_tokens);
  SendJson(response, 200,
           {{"count", tokens.size()}, {"max_model_len", options_.context}, {"tokens", tokens}});
}

void HttpServer::Detokenize(const httplib::Request& request, httplib::Response& response) {
  const DetokenizeRequest detokenize = ParseDetokenizeRequest(ParseJsonBody(request.body));
  SendJson(response, 200, {{"prompt", tokenizer_.Decode(detokenize.tokens)}});
}

void HttpServer::Models(httplib::Response& response) {
  SendJson(response, 200, ModelListJson(options_.model_id, started_, options_.context));
}

void HttpServer::Health(httplib::Response& response) {
  const std::string failure = engine_.failure();
  if (!failure.empty()) {
    SendJson(response, 500, {{"status", "failed"}, {"message", failure}});
  } else if (draining_) {
    SendJson(response, 503, {{"status", "draining"}});
  } else {
    SendJson(response, 200, {{"status", "ok"}});
  }
}

void HttpServer::Metrics(httplib::Response& response) {
  response.set_content(metrics_.Render(engine_.snapshot()),
                       "text/plain; version=0.0.4; charset=utf-8");
}

std::vector<int> HttpServer::EncodePrompt(const std::string& text, bool add_bos) const {
  std::vector<int> tokens;
  if (add_bos && tokenizer_.bos_id() >= 0) tokens.push_back(tokenizer_.bos_id());
  const std::vector<int> ids = tokenizer_.Encode(text);
  tokens.insert(tokens.end(), ids.begin(), ids.end());
  return tokens;
}

std::string HttpServer::NextResponseId(Endpoint endpoint) {
  char id[17];
  std::snprintf(id, sizeof(id), "%016llx", static_cast<unsigned long long>(next_id_.fetch_add(1)));
  return std::string(endpoint == Endpoint::kChat ? "chatcmpl-" : "cmpl-") + id;
}

}  // namespace mixattn::server
