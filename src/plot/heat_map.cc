// Heat maps: panels in a grid, a shared colour bar and an overall title (the HeatMap half of
// png_chart.h).
//
// A panel, top to bottom: title; row labels left of the cells (the y-axis label further left,
// reading upwards); the cells; column labels (turned to read upwards when too wide for a
// cell); the x-axis label. Right of all panels: the colour bar and, when any cell is NaN, a
// no-data swatch.
#include <algorithm>
#include <cmath>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "plot/axis.h"
#include "plot/chart_style.h"
#include "plot/png_chart.h"

namespace mixattn::plot {
namespace {

using style::FittedTitle;
using style::FitText;
using style::FitTitle;
using style::kBackground;
using style::kFrame;
using style::kGap;
using style::kMargin;
using style::kNoDataHatch;
using style::kText;
using style::kTickLength;
using style::kTitle;
using style::kTitleScale;

// Viridis (van der Walt and Smith, matplotlib 2015) sampled at 9 evenly spaced points: its
// lightness rises steadily, so it reads in grey and for colour-blind viewers.
constexpr Rgb kScale[] = {{0x44, 0x01, 0x54}, {0x47, 0x2D, 0x7B}, {0x3B, 0x52, 0x8B},
                          {0x2C, 0x72, 0x8E}, {0x21, 0x91, 0x8C}, {0x28, 0xAE, 0x80},
                          {0x5E, 0xC9, 0x62}, {0xAD, 0xDC, 0x30}, {0xFD, 0xE7, 0x25}};

constexpr int kCellHeight = 22;
constexpr int kMinCellWidth = 30;
constexpr int kMaxHorizontalTickWidth = 64;  // wider column labels are turned upwards
constexpr int kMaxTickLabelWidth = 160;      // longer labels are shortened with "..."
constexpr int kHatchPeriod = 6;              // pixels between no-data hatch lines
constexpr int kPanelGap = 32;
constexpr int kBarWidth = 16;
constexpr int kMinBarHeight = 120;
constexpr int kMaxBarHeight = 260;
constexpr Rgb kDarkValueText{0x00, 0x00, 0x00};
constexpr Rgb kLightValueText{0xFF, 0xFF, 0xFF};

std::string PanelName(const HeatMap& panel, size_t index) {
  return "heat map panel " + std::to_string(index) + " (\"" + panel.title + "\")";
}

void Validate(const std::vector<HeatMap>& panels) {
  if (panels.empty()) Fail("heat map: no panels to draw");
  for (size_t p = 0; p < panels.size(); ++p) {
    const HeatMap& panel = panels[p];
    const std::string name = PanelName(panel, p);
    if (panel.values.empty() || panel.values[0].empty()) Fail(name, ": no values");
    const size_t columns = panel.values[0].size();
    for (size_t r = 0; r < panel.values.size(); ++r) {
      if (panel.values[r].size() != columns) {
        Fail(name, ": row ", r, " has ", panel.values[r].size(), " values but row 0 has ", columns,
             " (rows must all have the same length)");
      }
      for (size_t c = 0; c < columns; ++c) {
        if (std::isinf(panel.values[r][c])) {
          Fail(name, ": value at row ", r, ", column ", c, " is infinite (use NaN for no data)");
        }
      }
    }
    if (!panel.x_ticks.empty() && panel.x_ticks.size() != columns) {
      Fail(name, ": ", panel.x_ticks.size(), " x_ticks for ", columns, " columns");
    }
    if (!panel.y_ticks.empty() && panel.y_ticks.size() != panel.values.size()) {
      Fail(name, ": ", panel.y_ticks.size(), " y_ticks for ", panel.values.size(), " rows");
    }
    if (!(std::isfinite(panel.min) && std::isfinite(panel.max) && panel.min < panel.max)) {
      Fail(name, ": colour scale min ", panel.min, " must be below max ", panel.max);
    }
    if (panel.min != panels[0].min || panel.max != panels[0].max) {
      Fail(name, ": colour scale [", panel.min, ", ", panel.max, "] differs from panel 0's [",
           panels[0].min, ", ", panels[0].max, "]; the panels share one colour bar");
    }
  }
}

// Black or white, whichever stands out more against `background` (Rec. 709 luma).
Rgb ContrastingText(Rgb background) {
  const double luma = 0.2126 * background.r + 0.7152 * background.g + 0.0722 * background.b;
  return luma > 128 ? kDarkValueText : kLightValueText;
}

// Grey with diagonal hatching, phased so the centre pixel is background (a probe for tests).
void DrawNoData(Canvas& canvas, const Rect& rect) {
  canvas.FillRect(rect, kNoDataColour);
  const int centre_phase = (rect.width / 2 + rect.height / 2) % kHatchPeriod;
  const int offset = (kHatchPeriod / 2 - centre_phase + kHatchPeriod) % kHatchPeriod;
  for (int dy = 0; dy < rect.height; ++dy) {
    for (int dx = 0; dx < rect.width; ++dx) {
      if ((dx + dy + offset) % kHatchPeriod == 0)
        canvas.SetPixel(rect.x + dx, rect.y + dy, kNoDataHatch);
    }
  }
}

std::vector<std::string> TickLabels(const std::vector<std::string>& ticks, size_t count) {
  std::vector<std::string> labels;
  for (size_t i = 0; i < count; ++i) {
    labels.push_back(FitText(ticks.empty() ? std::to_string(i) : ticks[i], kMaxTickLabelWidth, 1));
  }
  return labels;
}

int Widest(const std::vector<std::string>& labels) {
  int widest = 0;
  for (const std::string& label : labels) widest = std::max(widest, TextWidth(label, 1));
  return widest;
}

// One panel's geometry relative to its box's top-left corner.
struct PanelLayout {
  std::vector<std::string> column_labels, row_labels;
  std::vector<std::vector<std::string>> cell_text;  // [rows][columns]; "" for NaN
  int cell_width = kMinCellWidth;
  bool upward_columns = false;
  int grid_x = 0, grid_y = 0;  // top-left of the cells
  int width = 0, height = 0;
};

PanelLayout LayoutPanel(const HeatMap& panel, const NumberFormat& format) {
  PanelLayout layout;
  const size_t rows = panel.values.size(), columns = panel.values[0].size();
  layout.column_labels = TickLabels(panel.x_ticks, columns);
  layout.row_labels = TickLabels(panel.y_ticks, rows);
  int widest_value = 0;
  for (const std::vector<double>& row : panel.values) {
    layout.cell_text.emplace_back();
    for (double value : row) {
      layout.cell_text.back().push_back(std::isnan(value) ? "" : FormatNumber(value, format));
      widest_value = std::max(widest_value, TextWidth(layout.cell_text.back().back(), 1));
    }
  }
  layout.cell_width = std::max(kMinCellWidth, widest_value + kGap + 2);
  const int widest_column = Widest(layout.column_labels);
  if (widest_column + 6 > layout.cell_width) {
    if (widest_column + 6 <= kMaxHorizontalTickWidth) {
      layout.cell_width = widest_column + 6;
    } else {
      layout.upward_columns = true;
    }
  }
  layout.grid_x =
      (panel.y_label.empty() ? 0 : TextHeight(1) + kGap) + Widest(layout.row_labels) + kGap;
  layout.grid_y = TextHeight(1) + kGap;  // the panel title
  const int grid_bottom = layout.grid_y + static_cast<int>(rows) * kCellHeight;
  const int column_labels_height = layout.upward_columns ? widest_column : TextHeight(1);
  layout.height =
      grid_bottom + 4 + column_labels_height + (panel.x_label.empty() ? 0 : kGap + TextHeight(1));
  layout.width = std::max({layout.grid_x + static_cast<int>(columns) * layout.cell_width,
                           TextWidth(panel.title, 1), TextWidth(panel.x_label, 1)});
  return layout;
}

// Draws a panel in the box at (x, y); returns its cell rectangles [rows][columns].
std::vector<std::vector<Rect>> DrawPanel(Canvas& canvas, const HeatMap& panel,
                                         const PanelLayout& layout, int x, int y) {
  const size_t rows = panel.values.size(), columns = panel.values[0].size();
  const int grid_x = x + layout.grid_x, grid_y = y + layout.grid_y;
  const int grid_width = static_cast<int>(columns) * layout.cell_width;
  const int grid_height = static_cast<int>(rows) * kCellHeight;
  // Titles centred over the cells, but kept inside the panel's box when wider than the cells.
  const auto centred_left = [&](std::string_view text) {
    const int text_width = TextWidth(text, 1);
    return std::clamp(grid_x + grid_width / 2 - text_width / 2, x, x + layout.width - text_width);
  };
  canvas.DrawText(centred_left(panel.title), y, panel.title,
                  {kTitle, 1, HAlign::kLeft, VAlign::kTop});

  std::vector<std::vector<Rect>> cells(rows);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < columns; ++c) {
      // A 1-pixel background gap between cells keeps equal neighbours apart.
      const Rect cell{grid_x + static_cast<int>(c) * layout.cell_width,
                      grid_y + static_cast<int>(r) * kCellHeight, layout.cell_width - 1,
                      kCellHeight - 1};
      cells[r].push_back(cell);
      const double value = panel.values[r][c];
      if (std::isnan(value)) {
        DrawNoData(canvas, cell);
        continue;
      }
      const Rgb colour = HeatMapColour(value, panel.min, panel.max);
      canvas.FillRect(cell, colour);
      if (panel.show_values) {
        canvas.DrawText(cell.x + cell.width / 2, cell.y + cell.height / 2, layout.cell_text[r][c],
                        {ContrastingText(colour), 1, HAlign::kCenter, VAlign::kMiddle});
      }
    }
    canvas.DrawText(grid_x - kGap, cells[r][0].y + kCellHeight / 2, layout.row_labels[r],
                    {kText, 1, HAlign::kRight, VAlign::kMiddle});
  }
  for (size_t c = 0; c < columns; ++c) {
    const int centre = cells[0][c].x + cells[0][c].width / 2;
    if (layout.upward_columns) {
      canvas.DrawText(centre, grid_y + grid_height + 4, layout.column_labels[c],
                      {kText, 1, HAlign::kCenter, VAlign::kTop, /*upward=*/true});
    } else {
      canvas.DrawText(centre, grid_y + grid_height + 4, layout.column_labels[c],
                      {kText, 1, HAlign::kCenter, VAlign::kTop});
    }
  }
  if (!panel.x_label.empty()) {
    canvas.DrawText(centred_left(panel.x_label), y + layout.height - TextHeight(1), panel.x_label,
                    {kText, 1, HAlign::kLeft, VAlign::kTop});
  }
  if (!panel.y_label.empty()) {
    canvas.DrawText(x, grid_y + grid_height / 2,
                    FitText(panel.y_label, std::max(grid_height, 60), 1),
                    {kText, 1, HAlign::kLeft, VAlign::kMiddle, /*upward=*/true});
  }
  return cells;
}

}  // namespace

Rgb HeatMapColour(double value, double min, double max) {
  MIXATTN_CHECK(min < max);
  const double t = std::clamp((value - min) / (max - min), 0.0, 1.0);
  const double at = t * (std::size(kScale) - 1);
  const size_t i = std::min(static_cast<size_t>(at), std::size(kScale) - 2);
  const double f = at - static_cast<double>(i);
  const auto mix = [f](uint8_t a, uint8_t b) {
    return static_cast<uint8_t>(std::lround(a + (b - a) * f));
  };
  return Rgb{mix(kScale[i].r, kScale[i + 1].r), mix(kScale[i].g, kScale[i + 1].g),
             mix(kScale[i].b, kScale[i + 1].b)};
}

HeatMapsImage RenderHeatMaps(const std::vector<HeatMap>& panels, const std::string& title) {
  Validate(panels);
  const double min = panels[0].min, max = panels[0].max;
  // Cell values to two significant decimals of the scale's range: 0.85 on [0, 1], 85 on [0, 100].
  const NumberFormat format =
      ChooseNumberFormat(std::max(std::abs(min), std::abs(max)), (max - min) / 100);

  std::vector<PanelLayout> layouts;
  int box_width = 0, box_height = 0;  // every panel gets the same box
  bool any_no_data = false;
  for (const HeatMap& panel : panels) {
    layouts.push_back(LayoutPanel(panel, format));
    box_width = std::max(box_width, layouts.back().width);
    box_height = std::max(box_height, layouts.back().height);
    for (const std::vector<double>& row : panel.values)
      for (double value : row) any_no_data = any_no_data || std::isnan(value);
  }
  const int count = static_cast<int>(panels.size());
  const int grid_columns =
      count <= 3 ? count : static_cast<int>(std::ceil(std::sqrt(static_cast<double>(count))));
  const int grid_rows = (count + grid_columns - 1) / grid_columns;
  const int title_height = title.empty() ? 0 : TextHeight(kTitleScale) + 2 * kGap;
  const int panels_top = kMargin + title_height;
  const int panels_width = grid_columns * box_width + (grid_columns - 1) * kPanelGap;
  const int panels_height = grid_rows * box_height + (grid_rows - 1) * kPanelGap;

  // The colour bar: ticks inside [min, max] only.
  Axis bar_axis = MakeLinearAxis(min, max, 6);
  std::vector<std::pair<double, std::string>> bar_ticks;
  const NumberFormat bar_format = ChooseNumberFormat(std::max(std::abs(min), std::abs(max)),
                                                     bar_axis.ticks[1] - bar_axis.ticks[0]);
  for (double tick : bar_axis.ticks) {
    if (tick >= min - 1e-9 * (max - min) && tick <= max + 1e-9 * (max - min))
      bar_ticks.emplace_back(tick, FormatNumber(tick, bar_format));
  }
  int bar_label_width = any_no_data ? TextWidth("no data", 1) : 0;
  for (const auto& tick : bar_ticks)
    bar_label_width = std::max(bar_label_width, TextWidth(tick.second, 1));
  // Panels and colour bar, centred under a title wider than they are.
  const int content_width =
      panels_width + kPanelGap + kBarWidth + kTickLength + 4 + bar_label_width;
  const int width = std::max(content_width, TextWidth(title, kTitleScale)) + 2 * kMargin;
  const int left = (width - content_width) / 2;
  const int bar_x = left + panels_width + kPanelGap;
  const int bar_top = panels_top + TextHeight(1) + kGap;
  const int bar_height =
      std::clamp(panels_height - 2 * TextHeight(1) - 2 * kGap, kMinBarHeight, kMaxBarHeight);
  const int swatch_top = bar_top + bar_height + 2 * kGap;
  const int legend_bottom =
      any_no_data ? swatch_top + kBarWidth : bar_top + bar_height + TextHeight(1);

  const int height = std::max(panels_top + panels_height, legend_bottom) + kMargin;
  Canvas canvas(width, height, kBackground);

  if (!title.empty()) {
    const FittedTitle fitted = FitTitle(title, width - 2 * kMargin);
    canvas.DrawText(width / 2, kMargin, fitted.text,
                    {kTitle, fitted.scale, HAlign::kCenter, VAlign::kTop});
  }
  HeatMapsImage result;
  for (int p = 0; p < count; ++p) {
    const int x = left + (p % grid_columns) * (box_width + kPanelGap);
    const int y = panels_top + (p / grid_columns) * (box_height + kPanelGap);
    result.cells.push_back(
        DrawPanel(canvas, panels[static_cast<size_t>(p)], layouts[static_cast<size_t>(p)], x, y));
  }

  // Colour bar: max at the top.
  for (int row = 0; row < bar_height; ++row) {
    const double value = max - (max - min) * row / (bar_height - 1);
    canvas.FillRect({bar_x, bar_top + row, kBarWidth, 1}, HeatMapColour(value, min, max));
  }
  canvas.StrokeRect({bar_x - 1, bar_top - 1, kBarWidth + 2, bar_height + 2}, kFrame);
  for (const auto& [value, label] : bar_ticks) {
    const int py =
        bar_top + static_cast<int>(std::lround((max - value) / (max - min) * (bar_height - 1)));
    canvas.FillRect({bar_x + kBarWidth + 1, py, kTickLength, 1}, kFrame);
    canvas.DrawText(bar_x + kBarWidth + kTickLength + 4, py, label,
                    {kText, 1, HAlign::kLeft, VAlign::kMiddle});
  }
  if (any_no_data) {
    DrawNoData(canvas, {bar_x, swatch_top, kBarWidth, kBarWidth});
    canvas.StrokeRect({bar_x - 1, swatch_top - 1, kBarWidth + 2, kBarWidth + 2}, kFrame);
    canvas.DrawText(bar_x + kBarWidth + kTickLength + 4, swatch_top + kBarWidth / 2, "no data",
                    {kText, 1, HAlign::kLeft, VAlign::kMiddle});
  }
  result.image = canvas.TakeImage();
  return result;
}

}  // namespace mixattn::plot
