#include "server/chat_template.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace mixattn::server {
namespace {

constexpr std::string_view kContentPlaceholder = "{content}";

std::string Fill(const std::string& format, const std::string& content) {
  std::string out;
  size_t from = 0;
  for (size_t at = format.find(kContentPlaceholder); at != std::string::npos;
       at = format.find(kContentPlaceholder, from)) {
    out.append(format, from, at - from);
    out += content;
    from = at + kContentPlaceholder.size();
  }
  out.append(format, from);
  return out;
}

}  // namespace

ChatTemplate ChatTemplate::Default() {
  return ChatTemplate{
      "{content}\n\n", "User: {content}\n", "Assistant: {content}\n", "Assistant:", {"\nUser:"}};
}

ChatTemplate ChatTemplate::Parse(const std::string& text, const std::string& source) {
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    Fail(source, ": not valid JSON: ", e.what());
  }
  if (!root.is_object()) Fail(source, ": expected a JSON object");
  for (const auto& [key, value] : root.items()) {
    if (key != "system" && key != "user" && key != "assistant" && key != "generation_prompt" &&
        key != "stop") {
      Fail(source, ": unknown field '", key,
           "' (known: system, user, assistant, generation_prompt, stop)");
    }
  }
  ChatTemplate chat;
  const std::pair<const char*, std::string*> formats[] = {
      {"system", &chat.system},
      {"user", &chat.user},
      {"assistant", &chat.assistant},
      {"generation_prompt", &chat.generation_prompt}};
  for (const auto& [name, field] : formats) {
    const auto it = root.find(name);
    if (it == root.end()) Fail(source, ": missing field '", name, "'");
    if (!it->is_string()) Fail(source, ": field '", name, "' must be a string");
    *field = it->get<std::string>();
  }
  if (const auto it = root.find("stop"); it != root.end()) {
    if (!it->is_array()) Fail(source, ": field 'stop' must be a list of strings");
    for (const nlohmann::json& stop : *it) {
      if (!stop.is_string() || stop.get<std::string>().empty())
        Fail(source, ": every entry of 'stop' must be a non-empty string");
      chat.stop.push_back(stop.get<std::string>());
    }
  }
  return chat;
}

ChatTemplate ChatTemplate::LoadFromModelDir(const std::string& dir) {
  const std::filesystem::path path = std::filesystem::path(dir) / "chat_template.json";
  if (!std::filesystem::exists(path)) return Default();
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail(path.string(), ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  return Parse(text.str(), path.string());
}

std::string ChatTemplate::Render(const std::vector<ChatMessage>& messages) const {
  std::string prompt;
  for (const ChatMessage& message : messages) {
    switch (message.role) {
      case ChatRole::kSystem:
        prompt += Fill(system, message.content);
        break;
      case ChatRole::kUser:
        prompt += Fill(user, message.content);
        break;
      case ChatRole::kAssistant:
        prompt += Fill(assistant, message.content);
        break;
    }
  }
  return prompt + generation_prompt;
}

}  // namespace mixattn::server
