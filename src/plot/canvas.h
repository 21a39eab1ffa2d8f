// An RGB raster with the few drawing primitives charts need: rectangles, thick lines, point
// markers and bitmap-font text (horizontal, or rotated to read upwards for a y-axis label).
//
// Coordinates are pixels, x to the right and y down from the top-left corner. Every primitive
// clips to the canvas and to an optional clip rectangle, so callers may draw past the edges.
#pragma once

#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

namespace mixattn::plot {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
  friend bool operator==(const Rgb&, const Rgb&) = default;
};

struct Rect {
  int x = 0, y = 0, width = 0, height = 0;
  int right() const { return x + width; }    // one past the last column
  int bottom() const { return y + height; }  // one past the last row
  bool Contains(int px, int py) const {
    return px >= x && px < right() && py >= y && py < bottom();
  }
};

// 8-bit RGB pixels, rows top to bottom.
struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // [height, width, 3]
  Rgb Pixel(int x, int y) const;
};

enum class MarkerShape { kCircle, kSquare, kTriangle, kDiamond, kTriangleDown };

enum class HAlign { kLeft, kCenter, kRight };
// kMiddle centres the capital height on y, so digits sit centred on a tick.
enum class VAlign { kTop, kMiddle, kBottom };

struct TextStyle {
  Rgb colour;
  int scale = 1;
  HAlign h_align = HAlign::kLeft;
  VAlign v_align = VAlign::kTop;
  bool upward = false;  // rotated 90 degrees counter-clockwise; alignment applies to the
                        // rotated box (h_align across the glyphs, v_align along the text)
};

class Canvas {
 public:
  Canvas(int width, int height, Rgb background);

  int width() const { return image_.width; }
  int height() const { return image_.height; }
  const Image& image() const { return image_; }
  Image TakeImage() { return std::move(image_); }

  // Restricts drawing to `clip` (intersected with the canvas) until ClearClip().
  void SetClip(const Rect& clip) { clip_ = clip; }
  void ClearClip() { clip_ = Rect{0, 0, width(), height()}; }

  void SetPixel(int x, int y, Rgb colour);
  void FillRect(const Rect& rect, Rgb colour);
  // The 1-pixel outline just inside `rect`.
  void StrokeRect(const Rect& rect, Rgb colour);
  // A line `thickness` pixels wide between two points given in fractional pixels.
  void DrawLine(double x0, double y0, double x1, double y1, int thickness, Rgb colour);
  // A filled marker of the given radius centred on (x, y).
  void DrawMarker(double x, double y, int radius, MarkerShape shape, Rgb colour);
  // Draws `text` anchored at (x, y) as `style` aligns it; returns the box it covered.
  Rect DrawText(int x, int y, std::string_view text, const TextStyle& style);

 private:
  Image image_;
  Rect clip_;
};

}  // namespace mixattn::plot
