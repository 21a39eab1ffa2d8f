// PNG charts: the file format read back independently (chunks, CRC-32, IHDR, inflated pixels),
// the pixels that carry meaning (series colours, heat-map scale ends, no-data cells), axis
// ticks, errors, and atomic writes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "plot/axis.h"
#include "plot/bitmap_font.h"
#include "plot/png_chart.h"
#include "plot/png_writer.h"
#include "test_util.h"

namespace mixattn::plot {
namespace {

using testing::ErrorMessage;
using ::testing::HasSubstr;
using testing::TempDir;

// CRC-32 as the PNG spec defines it (polynomial 0xEDB88320, reflected), bit by bit: an oracle
// independent of the table-driven zlib crc32 the writer uses.
uint32_t BitwiseCrc32(const uint8_t* data, size_t size) {
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) {
    crc ^= data[i];
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return crc ^ 0xFFFFFFFFu;
}

uint32_t BigEndian32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

struct Chunk {
  std::string type;
  std::vector<uint8_t> data;
};

// Splits a PNG file into chunks, checking the signature, the lengths and every CRC.
std::vector<Chunk> ParsePng(const std::vector<uint8_t>& file) {
  const uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  EXPECT_GE(file.size(), 8u);
  EXPECT_TRUE(std::equal(signature, signature + 8, file.begin())) << "PNG signature";
  std::vector<Chunk> chunks;
  size_t at = 8;
  while (at < file.size()) {
    if (at + 12 > file.size()) {
      ADD_FAILURE() << "truncated chunk header at " << at;
      break;
    }
    const uint32_t length = BigEndian32(&file[at]);
    if (at + 12 + length > file.size()) {
      ADD_FAILURE() << "chunk at " << at << " runs past the end";
      break;
    }
    Chunk chunk{std::string(file.begin() + static_cast<ptrdiff_t>(at + 4),
                            file.begin() + static_cast<ptrdiff_t>(at + 8)),
                std::vector<uint8_t>(file.begin() + static_cast<ptrdiff_t>(at + 8),
                                     file.begin() + static_cast<ptrdiff_t>(at + 8 + length))};
    EXPECT_EQ(BigEndian32(&file[at + 8 + length]), BitwiseCrc32(&file[at + 4], 4 + length))
        << "CRC of chunk " << chunk.type << " at " << at;
    chunks.push_back(std::move(chunk));
    at += 12 + length;
  }
  return chunks;
}

// Decodes what EncodePng writes (8-bit RGB, filter None) back to an Image, checking the
// structure: IHDR first, IDATs together, IEND last and empty, inflated size h * (1 + 3w).
Image DecodePng(const std::vector<uint8_t>& file) {
  const std::vector<Chunk> chunks = ParsePng(file);
  Image image;
  if (chunks.size() < 3) {
    ADD_FAILURE() << "expected IHDR, IDAT..., IEND";
    return image;
  }
  EXPECT_EQ(chunks.front().type, "IHDR");
  EXPECT_EQ(chunks.back().type, "IEND");
  EXPECT_TRUE(chunks.back().data.empty());
  const std::vector<uint8_t>& header = chunks.front().data;
  EXPECT_EQ(header.size(), 13u);
  image.width = static_cast<int>(BigEndian32(&header[0]));
  image.height = static_cast<int>(BigEndian32(&header[4]));
  EXPECT_EQ(header[8], 8) << "bit depth";
  EXPECT_EQ(header[9], 2) << "colour type RGB";
  EXPECT_EQ(header[10], 0) << "compression";
  EXPECT_EQ(header[11], 0) << "filter method";
  EXPECT_EQ(header[12], 0) << "interlace";
  std::vector<uint8_t> compressed;
  for (size_t i = 1; i + 1 < chunks.size(); ++i) {
    EXPECT_EQ(chunks[i].type, "IDAT");
    compressed.insert(compressed.end(), chunks[i].data.begin(), chunks[i].data.end());
  }
  const size_t row_bytes = 1 + static_cast<size_t>(image.width) * 3;
  const size_t expected = static_cast<size_t>(image.height) * row_bytes;
  std::vector<uint8_t> raw(expected + 16);  // room to notice extra bytes
  uLongf raw_size = static_cast<uLongf>(raw.size());
  EXPECT_EQ(uncompress(raw.data(), &raw_size, compressed.data(), compressed.size()), Z_OK);
  EXPECT_EQ(raw_size, expected) << "inflated size = height * (1 + width * 3)";
  if (raw_size != expected) return image;
  for (int y = 0; y < image.height; ++y) {
    const uint8_t* row = raw.data() + static_cast<size_t>(y) * row_bytes;
    EXPECT_EQ(row[0], 0) << "filter type of row " << y;
    image.rgb.insert(image.rgb.end(), row + 1, row + row_bytes);
  }
  return image;
}

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

std::vector<std::string> DirectoryEntries(const std::string& path) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(path))
    names.push_back(entry.path().filename().string());
  return names;
}

int CountPixels(const Image& image, const Rect& rect, Rgb colour) {
  int count = 0;
  for (int y = rect.y; y < rect.bottom(); ++y)
    for (int x = rect.x; x < rect.right(); ++x) count += image.Pixel(x, y) == colour;
  return count;
}

Rgb Centre(const Image& image, const Rect& rect) {
  return image.Pixel(rect.x + rect.width / 2, rect.y + rect.height / 2);
}

LineChart ContextChart() {
  LineChart chart{"Decode", "context", "tokens/s", /*log_x=*/true, /*log_y=*/false, {}};
  chart.series.push_back({"standard", {4096, 8192, 32768}, {120, 80, 30}});
  chart.series.push_back({"ma-pairs", {4096, 8192, 32768}, {150, NAN, 140}});
  return chart;
}

HeatMap SmallHeatMap() {
  HeatMap panel{"accuracy", "depth", "context", {"0", "0.5"}, {"4K", "8K"}, {}, 0, 1};
  panel.values = {{1.0, NAN}, {0.0, 0.5}};
  return panel;
}

TEST(PlotPngTest, EncodesChunksWithValidCrcsAndTheExactPixels) {
  // Noise does not compress, so the zlib stream spans several IDAT chunks.
  Image image;
  image.width = 301;
  image.height = 257;
  uint32_t state = 12345;
  for (int i = 0; i < image.width * image.height * 3; ++i) {
    state = state * 1664525u + 1013904223u;
    image.rgb.push_back(static_cast<uint8_t>(state >> 24));
  }
  const std::vector<uint8_t> png = EncodePng(image);
  const std::vector<Chunk> chunks = ParsePng(png);
  EXPECT_GT(
      std::count_if(chunks.begin(), chunks.end(), [](const Chunk& c) { return c.type == "IDAT"; }),
      1);
  // IEND's CRC is the same in every PNG file.
  EXPECT_EQ(BigEndian32(&png[png.size() - 4]), 0xAE426082u);
  const Image decoded = DecodePng(png);
  EXPECT_EQ(decoded.width, 301);
  EXPECT_EQ(decoded.height, 257);
  EXPECT_EQ(decoded.rgb, image.rgb);
}

TEST(PlotLineChartTest, WritesAPngThatDecodesToTheRenderedImage) {
  TempDir dir;
  const std::string path = dir.file("charts.png");
  const std::vector<LineChart> charts = {ContextChart(), ContextChart()};
  WriteLineChartsPng(charts, path);
  const Image decoded = DecodePng(ReadFile(path));
  const LineChartsImage rendered = RenderLineCharts(charts);
  EXPECT_EQ(decoded.width, rendered.image.width);
  EXPECT_EQ(decoded.height, rendered.image.height);
  EXPECT_EQ(decoded.rgb, rendered.image.rgb);
  EXPECT_THAT(DirectoryEntries(dir.path()), ::testing::ElementsAre("charts.png"));
}

TEST(PlotLineChartTest, DrawsEachSeriesInItsOwnColourInsideThePlotArea) {
  LineChart one{"one series", "x", "y", false, false, {{"only", {1, 2, 3}, {3, 1, 2}}}};
  const LineChartsImage single = RenderLineCharts({one});
  ASSERT_EQ(single.plot_areas.size(), 1u);
  EXPECT_GT(CountPixels(single.image, single.plot_areas[0], SeriesColour(0)), 100);

  const LineChartsImage two = RenderLineCharts({ContextChart()});
  EXPECT_NE(SeriesColour(0), SeriesColour(1));
  EXPECT_GT(CountPixels(two.image, two.plot_areas[0], SeriesColour(0)), 100);
  EXPECT_GT(CountPixels(two.image, two.plot_areas[0], SeriesColour(1)), 30);  // two markers
}

TEST(PlotLineChartTest, LeavesAGapAtANan) {
  LineChart full{"gap", "x", "y", false, false, {{"s", {0, 1, 2}, {1, 1, 1}}}};
  LineChart gap = full;
  gap.series[0].y[1] = NAN;
  const LineChartsImage with_line = RenderLineCharts({full});
  const LineChartsImage with_gap = RenderLineCharts({gap});
  const int drawn = CountPixels(with_line.image, with_line.plot_areas[0], SeriesColour(0));
  const int drawn_with_gap = CountPixels(with_gap.image, with_gap.plot_areas[0], SeriesColour(0));
  // More missing than the middle marker: the two line segments (hundreds of pixels) are gone.
  EXPECT_GT(drawn - drawn_with_gap, 300) << drawn << " vs " << drawn_with_gap;
  EXPECT_GT(drawn_with_gap, 40);  // the two end markers remain
}

TEST(PlotLineChartTest, PlacesChartsSideBySide) {
  const LineChartsImage image = RenderLineCharts({ContextChart(), ContextChart(), ContextChart()});
  ASSERT_EQ(image.plot_areas.size(), 3u);
  for (size_t i = 1; i < 3; ++i) {
    EXPECT_GT(image.plot_areas[i].x, image.plot_areas[i - 1].right());
    EXPECT_EQ(image.plot_areas[i].y, image.plot_areas[0].y);
  }
  EXPECT_LE(image.plot_areas[2].right(), image.image.width);
}

TEST(PlotHeatMapTest, ColoursCellsByValueAndGreysNoData) {
  HeatMap panel = SmallHeatMap();
  panel.show_values = false;
  const HeatMapsImage image = RenderHeatMaps({panel, panel}, "two panels");
  ASSERT_EQ(image.cells.size(), 2u);
  for (const auto& cells : image.cells) {
    ASSERT_EQ(cells.size(), 2u);
    ASSERT_EQ(cells[0].size(), 2u);
    EXPECT_EQ(Centre(image.image, cells[0][0]), (Rgb{0xFD, 0xE7, 0x25}));  // max: top (yellow)
    EXPECT_EQ(Centre(image.image, cells[1][0]), (Rgb{0x44, 0x01, 0x54}));  // min: bottom
    EXPECT_EQ(Centre(image.image, cells[0][1]), kNoDataColour);
    EXPECT_EQ(Centre(image.image, cells[1][1]), HeatMapColour(0.5, 0, 1));
  }
  EXPECT_EQ(HeatMapColour(2.0, 0, 1), HeatMapColour(1.0, 0, 1));  // clamped
}

TEST(PlotHeatMapTest, PrintsValuesInAContrastingColour) {
  const HeatMapsImage image = RenderHeatMaps({SmallHeatMap()}, "");
  const Rect top = image.cells[0][0][0], bottom = image.cells[0][1][0];
  const int area = top.width * top.height;
  // The cell keeps its colour around the text; the text is black on yellow, white on purple.
  EXPECT_GT(CountPixels(image.image, top, HeatMapColour(1, 0, 1)), area / 2);
  EXPECT_GT(CountPixels(image.image, top, Rgb{0, 0, 0}), 10);
  EXPECT_GT(CountPixels(image.image, bottom, HeatMapColour(0, 0, 1)), area / 2);
  EXPECT_GT(CountPixels(image.image, bottom, Rgb{0xFF, 0xFF, 0xFF}), 10);
}

TEST(PlotAxisTest, TicksAreRoundAndLog2TicksCarryBinarySuffixes) {
  const Axis context = MakeLog2Axis(4096, 65536, 8);
  EXPECT_THAT(context.labels, ::testing::ElementsAre("4K", "8K", "16K", "32K", "64K"));
  const Axis bytes = MakeLog2Axis(12e6, 1.5e9, 5);  // 8M..2G in every second power
  EXPECT_THAT(bytes.labels, ::testing::ElementsAre("8M", "32M", "128M", "512M", "2G"));
  // Within one octave, round values in the octave's unit fill the gap between its ends.
  EXPECT_THAT(MakeLog2Axis(70 << 20, 120 << 20, 8).labels,
              ::testing::ElementsAre("64M", "80M", "100M", "120M", "128M"));
  EXPECT_THAT(MakeLog2Axis(0.3, 0.45, 8).labels,
              ::testing::ElementsAre("0.25", "0.30", "0.40", "0.50"));
  EXPECT_LE(MakeLog2Axis(1, 1 << 30, 8).ticks.size(), 8u);
  EXPECT_DOUBLE_EQ(bytes.Fraction(bytes.lo), 0);
  EXPECT_DOUBLE_EQ(bytes.Fraction(bytes.hi), 1);
  EXPECT_THAT(MakeLinearAxis(0, 35, 6).labels, ::testing::ElementsAre("0", "10", "20", "30", "40"));
  EXPECT_THAT(MakeLinearAxis(-1, 1, 6).labels,
              ::testing::ElementsAre("-1.0", "-0.5", "0.0", "0.5", "1.0"));
  EXPECT_THAT(MakeLinearAxis(0, 50000, 6).labels,
              ::testing::ElementsAre("0", "10k", "20k", "30k", "40k", "50k"));
  EXPECT_EQ(FormatPowerOfTwo(512), "512");
  EXPECT_EQ(FormatPowerOfTwo(1 << 30), "1G");
  EXPECT_EQ(FormatPowerOfTwo(0.25), "0.25");
}

TEST(PlotFontTest, EveryPrintableCharacterHasAGlyph) {
  for (char c = 33; c < 127; ++c) {
    const GlyphRows& glyph = Glyph(c);
    EXPECT_TRUE(std::any_of(glyph.begin(), glyph.end(), [](uint8_t row) { return row != 0; }))
        << "'" << c << "'";
  }
  EXPECT_EQ(TextWidth("4K", 1), 11);
  EXPECT_EQ(TextWidth("4K", 2), 22);
}

TEST(PlotErrorsTest, RejectsBadLineCharts) {
  const auto render = [](const std::vector<LineChart>& charts) {
    return ErrorMessage([&] { RenderLineCharts(charts); });
  };
  EXPECT_THAT(render({}), HasSubstr("no charts"));
  EXPECT_THAT(render({LineChart{"empty", "", "", false, false, {}}}),
              HasSubstr("chart 0 (\"empty\"): no series"));
  LineChart ragged = ContextChart();
  ragged.series[1].y.pop_back();
  EXPECT_THAT(
      render({ContextChart(), ragged}),
      HasSubstr("chart 1 (\"Decode\"), series 1 (\"ma-pairs\"): x has 3 values but y has 2"));
  LineChart zero = ContextChart();
  zero.series[0].x[0] = 0;
  EXPECT_THAT(render({zero}), HasSubstr("log2 x axis"));
  LineChart gaps = ContextChart();
  for (Series& series : gaps.series) series.y.assign(series.x.size(), NAN);
  EXPECT_THAT(render({gaps}), HasSubstr("no data points"));
}

TEST(PlotErrorsTest, RejectsBadHeatMaps) {
  const auto render = [](const std::vector<HeatMap>& panels) {
    return ErrorMessage([&] { RenderHeatMaps(panels, "t"); });
  };
  EXPECT_THAT(render({}), HasSubstr("no panels"));
  HeatMap ragged = SmallHeatMap();
  ragged.values[1].pop_back();
  EXPECT_THAT(render({ragged}),
              HasSubstr("heat map panel 0 (\"accuracy\"): row 1 has 1 values but row 0 has 2"));
  HeatMap columns = SmallHeatMap();
  columns.x_ticks.push_back("1");
  EXPECT_THAT(render({columns}), HasSubstr("3 x_ticks for 2 columns"));
  HeatMap rows = SmallHeatMap();
  rows.y_ticks.pop_back();
  EXPECT_THAT(render({rows}), HasSubstr("1 y_ticks for 2 rows"));
  HeatMap flat = SmallHeatMap();
  flat.min = flat.max = 1;
  EXPECT_THAT(render({flat}), HasSubstr("min 1 must be below max 1"));
  HeatMap other_scale = SmallHeatMap();
  other_scale.max = 2;
  EXPECT_THAT(render({SmallHeatMap(), other_scale}), HasSubstr("share one colour bar"));
}

TEST(PlotWriteTest, AnUnwritablePathThrowsAndLeavesNoFile) {
  TempDir dir;
  const std::string missing_dir = dir.file("no-such-dir/chart.png");
  EXPECT_THAT(ErrorMessage([&] { WriteLineChartsPng({ContextChart()}, missing_dir); }),
              HasSubstr(missing_dir));
  // A directory in the way: the rename fails and the temporary file is cleaned up.
  std::filesystem::create_directory(dir.file("taken"));
  std::ofstream(dir.file("taken/keep")) << "x";
  EXPECT_THAT(ErrorMessage([&] { WriteHeatMapsPng({SmallHeatMap()}, "t", dir.file("taken")); }),
              HasSubstr(dir.file("taken")));
  EXPECT_THAT(DirectoryEntries(dir.path()), ::testing::ElementsAre("taken"));
}

TEST(PlotWriteTest, BadInputLeavesAnEarlierFileUntouched) {
  TempDir dir;
  const std::string path = dir.file("chart.png");
  WriteLineChartsPng({ContextChart()}, path);
  const std::vector<uint8_t> before = ReadFile(path);
  EXPECT_THAT(ErrorMessage([&] { WriteLineChartsPng({}, path); }), HasSubstr("no charts"));
  EXPECT_EQ(ReadFile(path), before);
  EXPECT_THAT(DirectoryEntries(dir.path()), ::testing::ElementsAre("chart.png"));
}

}  // namespace
}  // namespace mixattn::plot
