// Colours, sizes and text helpers shared by the line-chart and heat-map renderers (internal).
#pragma once

#include <string>
#include <string_view>

#include "plot/bitmap_font.h"
#include "plot/canvas.h"

namespace mixattn::plot::style {

inline constexpr Rgb kBackground{0xFF, 0xFF, 0xFF};
inline constexpr Rgb kTitle{0x00, 0x00, 0x00};
inline constexpr Rgb kText{0x33, 0x33, 0x33};         // axis labels, tick labels, legend
inline constexpr Rgb kFrame{0x80, 0x80, 0x80};        // plot-area border and tick marks
inline constexpr Rgb kGrid{0xE6, 0xE6, 0xE6};         // grid lines at the ticks
inline constexpr Rgb kNoDataHatch{0xA6, 0xA6, 0xA6};  // diagonal lines over no-data cells

inline constexpr int kTitleScale = 2;
inline constexpr int kMargin = 16;  // around the whole image
inline constexpr int kTickLength = 5;
inline constexpr int kGap = 8;  // between a label and what it labels

// `text` shortened with "..." to fit in `max_width` pixels at `scale`.
inline std::string FitText(std::string_view text, int max_width, int scale) {
  if (TextWidth(text, scale) <= max_width) return std::string(text);
  const int room = max_width / (kGlyphAdvance * scale) - 3;
  return room <= 0 ? std::string() : std::string(text.substr(0, static_cast<size_t>(room))) + "...";
}

// A title: at kTitleScale when it fits in `max_width`, else at 1x, shortened if still too wide.
struct FittedTitle {
  std::string text;
  int scale = kTitleScale;
};
inline FittedTitle FitTitle(std::string_view text, int max_width) {
  if (TextWidth(text, kTitleScale) <= max_width) return {std::string(text), kTitleScale};
  return {FitText(text, max_width, 1), 1};
}

}  // namespace mixattn::plot::style
