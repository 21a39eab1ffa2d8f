// Errors a user can act on.
//
// Every failure that a user can cause (a bad flag, a bad config field, a corrupt file) is
// reported as a mixattn::Error whose message names what is wrong: the file, the field, the layer
// and what was expected. Code below the CLI throws; the CLI (and later the server) catches at its
// top level and prints the message. Programming errors (broken invariants) use MIXATTN_CHECK.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace mixattn {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {
inline void AppendAll(std::ostringstream&) {}
template <typename T, typename... Rest>
void AppendAll(std::ostringstream& out, T&& first, Rest&&... rest) {
  out << std::forward<T>(first);
  AppendAll(out, std::forward<Rest>(rest)...);
}
}  // namespace detail

// Builds a message from its parts with operator<<: Fail("layer ", i, ": window must be > 0").
template <typename... Parts>
[[noreturn]] void Fail(Parts&&... parts) {
  std::ostringstream out;
  detail::AppendAll(out, std::forward<Parts>(parts)...);
  throw Error(out.str());
}

}  // namespace mixattn

// Internal invariant: a failure here is a bug in mixattn, not bad input.
#define MIXATTN_CHECK(cond)                                                                    \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      ::mixattn::Fail("internal error: check failed: " #cond " at ", __FILE__, ":", __LINE__); \
    }                                                                                          \
  } while (0)
