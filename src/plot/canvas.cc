#include "plot/canvas.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "plot/bitmap_font.h"

namespace mixattn::plot {

Rgb Image::Pixel(int x, int y) const {
  MIXATTN_CHECK(x >= 0 && x < width && y >= 0 && y < height);
  const size_t at =
      (static_cast<size_t>(y) * static_cast<size_t>(width) + static_cast<size_t>(x)) * 3;
  return Rgb{rgb[at], rgb[at + 1], rgb[at + 2]};
}

Canvas::Canvas(int width, int height, Rgb background) : clip_{0, 0, width, height} {
  MIXATTN_CHECK(width > 0 && height > 0);
  image_.width = width;
  image_.height = height;
  image_.rgb.resize(static_cast<size_t>(width) * static_cast<size_t>(height) * 3);
  for (size_t i = 0; i < image_.rgb.size(); i += 3) {
    image_.rgb[i] = background.r;
    image_.rgb[i + 1] = background.g;
    image_.rgb[i + 2] = background.b;
  }
}

void Canvas::SetPixel(int x, int y, Rgb colour) {
  if (x < 0 || y < 0 || x >= width() || y >= height() || !clip_.Contains(x, y)) return;
  const size_t at =
      (static_cast<size_t>(y) * static_cast<size_t>(width()) + static_cast<size_t>(x)) * 3;
  image_.rgb[at] = colour.r;
  image_.rgb[at + 1] = colour.g;
  image_.rgb[at + 2] = colour.b;
}

void Canvas::FillRect(const Rect& rect, Rgb colour) {
  const int x0 = std::max({rect.x, clip_.x, 0}),
            x1 = std::min({rect.right(), clip_.right(), width()});
  const int y0 = std::max({rect.y, clip_.y, 0}),
            y1 = std::min({rect.bottom(), clip_.bottom(), height()});
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x) SetPixel(x, y, colour);
}

void Canvas::StrokeRect(const Rect& rect, Rgb colour) {
  FillRect({rect.x, rect.y, rect.width, 1}, colour);
  FillRect({rect.x, rect.bottom() - 1, rect.width, 1}, colour);
  FillRect({rect.x, rect.y, 1, rect.height}, colour);
  FillRect({rect.right() - 1, rect.y, 1, rect.height}, colour);
}

void Canvas::DrawLine(double x0, double y0, double x1, double y1, int thickness, Rgb colour) {
  // Stamp a thickness x thickness square at every step of the longer axis: solid colour (no
  // blending), so a test can find a series by its exact colour.
  const double length = std::max(std::abs(x1 - x0), std::abs(y1 - y0));
  const int steps = std::max(1, static_cast<int>(std::ceil(length)));
  const int half = thickness / 2;
  for (int i = 0; i <= steps; ++i) {
    const double t = static_cast<double>(i) / steps;
    const int cx = static_cast<int>(std::lround(x0 + (x1 - x0) * t));
    const int cy = static_cast<int>(std::lround(y0 + (y1 - y0) * t));
    FillRect({cx - half, cy - half, thickness, thickness}, colour);
  }
}

void Canvas::DrawMarker(double x, double y, int radius, MarkerShape shape, Rgb colour) {
  const int cx = static_cast<int>(std::lround(x)), cy = static_cast<int>(std::lround(y));
  for (int dy = -radius; dy <= radius; ++dy) {
    for (int dx = -radius; dx <= radius; ++dx) {
      bool inside = false;
      switch (shape) {
        case MarkerShape::kCircle:
          inside = dx * dx + dy * dy <= radius * radius + radius / 2;
          break;
        case MarkerShape::kSquare:
          inside = std::abs(dx) < radius && std::abs(dy) < radius;
          break;
        case MarkerShape::kDiamond:
          inside = std::abs(dx) + std::abs(dy) <= radius;
          break;
        case MarkerShape::kTriangle:  // apex up: half-width grows from 0 at the top row
          inside = 2 * std::abs(dx) <= dy + radius;
          break;
        case MarkerShape::kTriangleDown:
          inside = 2 * std::abs(dx) <= radius - dy;
          break;
      }
      if (inside) SetPixel(cx + dx, cy + dy, colour);
    }
  }
}

Rect Canvas::DrawText(int x, int y, std::string_view text, const TextStyle& style) {
  const int scale = style.scale;
  const int along = TextWidth(text, scale);  // extent along the reading direction
  const int across = TextHeight(scale);
  const int cap = kGlyphCapHeight * scale;
  // The box in canvas orientation, then its top-left corner from the anchor.
  const int box_w = style.upward ? across : along;
  const int box_h = style.upward ? along : across;
  int left = x, top = y;
  if (style.h_align == HAlign::kCenter) left = x - box_w / 2;
  if (style.h_align == HAlign::kRight) left = x - box_w;
  if (style.v_align == VAlign::kMiddle) top = y - (style.upward ? box_h : cap) / 2;
  if (style.v_align == VAlign::kBottom) top = y - (style.upward ? box_h : cap);
  if (style.upward && style.h_align == HAlign::kCenter) left = x - cap / 2;

  for (size_t i = 0; i < text.size(); ++i) {
    const GlyphRows& glyph = Glyph(text[i]);
    const int origin = static_cast<int>(i) * kGlyphAdvance * scale;
    for (int row = 0; row < kGlyphRows; ++row) {
      for (int col = 0; col < kGlyphWidth; ++col) {
        if (!(glyph[static_cast<size_t>(row)] & (0x10 >> col))) continue;
        // (u, v): position along and across the text, in unrotated pixels.
        const int u = origin + col * scale, v = row * scale;
        if (style.upward) {
          // Glyph tops face left; the text reads from the bottom of the box upwards.
          FillRect({left + v, top + box_h - u - scale, scale, scale}, style.colour);
        } else {
          FillRect({left + u, top + v, scale, scale}, style.colour);
        }
      }
    }
  }
  return Rect{left, top, box_w, box_h};
}

}  // namespace mixattn::plot
