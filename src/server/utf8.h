// UTF-8 checks at the server's edges: request bodies coming in, streamed text going out.
#pragma once

#include <cstddef>
#include <string_view>

namespace mixattn::server {

// True when `text` is well-formed UTF-8 (RFC 3629: shortest form, no surrogates, <= U+10FFFF).
bool IsValidUtf8(std::string_view text);

// The length of the longest prefix of `text` that does not end inside a multi-byte character:
// all of it, unless its last bytes are a lead byte followed by fewer continuation bytes than the
// lead announces. A stream sends that prefix and keeps the rest for the next piece, so no
// character is ever split across two JSON strings (where each half would become U+FFFD).
size_t CompleteUtf8Prefix(std::string_view text);

}  // namespace mixattn::server
