// An owned, contiguous, row-major f32 tensor: the plain container of the reference path.
// Fast paths use views into arenas instead (later layers); this one favours obviousness.
#pragma once

#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

namespace mixattn {

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;  // size == product of shape

  Tensor() = default;
  explicit Tensor(std::vector<int64_t> tensor_shape)
      : shape(std::move(tensor_shape)), data(static_cast<size_t>(NumElements(shape)), 0.0f) {}

  static int64_t NumElements(const std::vector<int64_t>& dims) {
    return std::accumulate(dims.begin(), dims.end(), int64_t{1}, std::multiplies<int64_t>());
  }
  int64_t size() const { return static_cast<int64_t>(data.size()); }
};

// "[64, 128]"
std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace mixattn
