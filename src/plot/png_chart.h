// Line charts and heat maps written as PNG images, with no dependency beyond zlib.
//
// Line charts: one or more panels side by side (e.g. decode tokens/s and KV bytes against
// context length), each with nice round ticks, optional log2 axes (ticks 4K, 8K, 16K...), grid,
// a marker at every data point and a legend. Series get colours from the Okabe-Ito palette
// (distinguishable with the common colour-vision deficiencies) and, as a second cue, different
// marker shapes.
//
// Heat maps: panels in a grid sharing one colour scale (a viridis-like ramp from dark blue to
// yellow, readable in grey and by colour-blind readers), one colour bar, an overall title; each
// cell prints its value in black or white, whichever contrasts with the cell.
//
// Invalid input (no charts, no data, x and y of different sizes, ragged heat-map rows, tick
// labels that do not match the values, a file that cannot be written) throws mixattn::Error
// naming the chart, series or panel; nothing is written then.
#pragma once

#include <string>
#include <vector>

#include "plot/canvas.h"

namespace mixattn::plot {

struct Series {
  std::string label;
  std::vector<double> x, y;  // [points]; a NaN y is a gap in the line
};

struct LineChart {
  std::string title, x_label, y_label;
  bool log_x = false, log_y = false;  // base-2 axes; their values must be > 0
  std::vector<Series> series;
};

// One or more charts side by side in one image. Charts whose series labels are all the same
// share one legend under the row of charts.
void WriteLineChartsPng(const std::vector<LineChart>& charts, const std::string& path);

struct HeatMap {  // one panel
  std::string title, x_label, y_label;
  std::vector<std::string> x_ticks, y_ticks;  // [columns], [rows]; empty: numbered from 0
  std::vector<std::vector<double>> values;    // [rows][columns]; NaN = no data (grey, hatched)
  double min = 0, max = 1;                    // colour scale; the same for every panel
  bool show_values = true;                    // print each cell's value inside it
};

// Several heat-map panels in a grid in one image, with a shared colour bar and an overall title.
void WriteHeatMapsPng(const std::vector<HeatMap>& panels, const std::string& title,
                      const std::string& path);

// The rendering behind the writers, with the geometry a caller (or a test) needs to find
// things in the image.
struct LineChartsImage {
  Image image;
  std::vector<Rect> plot_areas;  // [charts]: the framed area the data is drawn in
};
LineChartsImage RenderLineCharts(const std::vector<LineChart>& charts);

struct HeatMapsImage {
  Image image;
  std::vector<std::vector<std::vector<Rect>>> cells;  // [panels][rows][columns]
};
HeatMapsImage RenderHeatMaps(const std::vector<HeatMap>& panels, const std::string& title);

// Colour of series `index` (the palette repeats after 8).
Rgb SeriesColour(size_t index);
// Colour of `value` on the heat-map scale from `min` (dark blue) to `max` (yellow); values
// outside the range take the end colours.
Rgb HeatMapColour(double value, double min, double max);
// Background of a no-data (NaN) cell; thin darker hatching is drawn over it.
inline constexpr Rgb kNoDataColour{0xD9, 0xD9, 0xD9};

}  // namespace mixattn::plot
