#include "server/openai_request.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <utility>

#include "server/api_error.h"
#include "server/utf8.h"

namespace mixattn::server {
namespace {

using Json = nlohmann::json;

// More stop strings than this is a mistake, and each one costs a search per generated token.
constexpr size_t kMaxStopStrings = 16;

// The value of `name` in `body`, or null when it is absent or JSON null.
const Json* Field(const Json& body, const std::string& name) {
  const auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

[[noreturn]] void FailType(const std::string& param, const std::string& expected) {
  FailBadRequest(param, "invalid_type", "'" + param + "' must be " + expected);
}

[[noreturn]] void FailMissing(const std::string& param, const std::string& what) {
  FailBadRequest(param, "missing_required_parameter", "'" + param + "' is required: " + what);
}

int64_t ReadInteger(const Json& value, const std::string& param, int64_t min, int64_t max) {
  bool below_min = false;
  if (value.is_number_unsigned()) {
    const uint64_t number = value.get<uint64_t>();
    if (number <= static_cast<uint64_t>(max) && static_cast<int64_t>(number) >= min)
      return static_cast<int64_t>(number);
    below_min = number <= static_cast<uint64_t>(max);
  } else if (value.is_number_integer()) {
    const int64_t number = value.get<int64_t>();
    if (number >= min && number <= max) return number;
    below_min = number < min;
  } else if (value.is_number_float() && std::trunc(value.get<double>()) == value.get<double>()) {
    // 5.0 reads as the integer 5 (as in OpenAI's own validation); integers beyond 64 bits parse
    // as floating point, and are out of range rather than of the wrong type.
    const double number = value.get<double>();
    constexpr double kExactIntegers = 9007199254740992.0;  // 2^53
    if (std::fabs(number) < kExactIntegers && number >= static_cast<double>(min) &&
        number <= static_cast<double>(max)) {
      return static_cast<int64_t>(number);
    }
    below_min = number < static_cast<double>(min);
  } else {
    FailType(param, "an integer");
  }
  FailBadRequest(param, "invalid_value",
                 param + " = " + value.dump() +
                     (below_min ? " must be at least " + std::to_string(min)
                                : " is larger than " + std::to_string(max)));
}

double ReadNumber(const Json& value, const std::string& param) {
  if (!value.is_number()) FailType(param, "a number");
  return value.get<double>();
}

bool ReadBool(const Json& value, const std::string& param) {
  if (!value.is_boolean()) FailType(param, "true or false");
  return value.get<bool>();
}

std::string ReadString(const Json& value, const std::string& param) {
  if (!value.is_string()) FailType(param, "a string");
  return value.get<std::string>();
}

std::vector<int> ReadTokenIds(const Json& value, const std::string& param) {
  if (!value.is_array()) FailType(param, "a list of token ids");
  std::vector<int> tokens;
  tokens.reserve(value.size());
  for (size_t i = 0; i < value.size(); ++i) {
    tokens.push_back(
        static_cast<int>(ReadInteger(value[i], param + "[" + std::to_string(i) + "]", 0, INT_MAX)));
  }
  return tokens;
}

// OpenAI fields served only at their default value: the name, the values that mean "default"
// (besides null), and why another value is refused.
struct DefaultOnlyField {
  const char* name;
  Json defaults;  // a list
  const char* why;
};

void CheckDefaultOnlyFields(const Json& body) {
  static const auto* fields = new std::vector<DefaultOnlyField>{
      {"n", Json::array({1}), "this server returns one choice per request"},
      {"best_of", Json::array({1}), "this server returns one choice per request"},
      {"echo", Json::array({false}), "the prompt is not echoed back"},
      {"logprobs", Json::array({false, 0}), "log probabilities are not returned"},
      {"top_logprobs", Json::array({0}), "log probabilities are not returned"},
      {"presence_penalty", Json::array({0}), "use repetition_penalty instead"},
      {"frequency_penalty", Json::array({0}), "use repetition_penalty instead"},
      {"logit_bias", Json::array({Json::object()}), "logit bias is not implemented"},
      {"suffix", Json::array({""}), "insertion after a suffix is not implemented"},
      {"tools", Json::array({Json::array()}), "tool calls are not implemented"},
  };
  for (const DefaultOnlyField& field : *fields) {
    const Json* value = Field(body, field.name);
    if (!value) continue;
    bool is_default = false;
    for (const Json& accepted : field.defaults) is_default = is_default || *value == accepted;
    if (!is_default) {
      FailBadRequest(field.name, "unsupported_value",
                     std::string("'") + field.name + "' = " + value->dump() +
                         " is not supported: " + field.why + " (leave it out or send " +
                         field.defaults.front().dump() + ")");
    }
  }
}

std::vector<std::string> ReadStop(const Json& value) {
  std::vector<std::string> stop;
  if (value.is_string()) {
    stop.push_back(value.get<std::string>());
  } else if (value.is_array()) {
    for (size_t i = 0; i < value.size(); ++i)
      stop.push_back(ReadString(value[i], "stop[" + std::to_string(i) + "]"));
  } else {
    FailType("stop", "a string or a list of strings");
  }
  if (stop.size() > kMaxStopStrings) {
    FailBadRequest("stop", "invalid_value",
                   "'stop' has " + std::to_string(stop.size()) + " strings; at most " +
                       std::to_string(kMaxStopStrings) + " are allowed");
  }
  for (const std::string& s : stop) {
    if (s.empty()) FailBadRequest("stop", "invalid_value", "stop strings must not be empty");
  }
  return stop;
}

// `max_tokens_fields`: the names that set max_tokens, preferred first.
GenerationParams ReadGenerationParams(const Json& body,
                                      std::initializer_list<const char*> max_tokens_fields) {
  CheckDefaultOnlyFields(body);
  GenerationParams params;
  if (const Json* model = Field(body, "model")) ReadString(*model, "model");
  for (const char* name : max_tokens_fields) {
    if (const Json* value = Field(body, name)) {
      params.max_tokens = ReadInteger(*value, name, 1, INT64_MAX);
      break;
    }
  }
  if (const Json* value = Field(body, "temperature")) {
    const double temperature = ReadNumber(*value, "temperature");
    if (!(temperature >= 0 && temperature <= 2)) {
      FailBadRequest("temperature", "invalid_value",
                     "temperature = " + value->dump() + " must be in [0, 2] (0 = greedy)");
    }
    params.sampling.temperature = static_cast<float>(temperature);
  }
  // The engine checks the ranges of these (and names the field); here only their types.
  if (const Json* value = Field(body, "top_p"))
    params.sampling.top_p = static_cast<float>(ReadNumber(*value, "top_p"));
  if (const Json* value = Field(body, "min_p"))
    params.sampling.min_p = static_cast<float>(ReadNumber(*value, "min_p"));
  if (const Json* value = Field(body, "repetition_penalty")) {
    params.sampling.repetition_penalty =
        static_cast<float>(ReadNumber(*value, "repetition_penalty"));
  }
  if (const Json* value = Field(body, "top_k")) {
    // vLLM spells "off" as -1, the engine as 0.
    params.sampling.top_k =
        std::max(0, static_cast<int>(ReadInteger(*value, "top_k", -1, INT_MAX)));
  }
  if (const Json* value = Field(body, "seed")) {
    if (value->is_number_unsigned()) {
      params.seed = value->get<uint64_t>();
    } else {
      // A negative seed is as good a seed as any: keep its bits.
      params.seed = static_cast<uint64_t>(ReadInteger(*value, "seed", INT64_MIN, INT64_MAX));
    }
  }
  if (const Json* value = Field(body, "stop")) params.stop = ReadStop(*value);
  if (const Json* value = Field(body, "ignore_eos"))
    params.ignore_eos = ReadBool(*value, "ignore_eos");
  if (const Json* value = Field(body, "stream")) params.stream = ReadBool(*value, "stream");
  if (const Json* options = Field(body, "stream_options")) {
    if (!options->is_object()) FailType("stream_options", "an object");
    if (!params.stream) {
      FailBadRequest("stream_options", "invalid_value",
                     "'stream_options' is only allowed when 'stream' is true");
    }
    if (const Json* value = Field(*options, "include_usage"))
      params.include_usage = ReadBool(*value, "stream_options.include_usage");
  }
  return params;
}

std::string ReadMessageContent(const Json& message, const std::string& param, ChatRole role) {
  const Json* content = Field(message, "content");
  if (!content) {
    // An assistant turn that only called tools has no content.
    if (role == ChatRole::kAssistant) return "";
    FailMissing(param + ".content", "the message text");
  }
  if (content->is_string()) return content->get<std::string>();
  if (!content->is_array()) FailType(param + ".content", "a string or a list of text parts");
  std::string text;
  for (size_t i = 0; i < content->size(); ++i) {
    const std::string part_param = param + ".content[" + std::to_string(i) + "]";
    const Json& part = (*content)[i];
    if (!part.is_object()) FailType(part_param, "an object {\"type\": \"text\", \"text\": ...}");
    const Json* type = Field(part, "type");
    if (!type || ReadString(*type, part_param + ".type") != "text") {
      FailBadRequest(part_param + ".type", "unsupported_value",
                     part_param + ": only parts of type 'text' are supported");
    }
    const Json* part_text = Field(part, "text");
    if (!part_text) FailMissing(part_param + ".text", "the text of the part");
    text += ReadString(*part_text, part_param + ".text");
  }
  return text;
}

std::vector<ChatMessage> ReadMessages(const Json* messages) {
  if (!messages) FailMissing("messages", "a list of {\"role\", \"content\"} objects");
  if (!messages->is_array()) FailType("messages", "a list of {\"role\", \"content\"} objects");
  if (messages->empty())
    FailBadRequest("messages", "invalid_value", "'messages' must hold at least one message");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < messages->size(); ++i) {
    const std::string param = "messages[" + std::to_string(i) + "]";
    const Json& message = (*messages)[i];
    if (!message.is_object()) FailType(param, "an object with 'role' and 'content'");
    const Json* role_field = Field(message, "role");
    if (!role_field) FailMissing(param + ".role", "system, developer, user or assistant");
    const std::string role = ReadString(*role_field, param + ".role");
    ChatMessage parsed;
    if (role == "system" || role == "developer") {
      parsed.role = ChatRole::kSystem;
    } else if (role == "user") {
      parsed.role = ChatRole::kUser;
    } else if (role == "assistant") {
      parsed.role = ChatRole::kAssistant;
    } else {
      FailBadRequest(
          param + ".role", "unsupported_value",
          param + ".role = '" + role + "' is not supported (system, developer, user or assistant)");
    }
    parsed.content = ReadMessageContent(message, param, parsed.role);
    out.push_back(std::move(parsed));
  }
  return out;
}

}  // namespace

Json ParseJsonBody(std::string_view body) {
  if (!IsValidUtf8(body))
    FailBadRequest("", "invalid_encoding", "the request body is not valid UTF-8");
  Json root;
  try {
    root = Json::parse(body);
  } catch (const Json::parse_error& e) {
    // nlohmann prefixes its messages with "[json.exception.parse_error.101] ".
    const std::string what = e.what();
    const size_t prefix = what.find("] ");
    FailBadRequest("", "invalid_json",
                   "the request body is not valid JSON: " +
                       (prefix == std::string::npos ? what : what.substr(prefix + 2)));
  }
  if (!root.is_object())
    FailBadRequest("", "invalid_json", "the request body must be a JSON object");
  return root;
}

CompletionRequest ParseCompletionRequest(const Json& body) {
  CompletionRequest request;
  request.params = ReadGenerationParams(body, {"max_tokens"});
  const Json* prompt = Field(body, "prompt");
  if (!prompt) FailMissing("prompt", "the text (or token ids) to complete");
  if (prompt->is_string()) {
    request.prompt = prompt->get<std::string>();
  } else if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) {
    request.prompt = (*prompt)[0].get<std::string>();
  } else if (prompt->is_array() && !prompt->empty() && !(*prompt)[0].is_string()) {
    request.prompt = ReadTokenIds(*prompt, "prompt");
  } else {
    FailBadRequest("prompt", "invalid_type",
                   "'prompt' must be a string or a non-empty list of token ids (one prompt per "
                   "request)");
  }
  return request;
}

ChatRequest ParseChatRequest(const Json& body) {
  ChatRequest request;
  request.params = ReadGenerationParams(body, {"max_completion_tokens", "max_tokens"});
  request.messages = ReadMessages(Field(body, "messages"));
  return request;
}

TokenizeRequest ParseTokenizeRequest(const Json& body) {
  TokenizeRequest request;
  if (const Json* prompt = Field(body, "prompt")) {
    request.input = ReadString(*prompt, "prompt");
  } else if (const Json* messages = Field(body, "messages")) {
    request.input = ReadMessages(messages);
  } else {
    FailMissing("prompt", "the text to tokenize (or 'messages', a chat)");
  }
  if (const Json* value = Field(body, "add_special_tokens"))
    request.add_special_tokens = ReadBool(*value, "add_special_tokens");
  return request;
}

DetokenizeRequest ParseDetokenizeRequest(const Json& body) {
  const Json* tokens = Field(body, "tokens");
  if (!tokens) FailMissing("tokens", "the token ids to turn into text");
  return DetokenizeRequest{ReadTokenIds(*tokens, "tokens")};
}

}  // namespace mixattn::server
