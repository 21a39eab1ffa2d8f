// The optimizer side of a training step: AdamW with decoupled weight decay, the learning-rate
// schedule (linear warm-up, then cosine decay), and gradient clipping by global L2 norm.
//
// Parameters, gradients and both Adam moments are all ModelWeights of f32 tensors with the same
// tensors (ForEachTensor visits them in the same order), so every operation here zips them tensor
// by tensor and element by element; nothing depends on which layer a tensor belongs to except
// DecaysWeight, which looks at its file name.
//
// AdamW reproduces PyTorch's torch.optim.AdamW (1.13, the single-tensor algorithm, amsgrad and
// maximize off) element for element in f32, so a step here and a step there from the same state
// give the same bits (verified against Debian's python3-torch 1.13 on an AVX2 CPU when this was
// written, for both of our code paths; not a CI check); see AdamW::Step.
//
// Legend: N = elements of one tensor.
#pragma once

#include <cstdint>
#include <string>

#include "model/weights.h"

namespace mixattn {

// torch.optim.AdamW's hyper-parameters with the values LLM pre-training usually takes (GPT-3,
// Llama): betas (0.9, 0.95), weight decay 0.1. The learning rate is per step (see LrSchedule).
struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double epsilon = 1e-8;
  double weight_decay = 0.1;
};

// Whether decoupled weight decay applies to the tensor with this file name: only the linear
// matrices inside the blocks (q/k/v/o and gate/up/down projections). Norm weights and the
// input/output embeddings are not decayed (the usual GPT-2 / Llama practice: decaying a norm gain
// or an embedding row towards 0 fights the normalisation instead of regularising).
bool DecaysWeight(const std::string& tensor_name);

// AdamW (Loshchilov & Hutter 2019) with f32 state m, v shaped like the parameters.
class AdamW {
 public:
  // Zero moments shaped like `params`, step count 0. Throws Error unless 0 <= beta1, beta2 < 1,
  // epsilon > 0 and weight_decay >= 0.
  explicit AdamW(const ModelWeights& params, AdamWOptions options = {});

  // One update with learning rate `learning_rate` (>= 0), t += 1. `params` and `grads` must have
  // the tensors, names and shapes the optimizer was built for (Error naming the tensor if not).
  // Per element, in f32, in PyTorch's order of operations (torch/optim/adamw.py,
  // _single_tensor_adamw; scalars are Python floats, i.e. double, rounded to f32 where they meet
  // a tensor, and PyTorch's AVX2 kernels fuse the two moment updates into FMAs):
  //   p = p * f32(1 - lr * wd)                                  (decayed tensors only)
  //   m = fma(g, f32(1 - b1), m * f32(b1))
  //   v = fma(f32(1 - b2) * g, g, v * f32(b2))
  //   denom = sqrt(v) / f32(sqrt(1 - b2^t)) + f32(eps)
  //   p = p + (f32(-lr / (1 - b1^t)) * m) / denom
  // The same bits come out of the AVX2 path and the portable one.
  void Step(ModelWeights& params, const ModelWeights& grads, double learning_rate);

  const AdamWOptions& options() const { return options_; }
  const ModelWeights& first_moment() const { return m_; }   // m, shaped like the parameters
  const ModelWeights& second_moment() const { return v_; }  // v, shaped like the parameters
  int64_t step_count() const { return t_; }                 // t: steps taken so far

  // Replaces the state with one saved earlier (a checkpoint). Throws Error naming the tensor if
  // m or v does not have the parameters' tensors and shapes, or if step_count < 0; on error the
  // state is unchanged.
  void Restore(ModelWeights first_moment, ModelWeights second_moment, int64_t step_count);

 private:
  AdamWOptions options_;
  ModelWeights m_;
  ModelWeights v_;
  int64_t t_ = 0;
};

// The learning rate of each (0-based) step s:
//   s <  W:                  peak * (s + 1) / W                      (linear warm-up)
//   W <= s < S - 1:          min + (peak - min) * (1 + cos(pi * (s - W) / (S - 1 - W))) / 2
//   s >= max(W, S - 1):      min                                      (end of the cosine; held)
// with W = warmup_steps, S = total_steps, min = min_lr_ratio * peak. So the first step already
// trains (peak / W), the last warm-up step and the first cosine step both use the peak, and the
// last step of the run (s = S - 1) uses the minimum.
struct LrSchedule {
  double peak_lr = 0.0;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;
  double min_lr_ratio = 0.1;

  // Throws Error naming the field unless peak_lr > 0, warmup_steps >= 0, total_steps >= 1,
  // warmup_steps <= total_steps and 0 <= min_lr_ratio <= 1.
  void Validate() const;
  // Validates, then evaluates the formula above; step must be >= 0.
  double LearningRate(int64_t step) const;
};

// sqrt(sum of g^2) over every element of every tensor, summed in double. Fixed-size chunks are
// summed separately and then in order, so the result does not depend on the number of threads.
double GlobalGradNorm(const ModelWeights& grads);

// torch.nn.utils.clip_grad_norm_ (norm_type 2): returns the global norm before clipping and, when
// max_norm > 0 and c = max_norm / (norm + 1e-6) < 1, multiplies every gradient by f32(c), which
// leaves a norm of max_norm (up to that 1e-6). max_norm <= 0 disables clipping. A non-finite norm
// is returned as is with the gradients untouched: the caller decides to skip the step.
double ClipGradNorm(ModelWeights& grads, double max_norm);

// g = g * f32(scale) for every element (gradient accumulation: 1 / micro-batches).
void ScaleGradients(ModelWeights& grads, double scale);
// g = 0 for every element.
void ZeroGradients(ModelWeights& grads);
// The same tensors with the same shapes (kv and lm_head present iff present in `like`), all 0.
ModelWeights ZerosLike(const ModelWeights& like);

}  // namespace mixattn
