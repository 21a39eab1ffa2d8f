#include "ops/scalar_ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace mixattn::ops {

void MatMulTransposedScalar(const float* x, const float* w, int64_t rows, int64_t out_features,
                            int64_t in_features, float* y) {
  for (int64_t t = 0; t < rows; ++t) {
    const float* x_row = x + t * in_features;
    for (int64_t n = 0; n < out_features; ++n) {
      const float* w_row = w + n * in_features;
      double sum = 0;
      for (int64_t k = 0; k < in_features; ++k) sum += double{x_row[k]} * w_row[k];
      y[t * out_features + n] = static_cast<float>(sum);
    }
  }
}

void RmsNormScalar(const float* x, const float* weight, int64_t rows, int64_t width, double eps,
                   float* out) {
  for (int64_t t = 0; t < rows; ++t) {
    const float* row = x + t * width;
    double sum_squares = 0;
    for (int64_t c = 0; c < width; ++c) sum_squares += double{row[c]} * row[c];
    const double inv_rms = 1.0 / std::sqrt(sum_squares / static_cast<double>(width) + eps);
    for (int64_t c = 0; c < width; ++c)
      out[t * width + c] = static_cast<float>(row[c] * inv_rms * weight[c]);
  }
}

void RopeScalar(float* x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t first_position,
                double theta) {
  const int64_t half = head_dim / 2;
  for (int64_t t = 0; t < tokens; ++t) {
    const double position = static_cast<double>(first_position + t);
    for (int64_t j = 0; j < half; ++j) {
      const double angle =
          position * std::pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(head_dim));
      const double cos_a = std::cos(angle), sin_a = std::sin(angle);
      for (int64_t h = 0; h < heads; ++h) {
        float* vec = x + (t * heads + h) * head_dim;
        const double first = vec[j], second = vec[j + half];
        vec[j] = static_cast<float>(first * cos_a - second * sin_a);
        vec[j + half] = static_cast<float>(second * cos_a + first * sin_a);
      }
    }
  }
}

void SwiGluScalar(const float* gate, const float* up, int64_t count, float* out) {
  for (int64_t i = 0; i < count; ++i) {
    const double a = gate[i];
    out[i] = static_cast<float>(a / (1.0 + std::exp(-a)) * up[i]);
  }
}

void CausalAttentionScalar(const float* q, const float* k, const float* v, int64_t tokens,
                           int64_t query_heads, int64_t kv_heads, int64_t head_dim, int64_t window,
                           float* out) {
  const int64_t group = query_heads / kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  std::vector<double> scores(static_cast<size_t>(tokens));
  std::vector<double> accum(static_cast<size_t>(head_dim));
  for (int64_t p = 0; p < tokens; ++p) {
    const int64_t first_key = window > 0 ? std::max<int64_t>(0, p - window + 1) : 0;
    for (int64_t n = 0; n < query_heads; ++n) {
      const int64_t g = n / group;
      const float* q_vec = q + (p * query_heads + n) * head_dim;
      double max_score = -INFINITY;
      for (int64_t j = first_key; j <= p; ++j) {
        const float* k_vec = k + (j * kv_heads + g) * head_dim;
        double dot = 0;
        for (int64_t d = 0; d < head_dim; ++d) dot += double{q_vec[d]} * k_vec[d];
        scores[static_cast<size_t>(j)] = dot * scale;
        max_score = std::max(max_score, dot * scale);
      }
      double normaliser = 0;
      std::fill(accum.begin(), accum.end(), 0.0);
      for (int64_t j = first_key; j <= p; ++j) {
        const double weight = std::exp(scores[static_cast<size_t>(j)] - max_score);
        normaliser += weight;
        const float* v_vec = v + (j * kv_heads + g) * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) accum[static_cast<size_t>(d)] += weight * v_vec[d];
      }
      float* out_vec = out + (p * query_heads + n) * head_dim;
      for (int64_t d = 0; d < head_dim; ++d)
        out_vec[d] = static_cast<float>(accum[static_cast<size_t>(d)] / normaliser);
    }
  }
}

}  // namespace mixattn::ops
