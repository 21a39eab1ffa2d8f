// A small deterministic random generator. std::normal_distribution differs between standard
// libraries, so weights initialised from a seed would differ between machines; this does not.
#pragma once

#include <cmath>
#include <cstdint>

namespace mixattn {

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}

  // splitmix64 (Steele, Lea, Flood 2014): full-period 64-bit generator.
  uint64_t NextU64() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

  // Uniform in [0, 1) with 53 random bits.
  double Uniform() { return static_cast<double>(NextU64() >> 11) * 0x1.0p-53; }

  // Uniform integer in [0, n).
  uint64_t Below(uint64_t n) { return NextU64() % n; }

  // Standard normal by Box-Muller.
  double Normal() {
    const double u1 = 1.0 - Uniform();  // (0, 1]
    const double u2 = Uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }

  uint64_t state() const { return state_; }

 private:
  uint64_t state_;
};

}  // namespace mixattn
