// A built-in bitmap font for chart text: 5x7 glyphs (ASCII 32..126) with two rows of descender
// below the baseline, drawn at integer scales (1x for labels, 2x for titles).
//
// Glyph cell: kGlyphWidth x kGlyphRows pixels at scale 1; capitals and digits fill rows 0..6,
// lowercase x-height is rows 2..6, descenders (g j p q y , _) reach rows 7..8. Text advances
// kGlyphAdvance pixels per character (one blank column between glyphs).
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace mixattn::plot {

inline constexpr int kGlyphWidth = 5;
inline constexpr int kGlyphRows = 9;       // 7 above the baseline + 2 of descender
inline constexpr int kGlyphCapHeight = 7;  // rows of a capital letter or digit
inline constexpr int kGlyphAdvance = kGlyphWidth + 1;

// One glyph: kGlyphRows rows, top first; bit 4 of a row is its leftmost pixel, bit 0 its rightmost.
using GlyphRows = std::array<uint8_t, kGlyphRows>;

// The glyph of `c`; characters outside ASCII 32..126 draw as '?'.
const GlyphRows& Glyph(char c);

// Width in pixels of `text` drawn at `scale` (no trailing gap after the last glyph).
int TextWidth(std::string_view text, int scale);

// Height in pixels of one line of text at `scale`, descenders included.
inline int TextHeight(int scale) { return kGlyphRows * scale; }

}  // namespace mixattn::plot
