// OpenAI request bodies -> validated requests.
//
// Follows OpenAI's API reference for POST /v1/completions and /v1/chat/completions, and vLLM's
// for POST /tokenize and /detokenize. Fields it knows are checked strictly (type, range, the one
// value of `n` it serves); fields it does not know are ignored, as OpenAI does; null counts as
// absent. OpenAI fields this server does not implement (n > 1, logprobs, penalties, tools, ...)
// are accepted only at their default value, so a client never silently gets something other than
// what it asked for. Every problem is an ApiError (400) whose `param` names the field.
//
// What needs the model (token counts against the context, token ids against the vocabulary) is
// checked later, by the HTTP layer and the engine.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "engine/sampler.h"
#include "server/chat_template.h"

namespace mixattn::server {

// The generation fields both endpoints share.
struct GenerationParams {
  std::optional<int64_t> max_tokens;  // >= 1; absent: as many as the context leaves
  SamplingParams sampling;            // temperature, top_p and the vLLM extras; seed below
  std::optional<uint64_t> seed;       // absent: the server draws one
  std::vector<std::string> stop;      // non-empty strings
  bool ignore_eos = false;            // vLLM's extension: keep going past end-of-sequence
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with usage
};

struct CompletionRequest {
  GenerationParams params;
  // Text (the server adds BOS, as `mixattn generate --prompt` does) or token ids (used as given).
  std::variant<std::string, std::vector<int>> prompt;
};

struct ChatRequest {
  GenerationParams params;
  std::vector<ChatMessage> messages;  // at least one
};

struct TokenizeRequest {
  std::variant<std::string, std::vector<ChatMessage>> input;  // "prompt" or "messages"
  bool add_special_tokens = true;                             // BOS first
};

struct DetokenizeRequest {
  std::vector<int> tokens;
};

// The request body as a JSON object: 400 when it is not UTF-8, not JSON, or not an object.
nlohmann::json ParseJsonBody(std::string_view body);

CompletionRequest ParseCompletionRequest(const nlohmann::json& body);
ChatRequest ParseChatRequest(const nlohmann::json& body);
TokenizeRequest ParseTokenizeRequest(const nlohmann::json& body);
DetokenizeRequest ParseDetokenizeRequest(const nlohmann::json& body);

}  // namespace mixattn::server
