// The JSON that OpenAI clients expect back: whole responses, streamed chunks, usage, models.
//
// /v1/completions answers objects "text_completion" with choices[0].text; /v1/chat/completions
// answers "chat.completion" with choices[0].message, and streams "chat.completion.chunk" objects
// whose choices[0].delta carries the role once, then the text. A stream is a sequence of
// server-sent events, "data: {json}\n\n", ending with "data: [DONE]\n\n". With
// stream_options.include_usage every chunk carries "usage": null and one last chunk, with no
// choices, carries the usage (OpenAI's documented shape, which its clients parse).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace mixattn::server {

enum class Endpoint { kCompletions, kChat };

// What every object of one response repeats.
struct ResponseHeader {
  std::string id;       // "cmpl-..." / "chatcmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;
};

struct TokenUsage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

nlohmann::json UsageJson(const TokenUsage& usage);

// A whole (non-streamed) response. `finish_reason` is "stop" or "length".
nlohmann::json ResponseJson(Endpoint endpoint, const ResponseHeader& header,
                            const std::string& text, const char* finish_reason,
                            const TokenUsage& usage);

// One streamed chunk carrying `text` (chat: as delta.content) and, on the last one,
// `finish_reason` (nullptr before). A chat stream's first chunk carries the role: `first`.
nlohmann::json ChunkJson(Endpoint endpoint, const ResponseHeader& header, const std::string& text,
                         const char* finish_reason, bool first, bool include_usage);

// The chunk after the last one when include_usage is set: no choices, the usage.
nlohmann::json UsageChunkJson(Endpoint endpoint, const ResponseHeader& header,
                              const TokenUsage& usage);

// GET /v1/models for the one model served; max_model_len is vLLM's field for its context.
nlohmann::json ModelListJson(const std::string& model, int64_t created, int64_t max_model_len);

// "data: <json>\n\n". Invalid UTF-8 cannot reach here (the engine emits whole characters), but
// dumping replaces it rather than throwing, so no response is ever lost to an exception.
std::string SseEvent(const nlohmann::json& data);
inline constexpr const char* kSseDone = "data: [DONE]\n\n";

// The JSON text of a response body, with the same replacement rule as SseEvent.
std::string DumpJson(const nlohmann::json& data);

}  // namespace mixattn::server
