// Chart axes: the range an axis spans, where its ticks go and how they are labelled.
//
// Linear axes tick at nice round steps (1, 2 or 5 x 10^k, Heckbert's "nice numbers", Graphics
// Gems 1990) and extend to the ticks just outside the data. Log2 axes tick at powers of two
// labelled with binary suffixes (512, 1K, 4K, 32K, 1M, 2G), every power or every few powers so
// that at most `max_ticks` appear, and extend to the powers just outside the data.
#pragma once

#include <string>
#include <vector>

namespace mixattn::plot {

struct Axis {
  double lo = 0, hi = 1;  // values at the two ends of the axis
  bool log2 = false;
  std::vector<double> ticks;        // [ticks], lo <= tick <= hi
  std::vector<std::string> labels;  // [ticks]
  // Where `value` falls along the axis: 0 at lo, 1 at hi.
  double Fraction(double value) const;
};

// An axis covering [data_min, data_max] with about `target_ticks` ticks.
Axis MakeLinearAxis(double data_min, double data_max, int target_ticks);
// A base-2 log axis covering [data_min, data_max] (both > 0) with at most `max_ticks` ticks.
Axis MakeLog2Axis(double data_min, double data_max, int max_ticks);

// How to print numbers of similar size: "12.5", "0.85", "40k", "1.5M" (SI suffixes from 1e4 up).
struct NumberFormat {
  double divisor = 1;
  std::string suffix;
  int decimals = 0;
};
// A format for numbers up to `largest_magnitude` in absolute value that tells apart two
// numbers `step` apart.
NumberFormat ChooseNumberFormat(double largest_magnitude, double step);
std::string FormatNumber(double value, const NumberFormat& format);
// A power of two with a binary suffix: 512, 1K, 4K, 64K, 1M, 2G; below 1: 0.5, 0.25, 2^-5.
std::string FormatPowerOfTwo(double value);

}  // namespace mixattn::plot
