#include "plot/axis.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>

#include "core/error.h"

namespace mixattn::plot {
namespace {

// The smallest of 1, 2, 5 x 10^k that is >= raw (raw > 0).
double NiceStep(double raw) {
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  for (double nice : {1.0, 2.0, 5.0}) {
    if (nice * magnitude >= raw * (1 - 1e-9)) return nice * magnitude;
  }
  return 10 * magnitude;
}

// Decimals that tell apart two numbers `step` apart: 0 for 20, 1 for 0.5, 2 for 0.05.
int DecimalsFor(double step) {
  return std::clamp(static_cast<int>(-std::floor(std::log10(step) + 1e-9)), 0, 6);
}

const char* const kBinarySuffixes[] = {"", "K", "M", "G", "T", "P", "E"};

}  // namespace

double Axis::Fraction(double value) const {
  if (log2) return (std::log2(value) - std::log2(lo)) / (std::log2(hi) - std::log2(lo));
  return (value - lo) / (hi - lo);
}

Axis MakeLinearAxis(double data_min, double data_max, int target_ticks) {
  MIXATTN_CHECK(std::isfinite(data_min) && std::isfinite(data_max) && data_min <= data_max);
  MIXATTN_CHECK(target_ticks >= 2);
  if (data_max - data_min <= 1e-12 * std::max(std::abs(data_min), std::abs(data_max))) {
    // One value: centre it in a range of half its size (or +-1 around zero).
    const double half = data_min == 0 ? 1 : std::abs(data_min) / 4;
    data_min -= half;
    data_max += half;
  }
  const double step = NiceStep((data_max - data_min) / (target_ticks - 1));
  // Tick indices rather than accumulated sums, so 0.1 + 0.2 never prints as 0.30000000000000004.
  const double first = std::floor(data_min / step + 1e-9), last = std::ceil(data_max / step - 1e-9);
  Axis axis;
  axis.lo = first * step;
  axis.hi = last * step;
  const NumberFormat format =
      ChooseNumberFormat(std::max(std::abs(axis.lo), std::abs(axis.hi)), step);
  for (double i = first; i <= last + 0.5; ++i) {
    axis.ticks.push_back(i * step);
    axis.labels.push_back(FormatNumber(i * step, format));
  }
  return axis;
}

Axis MakeLog2Axis(double data_min, double data_max, int max_ticks) {
  MIXATTN_CHECK(data_min > 0 && data_max >= data_min && std::isfinite(data_max));
  MIXATTN_CHECK(max_ticks >= 2);
  int low = static_cast<int>(std::floor(std::log2(data_min) + 1e-9));
  int high = static_cast<int>(std::ceil(std::log2(data_max) - 1e-9));
  if (high == low) {  // one power of two: show the powers either side too
    --low;
    ++high;
  }
  // (high - low) / stride + 1 ticks, at most max_ticks.
  const int stride = (high - low + max_ticks - 2) / (max_ticks - 1);
  high = low + (high - low + stride - 1) / stride * stride;  // end on a tick
  Axis axis;
  axis.log2 = true;
  axis.lo = std::ldexp(1.0, low);
  axis.hi = std::ldexp(1.0, high);
  if (high - low >= 2) {
    for (int power = low; power <= high; power += stride) {
      axis.ticks.push_back(std::ldexp(1.0, power));
      axis.labels.push_back(FormatPowerOfTwo(axis.ticks.back()));
    }
    return axis;
  }
  // One octave: its two ends alone leave the axis bare, so add round values between them, all
  // labelled in the binary unit of the top end: 64M, 80M, 100M, 120M, 128M.
  const int group = std::clamp(high / 10, 0, 6);
  const double unit = std::ldexp(1.0, 10 * group);
  const double step = NiceStep((axis.hi - axis.lo) / unit / 4) * unit;
  // Enough decimals for the step and for the bottom end: 2^-k needs k (0.25, 0.5M).
  const int decimals = std::max(DecimalsFor(step / unit), std::min(10 * group - low, 6));
  const NumberFormat format{unit, kBinarySuffixes[group], decimals};
  const auto add = [&](double value) {
    axis.ticks.push_back(value);
    axis.labels.push_back(FormatNumber(value, format));
  };
  add(axis.lo);
  for (double i = std::floor(axis.lo / step) + 1; i * step < axis.hi; ++i) {
    // Skip a value so close to an end that the labels would collide.
    const double at = axis.Fraction(i * step);
    if (at > 0.08 && at < 0.92) add(i * step);
  }
  add(axis.hi);
  return axis;
}

NumberFormat ChooseNumberFormat(double largest_magnitude, double step) {
  MIXATTN_CHECK(step > 0);
  NumberFormat format;
  if (largest_magnitude >= 1e9) {
    format = {1e9, "G", 0};
  } else if (largest_magnitude >= 1e6) {
    format = {1e6, "M", 0};
  } else if (largest_magnitude >= 1e4) {
    format = {1e3, "k", 0};
  }
  format.decimals = DecimalsFor(step / format.divisor);
  return format;
}

std::string FormatNumber(double value, const NumberFormat& format) {
  double scaled = value / format.divisor;
  if (std::abs(scaled) < 0.5 * std::pow(10.0, -format.decimals)) {
    if (!format.suffix.empty()) return "0";  // not "0k"
    scaled = 0;                              // not "-0.00"
  }
  char text[64];
  std::snprintf(text, sizeof text, "%.*f%s", format.decimals, scaled, format.suffix.c_str());
  return text;
}

std::string FormatPowerOfTwo(double value) {
  const int power = static_cast<int>(std::lround(std::log2(value)));
  if (power >= 0 && power < 63) {
    const int group = std::min(power / 10, 6);
    return std::to_string(int64_t{1} << (power - 10 * group)) + kBinarySuffixes[group];
  }
  if (power < 0 && power >= -3) {  // 0.5, 0.25, 0.125
    char text[16];
    std::snprintf(text, sizeof text, "%g", std::ldexp(1.0, power));
    return text;
  }
  return "2^" + std::to_string(power);
}

}  // namespace mixattn::plot
