#include "server/openai_response.h"

namespace mixattn::server {
namespace {

using Json = nlohmann::json;

Json Header(Endpoint endpoint, const ResponseHeader& header, bool chunk) {
  const char* object = endpoint == Endpoint::kCompletions ? "text_completion"
                       : chunk                            ? "chat.completion.chunk"
                                                          : "chat.completion";
  return {
      {"id", header.id}, {"object", object}, {"created", header.created}, {"model", header.model}};
}

Json FinishReason(const char* finish_reason) {
  return finish_reason ? Json(finish_reason) : Json(nullptr);
}

}  // namespace

Json UsageJson(const TokenUsage& usage) {
  return {{"prompt_tokens", usage.prompt_tokens},
          {"completion_tokens", usage.completion_tokens},
          {"total_tokens", usage.prompt_tokens + usage.completion_tokens}};
}

Json ResponseJson(Endpoint endpoint, const ResponseHeader& header, const std::string& text,
                  const char* finish_reason, const TokenUsage& usage) {
  Json out = Header(endpoint, header, false);
  Json choice = {{"index", 0}};
  if (endpoint == Endpoint::kCompletions) {
    choice["text"] = text;
    choice["logprobs"] = nullptr;
  } else {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  }
  choice["finish_reason"] = FinishReason(finish_reason);
  out["choices"] = Json::array({choice});
  out["usage"] = UsageJson(usage);
  return out;
}

Json ChunkJson(Endpoint endpoint, const ResponseHeader& header, const std::string& text,
               const char* finish_reason, bool first, bool include_usage) {
  Json out = Header(endpoint, header, true);
  Json choice = {{"index", 0}};
  if (endpoint == Endpoint::kCompletions) {
    choice["text"] = text;
    choice["logprobs"] = nullptr;
  } else {
    Json delta = Json::object();
    if (first) delta["role"] = "assistant";
    if (first || !text.empty()) delta["content"] = text;
    choice["delta"] = delta;
  }
  choice["finish_reason"] = FinishReason(finish_reason);
  out["choices"] = Json::array({choice});
  if (include_usage) out["usage"] = nullptr;
  return out;
}

Json UsageChunkJson(Endpoint endpoint, const ResponseHeader& header, const TokenUsage& usage) {
  Json out = Header(endpoint, header, true);
  out["choices"] = Json::array();
  out["usage"] = UsageJson(usage);
  return out;
}

Json ModelListJson(const std::string& model, int64_t created, int64_t max_model_len) {
  return {{"object", "list"},
          {"data", Json::array({{{"id", model},
                                 {"object", "model"},
                                 {"created", created},
                                 {"owned_by", "mixattn"},
                                 {"max_model_len", max_model_len}}})}};
}

std::string DumpJson(const Json& data) {
  return data.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string SseEvent(const Json& data) { return "data: " + DumpJson(data) + "\n\n"; }

}  // namespace mixattn::server
