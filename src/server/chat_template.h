// Chat template: how a conversation becomes the one prompt text a base model continues.
//
// Hugging Face stores a Jinja program with each chat model; an interpreter for that is a project
// of its own, and the models trained here only need what FastChat's conversation templates
// express: a text around each message, chosen by its role, and a cue for the answer. So a model
// directory may hold chat_template.json:
//
//   {"system": "{content}\n\n", "user": "User: {content}\n", "assistant": "Assistant: {content}\n",
//    "generation_prompt": "Assistant:", "stop": ["\nUser:"]}
//
// Rendering writes each message through its role's format ("{content}" becomes the message text;
// nothing else in a format is special) and then the generation prompt. The "stop" strings (may be
// empty or absent) end the answer where the model starts the next turn; requests add their own.
// Without the file the server uses Default(), the template above.
#pragma once

#include <string>
#include <vector>

namespace mixattn::server {

enum class ChatRole { kSystem, kUser, kAssistant };

struct ChatMessage {
  ChatRole role = ChatRole::kUser;
  std::string content;
};

struct ChatTemplate {
  std::string system;
  std::string user;
  std::string assistant;
  std::string generation_prompt;
  std::vector<std::string> stop;

  static ChatTemplate Default();
  // Parses chat_template.json text; errors (mixattn::Error) name `source` and the field: a
  // missing role format, a value of the wrong type, an empty stop string, an unknown field.
  static ChatTemplate Parse(const std::string& text, const std::string& source);
  // DIR/chat_template.json if it exists, else Default().
  static ChatTemplate LoadFromModelDir(const std::string& dir);

  // The prompt for `messages`, ending with the generation prompt.
  std::string Render(const std::vector<ChatMessage>& messages) const;
};

}  // namespace mixattn::server
