// Errors an API client sees: OpenAI's JSON shape with the HTTP status OpenAI uses.
//
// Every way a request can fail ends as one ApiError, answered as
//   {"error": {"message": "...", "type": "...", "param": "max_tokens" | null, "code": "..." |
//   null}}
// so that the official clients raise their usual exception per status (BadRequestError for 400,
// AuthenticationError for 401, NotFoundError for 404, RateLimitError for 429, ...). The message
// follows CONVENTIONS.md rule 12: it names the field, the value and what was expected.
#pragma once

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace mixattn::server {

class ApiError : public std::runtime_error {
 public:
  // `param` and `code` may be empty: they become JSON null.
  ApiError(int status, const std::string& message, std::string type, std::string param = "",
           std::string code = "");

  int status() const { return status_; }
  const std::string& type() const { return type_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }

 private:
  int status_;
  std::string type_;
  std::string param_;
  std::string code_;
};

// A 400 invalid_request_error about the field `param` (empty when no one field is at fault).
[[noreturn]] void FailBadRequest(const std::string& param, const std::string& code,
                                 const std::string& message);

// The error for a status that no handler chose a message for (cpp-httplib's own 400, 404, 413,
// 414, ...), with OpenAI's error type for that status.
ApiError ErrorForStatus(int status, const std::string& message);

nlohmann::json ErrorJson(const ApiError& error);

}  // namespace mixattn::server
