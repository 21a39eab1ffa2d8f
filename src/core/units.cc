#include "core/units.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <string>

#include "core/error.h"

namespace mixattn {

int64_t ParseByteSize(std::string_view text, std::string_view what) {
  size_t number_end = 0;
  while (number_end < text.size() &&
         (std::isdigit(static_cast<unsigned char>(text[number_end])) || text[number_end] == '.')) {
    ++number_end;
  }
  const std::string number(text.substr(0, number_end));
  std::string unit(text.substr(number_end));
  for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const auto bad = [&]() {
    Fail(what, ": '", text, "' is not a byte size; expected a number with an optional unit, ",
         "e.g. 8GiB, 512MiB, 1.5GB or 4096");
  };
  if (number.empty() || number == "." || number.find('.') != number.rfind('.')) bad();
  double scale = 0;
  if (unit.empty() || unit == "b")
    scale = 1;
  else if (unit == "kb")
    scale = 1e3;
  else if (unit == "mb")
    scale = 1e6;
  else if (unit == "gb")
    scale = 1e9;
  else if (unit == "tb")
    scale = 1e12;
  else if (unit == "kib")
    scale = 1024.0;
  else if (unit == "mib")
    scale = 1024.0 * 1024;
  else if (unit == "gib")
    scale = 1024.0 * 1024 * 1024;
  else if (unit == "tib")
    scale = 1024.0 * 1024 * 1024 * 1024;
  else
    bad();
  const double bytes = std::stod(number) * scale;
  if (!(bytes >= 1) || bytes > 9.0e18) {
    Fail(what, ": '", text, "' must be at least 1 byte and at most 8 EiB");
  }
  return static_cast<int64_t>(std::llround(bytes));
}

std::string FormatBytes(int64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (std::fabs(value) >= 1024.0 && unit < 5) {
    value /= 1024.0;
    ++unit;
  }
  char buffer[32];
  if (unit == 0) {
    std::snprintf(buffer, sizeof buffer, "%lld B", static_cast<long long>(bytes));
  } else {
    std::snprintf(buffer, sizeof buffer,
                  value >= 100  ? "%.0f %s"
                  : value >= 10 ? "%.1f %s"
                                : "%.2f %s",
                  value, kUnits[unit]);
  }
  return buffer;
}

}  // namespace mixattn
