// AdamW, the learning-rate schedule and gradient clipping (see optimizer.h).
//
// The AdamW update is memory-bound: per element it reads p, g, m, v and writes p, m, v (28 bytes
// for ~10 flops), so it runs as one pass over 16 Ki-element chunks of every tensor, split across
// OpenMP threads in one parallel region per step (one per tensor would mean ~100 fork/joins a
// step, and a barrier stalls whenever a thread is descheduled on a busy machine).
// Each chunk goes through an AVX2 + FMA kernel (intrinsics, compiled through a target attribute
// so the rest of the project keeps its baseline -march) or a portable scalar loop, chosen by
// ops::ActiveSimdLevel(). Both compute exactly the f32 operations of optimizer.h, so they agree
// bit for bit; the portable loop is slow (std::fma is a library call without FMA hardware) but
// only runs on CPUs without AVX2 or when a test forces it.
//
// Two compiler details matter for bit-exactness with PyTorch:
// - GCC contracts a*b + c into an FMA across statements by default (-ffp-contract=fast), and
//   PyTorch rounds the weight-decay product before the update is added (they are separate
//   kernels there). So the decay runs in its own function (MultiplyInPlace, never inlined) on a
//   chunk that then stays in cache for the update; the update itself has no a*b + c left to fuse
//   (its two FMAs are explicit, its other sums add quotients).
// - The AVX2 kernel uses _mm256_sqrt_ps: GCC will not vectorise std::sqrt without
//   -fno-math-errno, which the project does not set.
#include "train/optimizer.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/error.h"
#include "ops/elementwise.h"

#define MIXATTN_AVX2 __attribute__((target("avx2,fma")))
#define MIXATTN_ALWAYS_INLINE __attribute__((always_inline)) inline

namespace mixattn {
namespace {

// Unit of work split across threads: 64 KiB of f32 per array, so a chunk's p, g, m and v stay in
// L2 between the decay pass and the update.
constexpr int64_t kChunkElements = int64_t{1} << 14;
// Below this many elements one thread finishes before an OpenMP fork/join pays off.
constexpr int64_t kParallelMinElements = int64_t{1} << 16;

// Every tensor of a ModelWeights (const or not) with its file name, in ForEachTensor order.
template <typename TensorT>
struct NamedTensor {
  std::string name;
  TensorT* tensor;
};

template <typename Weights>
auto ListTensors(Weights& weights) {
  using TensorT = std::conditional_t<std::is_const_v<Weights>, const Tensor, Tensor>;
  std::vector<NamedTensor<TensorT>> list;
  ForEachTensor(weights, [&](const std::string& name, TensorT& tensor) {
    list.push_back({name, &tensor});
  });
  return list;
}

// A unit of parallel work: elements [begin, begin + count) of tensor `tensor` of a list.
struct Chunk {
  size_t tensor;
  int64_t begin;
  int64_t count;
};

// Every tensor of `tensors` cut into chunks of at most kChunkElements, in order.
template <typename TensorT>
std::vector<Chunk> SplitIntoChunks(const std::vector<NamedTensor<TensorT>>& tensors) {
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t n = tensors[i].tensor->size();
    for (int64_t begin = 0; begin < n; begin += kChunkElements) {
      chunks.push_back({i, begin, std::min(kChunkElements, n - begin)});
    }
  }
  return chunks;
}

// Calls body(index, chunk) for every chunk, in one parallel region when there is enough work.
template <typename Body>
void ForEachChunk(const std::vector<Chunk>& chunks, const Body& body) {
  int64_t elements = 0;
  for (const Chunk& chunk : chunks) elements += chunk.count;
#pragma omp parallel for schedule(static) if (elements >= kParallelMinElements)
  for (size_t i = 0; i < chunks.size(); ++i) body(i, chunks[i]);
}

// Fails unless `other` has the tensors of `reference` (same names in the same order, same
// shapes). `what` names `other` in the message, e.g. "AdamW step: the gradients".
template <typename RefTensor, typename OtherTensor>
void CheckSameTensors(const std::vector<NamedTensor<RefTensor>>& reference,
                      const std::vector<NamedTensor<OtherTensor>>& other, const char* what) {
  const size_t common = std::min(reference.size(), other.size());
  for (size_t i = 0; i < common; ++i) {
    if (other[i].name != reference[i].name) {
      Fail(what, " have tensor '", other[i].name, "' where the parameters have '",
           reference[i].name, "'");
    }
    if (other[i].tensor->shape != reference[i].tensor->shape) {
      Fail(what, ": tensor '", other[i].name, "' has shape ", ShapeString(other[i].tensor->shape),
           "; the parameter has ", ShapeString(reference[i].tensor->shape));
    }
  }
  if (other.size() < reference.size()) {
    Fail(what, " have no tensor '", reference[common].name, "' (the parameters do)");
  }
  if (other.size() > reference.size()) {
    Fail(what, " have tensor '", other[common].name, "', which the parameters do not");
  }
}

// x = x * factor, in f32. Kept out of line so GCC cannot fuse this product into the AdamW
// update that follows (see the file comment).
__attribute__((noinline)) void MultiplyInPlace(float* x, int64_t n, float factor) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] *= factor;
}

// The f32 scalars of one AdamW step, rounded from double as PyTorch rounds its Python floats.
struct AdamWScalars {
  float beta1;
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float bias_correction2_sqrt;  // sqrt(1 - b2^t)
  float epsilon;
  float neg_step_size;  // -lr / (1 - b1^t)
};

MIXATTN_ALWAYS_INLINE void AdamWElement(const AdamWScalars& k, float g, float& p, float& m,
                                        float& v) {
  m = std::fma(g, k.one_minus_beta1, m * k.beta1);
  v = std::fma(k.one_minus_beta2 * g, g, v * k.beta2);
  const float denom = std::sqrt(v) / k.bias_correction2_sqrt + k.epsilon;
  p += (k.neg_step_size * m) / denom;
}

// g, p, m, v: [N]
MIXATTN_AVX2 void AdamWUpdateAvx2(const AdamWScalars& k, const float* g, int64_t n, float* p,
                                  float* m, float* v) {
  const __m256 beta1 = _mm256_set1_ps(k.beta1);
  const __m256 one_minus_beta1 = _mm256_set1_ps(k.one_minus_beta1);
  const __m256 beta2 = _mm256_set1_ps(k.beta2);
  const __m256 one_minus_beta2 = _mm256_set1_ps(k.one_minus_beta2);
  const __m256 bias_correction2_sqrt = _mm256_set1_ps(k.bias_correction2_sqrt);
  const __m256 epsilon = _mm256_set1_ps(k.epsilon);
  const __m256 neg_step_size = _mm256_set1_ps(k.neg_step_size);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gi = _mm256_loadu_ps(g + i);
    const __m256 mi =
        _mm256_fmadd_ps(gi, one_minus_beta1, _mm256_mul_ps(_mm256_loadu_ps(m + i), beta1));
    const __m256 vi = _mm256_fmadd_ps(_mm256_mul_ps(one_minus_beta2, gi), gi,
                                      _mm256_mul_ps(_mm256_loadu_ps(v + i), beta2));
    const __m256 denom =
        _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), bias_correction2_sqrt), epsilon);
    const __m256 update = _mm256_div_ps(_mm256_mul_ps(neg_step_size, mi), denom);
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    _mm256_storeu_ps(p + i, _mm256_add_ps(_mm256_loadu_ps(p + i), update));
  }
  for (; i < n; ++i) AdamWElement(k, g[i], p[i], m[i], v[i]);
}

void AdamWUpdatePortable(const AdamWScalars& k, const float* g, int64_t n, float* p, float* m,
                         float* v) {
  for (int64_t i = 0; i < n; ++i) AdamWElement(k, g[i], p[i], m[i], v[i]);
}

}  // namespace

bool DecaysWeight(const std::string& tensor_name) {
  return tensor_name.starts_with("model.layers.") && tensor_name.ends_with("_proj.weight");
}

// ---- AdamW ----

AdamW::AdamW(const ModelWeights& params, AdamWOptions options) : options_(options) {
  if (!(options.beta1 >= 0.0 && options.beta1 < 1.0))
    Fail("AdamW: beta1 = ", options.beta1, " must be in [0, 1)");
  if (!(options.beta2 >= 0.0 && options.beta2 < 1.0))
    Fail("AdamW: beta2 = ", options.beta2, " must be in [0, 1)");
  if (!(options.epsilon > 0.0 && std::isfinite(options.epsilon)))
    Fail("AdamW: epsilon = ", options.epsilon, " must be > 0 (it keeps m / sqrt(v) finite)");
  if (!(options.weight_decay >= 0.0 && std::isfinite(options.weight_decay)))
    Fail("AdamW: weight_decay = ", options.weight_decay, " must be >= 0");
  m_ = ZerosLike(params);
  v_ = ZerosLike(params);
}

void AdamW::Step(ModelWeights& params, const ModelWeights& grads, double learning_rate) {
  if (!(learning_rate >= 0.0 && std::isfinite(learning_rate)))
    Fail("AdamW step: learning rate ", learning_rate, " must be finite and >= 0");
  const auto p_list = ListTensors(params);
  const auto g_list = ListTensors(grads);
  const auto m_list = ListTensors(m_);
  const auto v_list = ListTensors(v_);
  CheckSameTensors(m_list, p_list, "AdamW step: the parameters");
  CheckSameTensors(m_list, g_list, "AdamW step: the gradients");

  ++t_;
  const AdamWOptions& o = options_;
  const double step = static_cast<double>(t_);
  const double bias_correction1 = 1.0 - std::pow(o.beta1, step);
  const double bias_correction2 = 1.0 - std::pow(o.beta2, step);
  const AdamWScalars k = {
      .beta1 = static_cast<float>(o.beta1),
      .one_minus_beta1 = static_cast<float>(1.0 - o.beta1),
      .beta2 = static_cast<float>(o.beta2),
      .one_minus_beta2 = static_cast<float>(1.0 - o.beta2),
      .bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2)),
      .epsilon = static_cast<float>(o.epsilon),
      .neg_step_size = static_cast<float>(-(learning_rate / bias_correction1)),
  };
  const float decay = static_cast<float>(1.0 - learning_rate * o.weight_decay);
  const bool avx2 = ops::ActiveSimdLevel() >= ops::SimdLevel::kAvx2;
  // p * 1.0f == p, so skipping the pass for undecayed tensors changes no bit.
  std::vector<char> decays(p_list.size());
  for (size_t i = 0; i < p_list.size(); ++i) {
    decays[i] = decay != 1.0f && DecaysWeight(p_list[i].name);
  }
  ForEachChunk(SplitIntoChunks(p_list), [&](size_t, const Chunk& chunk) {
    const size_t i = chunk.tensor;
    float* p = p_list[i].tensor->data.data() + chunk.begin;
    const float* g = g_list[i].tensor->data.data() + chunk.begin;
    float* m = m_list[i].tensor->data.data() + chunk.begin;
    float* v = v_list[i].tensor->data.data() + chunk.begin;
    if (decays[i]) MultiplyInPlace(p, chunk.count, decay);
    if (avx2) {
      AdamWUpdateAvx2(k, g, chunk.count, p, m, v);
    } else {
      AdamWUpdatePortable(k, g, chunk.count, p, m, v);
    }
  });
}

void AdamW::Restore(ModelWeights first_moment, ModelWeights second_moment, int64_t step_count) {
  if (step_count < 0) Fail("AdamW restore: step count ", step_count, " must be >= 0");
  const auto reference = ListTensors(std::as_const(m_));
  CheckSameTensors(reference, ListTensors(std::as_const(first_moment)),
                   "AdamW restore: the first moments (m)");
  CheckSameTensors(reference, ListTensors(std::as_const(second_moment)),
                   "AdamW restore: the second moments (v)");
  m_ = std::move(first_moment);
  v_ = std::move(second_moment);
  t_ = step_count;
}

// ---- Learning-rate schedule ----

void LrSchedule::Validate() const {
  if (!(peak_lr > 0.0 && std::isfinite(peak_lr)))
    Fail("learning-rate schedule: peak_lr = ", peak_lr, " must be > 0");
  if (warmup_steps < 0)
    Fail("learning-rate schedule: warmup_steps = ", warmup_steps, " must be >= 0");
  if (total_steps < 1) Fail("learning-rate schedule: total_steps = ", total_steps, " must be >= 1");
  if (warmup_steps > total_steps) {
    Fail("learning-rate schedule: warmup_steps = ", warmup_steps,
         " must be <= total_steps = ", total_steps);
  }
  if (!(min_lr_ratio >= 0.0 && min_lr_ratio <= 1.0))
    Fail("learning-rate schedule: min_lr_ratio = ", min_lr_ratio, " must be in [0, 1]");
}

double LrSchedule::LearningRate(int64_t step) const {
  Validate();
  MIXATTN_CHECK(step >= 0);
  if (step < warmup_steps) {
    return peak_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  }
  const double min_lr = min_lr_ratio * peak_lr;
  if (step >= total_steps - 1) return min_lr;
  // Here warmup_steps <= step < total_steps - 1, so the denominator is >= 1.
  const double progress = static_cast<double>(step - warmup_steps) /
                          static_cast<double>(total_steps - 1 - warmup_steps);
  return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

// ---- Gradients ----

double GlobalGradNorm(const ModelWeights& grads) {
  const auto tensors = ListTensors(grads);
  const std::vector<Chunk> chunks = SplitIntoChunks(tensors);
  std::vector<double> partial(chunks.size());  // sum of g^2 per chunk
  ForEachChunk(chunks, [&](size_t index, const Chunk& chunk) {
    const float* g = tensors[chunk.tensor].tensor->data.data() + chunk.begin;
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < chunk.count; ++i) sum += double{g[i]} * g[i];
    partial[index] = sum;
  });
  return std::sqrt(std::accumulate(partial.begin(), partial.end(), 0.0));
}

double ClipGradNorm(ModelWeights& grads, double max_norm) {
  const double norm = GlobalGradNorm(grads);
  if (max_norm > 0.0 && std::isfinite(norm)) {
    // torch/nn/utils/clip_grad.py: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1.
    const double coefficient = max_norm / (norm + 1e-6);
    if (coefficient < 1.0) ScaleGradients(grads, coefficient);
  }
  return norm;
}

void ScaleGradients(ModelWeights& grads, double scale) {
  const float factor = static_cast<float>(scale);
  const auto tensors = ListTensors(grads);
  ForEachChunk(SplitIntoChunks(tensors), [&](size_t, const Chunk& chunk) {
    MultiplyInPlace(tensors[chunk.tensor].tensor->data.data() + chunk.begin, chunk.count, factor);
  });
}

void ZeroGradients(ModelWeights& grads) {
  ForEachTensor(grads, [](const std::string&, Tensor& tensor) {
    std::fill(tensor.data.begin(), tensor.data.end(), 0.0f);
  });
}

ModelWeights ZerosLike(const ModelWeights& like) {
  ModelWeights zeros;
  zeros.layers.resize(like.layers.size());
  for (size_t i = 0; i < like.layers.size(); ++i) {
    if (like.layers[i].kv) zeros.layers[i].kv.emplace();
  }
  if (like.lm_head) zeros.lm_head.emplace();
  const auto source = ListTensors(like);
  size_t next = 0;
  ForEachTensor(zeros, [&](const std::string&, Tensor& tensor) {
    tensor = Tensor(source[next++].tensor->shape);
  });
  return zeros;
}

}  // namespace mixattn
