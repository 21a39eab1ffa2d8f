// The PNG writers: render, encode, then write atomically (a failed write leaves no file).
#include "plot/png_chart.h"

#include "plot/png_writer.h"

namespace mixattn::plot {

void WriteLineChartsPng(const std::vector<LineChart>& charts, const std::string& path) {
  WriteFileAtomically(path, EncodePng(RenderLineCharts(charts).image));
}

void WriteHeatMapsPng(const std::vector<HeatMap>& panels, const std::string& title,
                      const std::string& path) {
  WriteFileAtomically(path, EncodePng(RenderHeatMaps(panels, title).image));
}

}  // namespace mixattn::plot
