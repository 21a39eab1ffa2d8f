#include "server/api_error.h"

#include <utility>

namespace mixattn::server {
namespace {

nlohmann::json NullIfEmpty(const std::string& text) {
  return text.empty() ? nlohmann::json(nullptr) : nlohmann::json(text);
}

}  // namespace

ApiError::ApiError(int status, const std::string& message, std::string type, std::string param,
                   std::string code)
    : std::runtime_error(message),
      status_(status),
      type_(std::move(type)),
      param_(std::move(param)),
      code_(std::move(code)) {}

void FailBadRequest(const std::string& param, const std::string& code, const std::string& message) {
  throw ApiError(400, message, "invalid_request_error", param, code);
}

ApiError ErrorForStatus(int status, const std::string& message) {
  switch (status) {
    case 401:
      return ApiError(status, message, "authentication_error", "", "invalid_api_key");
    case 404:
      return ApiError(status, message, "invalid_request_error", "", "not_found");
    case 405:
      return ApiError(status, message, "invalid_request_error", "", "method_not_allowed");
    case 413:
      return ApiError(status, message, "invalid_request_error", "", "request_too_large");
    case 429:
      return ApiError(status, message, "rate_limit_error", "", "rate_limit_exceeded");
    default:
      break;
  }
  return ApiError(status, message, status >= 500 ? "server_error" : "invalid_request_error");
}

nlohmann::json ErrorJson(const ApiError& error) {
  return {{"error",
           {{"message", error.what()},
            {"type", error.type()},
            {"param", NullIfEmpty(error.param())},
            {"code", NullIfEmpty(error.code())}}}};
}

}  // namespace mixattn::server
