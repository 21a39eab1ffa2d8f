// Line charts: layout, axes, series and legend (the LineChart half of png_chart.h).
//
// A panel, top to bottom: title; plot area framed, with grid lines at the ticks; x tick
// labels; x-axis label; legend (or one legend under all panels when they share their series).
// Left of the plot area: the y-axis label, turned to read upwards, and the y tick labels.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
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
using style::kGrid;
using style::kMargin;
using style::kText;
using style::kTickLength;
using style::kTitle;
using style::kTitleScale;

// Okabe & Ito (2008), "Color Universal Design": colours that stay distinct under the common
// colour-vision deficiencies. Yellow is last: it is faint on white.
constexpr Rgb kPalette[] = {{0x00, 0x72, 0xB2}, {0xD5, 0x5E, 0x00}, {0x00, 0x9E, 0x73},
                            {0xCC, 0x79, 0xA7}, {0xE6, 0x9F, 0x00}, {0x56, 0xB4, 0xE9},
                            {0x00, 0x00, 0x00}, {0xF0, 0xE4, 0x42}};
constexpr MarkerShape kMarkers[] = {MarkerShape::kCircle, MarkerShape::kSquare,
                                    MarkerShape::kTriangle, MarkerShape::kDiamond,
                                    MarkerShape::kTriangleDown};

constexpr int kPanelWidth = 560;
constexpr int kPlotHeight = 330;
constexpr int kDataPad = 10;  // inside the plot area, so markers at the ends are not cut
constexpr int kLineThickness = 2;
constexpr int kMarkerRadius = 4;
constexpr int kMaxLinearTicks = 6;
constexpr int kMaxLog2Ticks = 8;
constexpr int kLegendSample = 26;  // the line-and-marker sample before a legend label
constexpr int kLegendRowHeight = 16;
constexpr int kLegendEntryGap = 18;

std::string ChartName(const LineChart& chart, size_t index) {
  return "chart " + std::to_string(index) + " (\"" + chart.title + "\")";
}

void Validate(const std::vector<LineChart>& charts) {
  if (charts.empty()) Fail("line chart: no charts to draw");
  for (size_t c = 0; c < charts.size(); ++c) {
    const LineChart& chart = charts[c];
    if (chart.series.empty()) Fail(ChartName(chart, c), ": no series to draw");
    bool any_point = false;
    for (size_t s = 0; s < chart.series.size(); ++s) {
      const Series& series = chart.series[s];
      const std::string name =
          ChartName(chart, c) + ", series " + std::to_string(s) + " (\"" + series.label + "\")";
      if (series.x.size() != series.y.size()) {
        Fail(name, ": x has ", series.x.size(), " values but y has ", series.y.size());
      }
      for (size_t i = 0; i < series.x.size(); ++i) {
        const double x = series.x[i], y = series.y[i];
        if (!std::isfinite(x)) Fail(name, ": x[", i, "] = ", x, " is not a finite number");
        if (std::isinf(y)) Fail(name, ": y[", i, "] = ", y, " is infinite (use NaN for a gap)");
        if (chart.log_x && x <= 0) {
          Fail(name, ": x[", i, "] = ", x, " cannot be shown on a log2 x axis (must be > 0)");
        }
        if (chart.log_y && y <= 0) {
          Fail(name, ": y[", i, "] = ", y, " cannot be shown on a log2 y axis (must be > 0)");
        }
        any_point = any_point || !std::isnan(y);
      }
    }
    if (!any_point) Fail(ChartName(chart, c), ": no data points (every y is NaN or missing)");
  }
}

Axis MakeAxis(double min, double max, bool log2) {
  return log2 ? MakeLog2Axis(min, max, kMaxLog2Ticks) : MakeLinearAxis(min, max, kMaxLinearTicks);
}

Axis XAxis(const LineChart& chart) {
  double min = std::numeric_limits<double>::infinity(), max = -min;
  for (const Series& series : chart.series) {
    for (double x : series.x) {
      min = std::min(min, x);
      max = std::max(max, x);
    }
  }
  return MakeAxis(min, max, chart.log_x);
}

Axis YAxis(const LineChart& chart) {
  double min = std::numeric_limits<double>::infinity(), max = -min;
  for (const Series& series : chart.series) {
    for (double y : series.y) {
      if (std::isnan(y)) continue;
      min = std::min(min, y);
      max = std::max(max, y);
    }
  }
  // A linear y axis starts at zero, so bar-like comparisons ("twice as fast") read true.
  if (!chart.log_y) {
    min = std::min(min, 0.0);
    max = std::max(max, 0.0);
  }
  return MakeAxis(min, max, chart.log_y);
}

// Legend entries flowed into rows no wider than `max_width`.
struct LegendRow {
  std::vector<size_t> entries;  // series indices
  int width = 0;
};

int LegendEntryWidth(const Series& series) {
  return kLegendSample + kGap / 2 + TextWidth(series.label, 1);
}

std::vector<LegendRow> LayoutLegend(const std::vector<Series>& series, int max_width) {
  std::vector<LegendRow> rows(1);
  for (size_t s = 0; s < series.size(); ++s) {
    const int width = LegendEntryWidth(series[s]);
    LegendRow& row = rows.back();
    const int needed = row.entries.empty() ? width : row.width + kLegendEntryGap + width;
    if (needed <= max_width || row.entries.empty()) {
      row.entries.push_back(s);
      row.width = needed;
    } else {
      rows.push_back(LegendRow{{s}, width});
    }
  }
  return rows;
}

int LegendHeight(const std::vector<LegendRow>& rows) {
  return static_cast<int>(rows.size()) * kLegendRowHeight;
}

void DrawLegend(Canvas& canvas, const std::vector<Series>& series,
                const std::vector<LegendRow>& rows, int center_x, int top, int max_width) {
  for (size_t r = 0; r < rows.size(); ++r) {
    int x = center_x - rows[r].width / 2;
    const int mid_y = top + static_cast<int>(r) * kLegendRowHeight + kLegendRowHeight / 2;
    for (size_t s : rows[r].entries) {
      const Rgb colour = SeriesColour(s);
      canvas.DrawLine(x, mid_y, x + kLegendSample - 1, mid_y, kLineThickness, colour);
      canvas.DrawMarker(x + kLegendSample / 2.0, mid_y, kMarkerRadius,
                        kMarkers[s % std::size(kMarkers)], colour);
      const int label_x = x + kLegendSample + kGap / 2;
      canvas.DrawText(label_x, mid_y, FitText(series[s].label, max_width - (label_x - x), 1),
                      {kText, 1, HAlign::kLeft, VAlign::kMiddle});
      x += LegendEntryWidth(series[s]) + kLegendEntryGap;
    }
  }
}

int WidestLabel(const Axis& axis) {
  int widest = 0;
  for (const std::string& label : axis.labels) widest = std::max(widest, TextWidth(label, 1));
  return widest;
}

// Everything about one panel's geometry, decided before drawing.
struct PanelLayout {
  Rect panel, plot;
  Axis x_axis, y_axis;
  std::vector<LegendRow> legend;  // empty when the charts share one legend
  int legend_top = 0;
};

PanelLayout LayoutPanel(const LineChart& chart, int panel_x, bool own_legend) {
  PanelLayout layout;
  layout.x_axis = XAxis(chart);
  layout.y_axis = YAxis(chart);
  const int y_label_width = chart.y_label.empty() ? 0 : TextHeight(1) + kGap;
  const int left = kMargin + y_label_width + WidestLabel(layout.y_axis) + kGap / 2 + kTickLength;
  // Room on the right for half of the last x tick label.
  const int right = std::max(kMargin, WidestLabel(layout.x_axis) / 2 - kDataPad + kGap);
  const int top = kMargin + TextHeight(kTitleScale) + 2 * kGap;
  layout.plot = Rect{panel_x + left, top, kPanelWidth - left - right, kPlotHeight};
  const int x_ticks_bottom = layout.plot.bottom() + kTickLength + 4 + TextHeight(1);
  const int x_label_bottom = x_ticks_bottom + (chart.x_label.empty() ? 0 : kGap + TextHeight(1));
  layout.legend_top = x_label_bottom + kGap + 4;
  if (own_legend) layout.legend = LayoutLegend(chart.series, kPanelWidth - 2 * kMargin);
  const int height = layout.legend_top + LegendHeight(layout.legend) + kMargin;
  layout.panel = Rect{panel_x, 0, kPanelWidth, height};
  return layout;
}

double PixelX(const PanelLayout& layout, double x) {
  const Rect& plot = layout.plot;
  return plot.x + kDataPad + layout.x_axis.Fraction(x) * (plot.width - 1 - 2 * kDataPad);
}

double PixelY(const PanelLayout& layout, double y) {
  const Rect& plot = layout.plot;
  return plot.bottom() - 1 - kDataPad -
         layout.y_axis.Fraction(y) * (plot.height - 1 - 2 * kDataPad);
}

void DrawAxes(Canvas& canvas, const LineChart& chart, const PanelLayout& layout) {
  const Rect& plot = layout.plot;
  const Axis& x_axis = layout.x_axis;
  const Axis& y_axis = layout.y_axis;
  for (double tick : x_axis.ticks) {
    const int px = static_cast<int>(std::lround(PixelX(layout, tick)));
    canvas.FillRect({px, plot.y, 1, plot.height}, kGrid);
    canvas.FillRect({px, plot.bottom(), 1, kTickLength}, kFrame);
  }
  for (double tick : y_axis.ticks) {
    const int py = static_cast<int>(std::lround(PixelY(layout, tick)));
    canvas.FillRect({plot.x, py, plot.width, 1}, kGrid);
    canvas.FillRect({plot.x - kTickLength, py, kTickLength, 1}, kFrame);
  }
  canvas.StrokeRect(plot, kFrame);

  // X tick labels, every `stride`-th one when neighbours would touch.
  size_t stride = 1;
  const auto overlaps = [&](size_t s) {
    for (size_t i = 0; i + s < x_axis.ticks.size(); i += s) {
      const double gap = PixelX(layout, x_axis.ticks[i + s]) - PixelX(layout, x_axis.ticks[i]);
      const int half_widths =
          (TextWidth(x_axis.labels[i], 1) + TextWidth(x_axis.labels[i + s], 1)) / 2;
      if (gap < half_widths + kGap) return true;
    }
    return false;
  };
  while (stride < x_axis.ticks.size() && overlaps(stride)) ++stride;
  for (size_t i = 0; i < x_axis.ticks.size(); i += stride) {
    canvas.DrawText(static_cast<int>(std::lround(PixelX(layout, x_axis.ticks[i]))),
                    plot.bottom() + kTickLength + 4, x_axis.labels[i],
                    {kText, 1, HAlign::kCenter, VAlign::kTop});
  }
  for (size_t i = 0; i < y_axis.ticks.size(); ++i) {
    canvas.DrawText(plot.x - kTickLength - kGap / 2,
                    static_cast<int>(std::lround(PixelY(layout, y_axis.ticks[i]))),
                    y_axis.labels[i], {kText, 1, HAlign::kRight, VAlign::kMiddle});
  }

  const Rect& panel = layout.panel;
  const FittedTitle title = FitTitle(chart.title, panel.width - 2 * kMargin);
  canvas.DrawText(plot.x + plot.width / 2, kMargin, title.text,
                  {kTitle, title.scale, HAlign::kCenter, VAlign::kTop});
  if (!chart.x_label.empty()) {
    canvas.DrawText(plot.x + plot.width / 2, plot.bottom() + kTickLength + 4 + TextHeight(1) + kGap,
                    FitText(chart.x_label, panel.width - 2 * kMargin, 1),
                    {kText, 1, HAlign::kCenter, VAlign::kTop});
  }
  if (!chart.y_label.empty()) {
    canvas.DrawText(panel.x + kMargin, plot.y + plot.height / 2,
                    FitText(chart.y_label, plot.height, 1),
                    {kText, 1, HAlign::kLeft, VAlign::kMiddle, /*upward=*/true});
  }
}

void DrawSeries(Canvas& canvas, const LineChart& chart, const PanelLayout& layout) {
  canvas.SetClip(layout.plot);
  // Lines of every series first, then every marker, so no line hides a data point.
  for (size_t s = 0; s < chart.series.size(); ++s) {
    const Series& series = chart.series[s];
    for (size_t i = 1; i < series.x.size(); ++i) {
      if (std::isnan(series.y[i - 1]) || std::isnan(series.y[i])) continue;  // a gap
      canvas.DrawLine(PixelX(layout, series.x[i - 1]), PixelY(layout, series.y[i - 1]),
                      PixelX(layout, series.x[i]), PixelY(layout, series.y[i]), kLineThickness,
                      SeriesColour(s));
    }
  }
  for (size_t s = 0; s < chart.series.size(); ++s) {
    const Series& series = chart.series[s];
    for (size_t i = 0; i < series.x.size(); ++i) {
      if (std::isnan(series.y[i])) continue;
      const double px = PixelX(layout, series.x[i]), py = PixelY(layout, series.y[i]);
      const MarkerShape shape = kMarkers[s % std::size(kMarkers)];
      canvas.DrawMarker(px, py, kMarkerRadius + 1, shape, kBackground);  // a halo
      canvas.DrawMarker(px, py, kMarkerRadius, shape, SeriesColour(s));
    }
  }
  canvas.ClearClip();
}

bool SameSeriesLabels(const std::vector<LineChart>& charts) {
  for (const LineChart& chart : charts) {
    if (chart.series.size() != charts[0].series.size()) return false;
    for (size_t s = 0; s < chart.series.size(); ++s) {
      if (chart.series[s].label != charts[0].series[s].label) return false;
    }
  }
  return true;
}

}  // namespace

Rgb SeriesColour(size_t index) { return kPalette[index % std::size(kPalette)]; }

LineChartsImage RenderLineCharts(const std::vector<LineChart>& charts) {
  Validate(charts);
  const bool shared_legend = charts.size() > 1 && SameSeriesLabels(charts);
  std::vector<PanelLayout> layouts;
  int height = 0;
  for (size_t c = 0; c < charts.size(); ++c) {
    layouts.push_back(LayoutPanel(charts[c], static_cast<int>(c) * kPanelWidth, !shared_legend));
    height = std::max(height, layouts.back().panel.bottom());
  }
  const int width = static_cast<int>(charts.size()) * kPanelWidth;
  std::vector<LegendRow> legend;
  if (shared_legend) {
    legend = LayoutLegend(charts[0].series, width - 2 * kMargin);
    height += LegendHeight(legend);
  }

  Canvas canvas(width, height, kBackground);
  LineChartsImage result;
  for (size_t c = 0; c < charts.size(); ++c) {
    const PanelLayout& layout = layouts[c];
    DrawAxes(canvas, charts[c], layout);
    DrawSeries(canvas, charts[c], layout);
    DrawLegend(canvas, charts[c].series, layout.legend, layout.panel.x + layout.panel.width / 2,
               layout.legend_top, layout.panel.width - 2 * kMargin);
    result.plot_areas.push_back(layout.plot);
  }
  if (shared_legend) {
    DrawLegend(canvas, charts[0].series, legend, width / 2, layouts[0].legend_top,
               width - 2 * kMargin);
  }
  result.image = canvas.TakeImage();
  return result;
}

}  // namespace mixattn::plot
