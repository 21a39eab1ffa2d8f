// The training step's model: forward over a batch of sequences, keeping what the backward pass
// needs, then the backward pass into gradients shaped like the weights.
//
// Per layer i (the same block as model/reference_forward.h, over B sequences of T tokens at once,
// rows R = B T; sequence b is rows [bT, (b+1)T), positions 0..T-1):
//   h1 = RMSNorm(x_i) w_in                 q = RoPE(h1 Wq^T)
//   owner:  K_i = RoPE(h1 Wk^T), V_i = h1 Wv^T       reader: K, V = those of kv_source(i)
//   a = Attention(q, K, V; layer i's window)   x_mid = x_i + a Wo^T
//   h2 = RMSNorm(x_mid) w_post                 x_{i+1} = x_mid + SwiGLU(h2 Wg^T, h2 Wu^T) Wd^T
// loss = mean cross-entropy of RMSNorm(x_L) w_final W_out^T over the rows whose target is >= 0.
//
// Backward runs the layers in reverse. Cross-layer KV reuse needs one thing beyond a plain
// transformer: every owner keeps gradient buffers dK_i, dV_i, and each layer's attention backward
// adds into the buffers of the layer it reads. Readers come after their owner, so by the time the
// reverse sweep reaches owner i, every reader has added its share, and dK_i, dV_i flow once
// through the owner's RoPE and K/V projections. A tied LM head adds its gradient into the
// embedding's (the same tensor).
//
// Matmul precision: kF32 multiplies f32 operands. kBf16 rounds both operands of every matmul
// (forward and backward) to bf16 and accumulates in f32: the numerics of a bf16 matmul. oneDNN 2.6
// runs bf16 matmuls natively only on CPUs with AVX-512 (BF16/AMX); elsewhere the rounded values
// are multiplied by the f32 gemm, which gives the same products at f32 speed plus the rounding
// passes, so DefaultMatmulPrecision() picks bf16 only where the CPU has native bf16.
//
// Legend: B = sequences, T = tokens per sequence, R = B T, H = hidden, NH / KVH = query / KV
// heads, D = head dim, F = SwiGLU width, V = vocab, L = layers.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <vector>

#include "model/config.h"
#include "model/kv_plan.h"
#include "model/weights.h"
#include "ops/elementwise.h"

namespace mixattn {

enum class MatmulPrecision { kF32, kBf16 };
const char* MatmulPrecisionName(MatmulPrecision precision);  // "f32", "bf16"
// kBf16 where this CPU multiplies bf16 natively (AVX512_BF16), else kF32.
MatmulPrecision DefaultMatmulPrecision();

// B sequences of T tokens: inputs[b T + t] is read, targets[b T + t] is the token it must predict
// (negative: not scored, e.g. padding).
struct TrainingBatch {
  int64_t sequences = 0;         // B
  int64_t length = 0;            // T
  std::vector<int32_t> inputs;   // [B T]
  std::vector<int32_t> targets;  // [B T]

  int64_t rows() const { return sequences * length; }
};

class TrainingModel {
 public:
  // Fails (mixattn::Error) for an invalid config.
  TrainingModel(const ModelConfig& config, MatmulPrecision precision);

  // Forward and backward over `batch`: returns the mean loss over the scored rows and adds
  // gradient_scale * dLoss/dW into `grads` (+=; shaped like `params`, e.g. ZerosLike). Gradient
  // accumulation over k micro-batches passes gradient_scale = 1/k. Fails for a batch whose sizes
  // disagree, with T beyond max_position_embeddings, or a token outside the vocabulary.
  double ForwardBackward(const ModelWeights& params, const TrainingBatch& batch,
                         double gradient_scale, ModelWeights& grads);

  // Forward only (validation): the mean loss and how many rows were scored.
  struct LossResult {
    double mean_loss = 0.0;
    int64_t scored_rows = 0;
  };
  LossResult Loss(const ModelWeights& params, const TrainingBatch& batch);

  // Floating-point operations of one forward + backward over `rows` tokens in sequences of
  // `length`: 6 per weight per token for the matmuls (2 forward, 4 backward) plus attention
  // (QK^T and PV, forward 4 D flops per scored key and query head, backward 8 D), counting only
  // the keys inside each layer's window. The figure benchmarks report as model FLOP/s.
  static double TrainingFlops(const ModelConfig& config, int64_t sequences, int64_t length);

  const ModelConfig& config() const { return config_; }
  MatmulPrecision precision() const { return precision_; }

 private:
  // Saved activations of one layer, rows [R, ...].
  struct LayerState {
    std::vector<float> x_in;   // [R, H] residual stream entering the layer
    std::vector<float> h1;     // [R, H] normed
    std::vector<float> q;      // [R, NH D] after RoPE
    std::vector<float> attn;   // [R, NH D] attention output
    std::vector<float> lse;    // [R, NH]
    std::vector<float> x_mid;  // [R, H]
    std::vector<float> h2;     // [R, H]
    std::vector<float> gate;   // [R, F]
    std::vector<float> up;     // [R, F]
    std::vector<float> act;    // [R, F] SwiGLU output
  };
  struct OwnerState {
    std::vector<float> k, v;    // [R, KVH D], k after RoPE
    std::vector<float> dk, dv;  // gradients, summed over the owner and its readers
  };

  void CheckBatch(const TrainingBatch& batch) const;
  void PrepareWeights(const ModelWeights& params);
  // Runs the layers; afterwards final_hidden_ = RMSNorm(x_L) w_final, x_final_ = x_L.
  void Forward(const ModelWeights& params, const TrainingBatch& batch);
  // y[M, N] = x[M, K] w[N, K]^T with w from the prepared weights (rounded in kBf16).
  void MatMul(const float* x, const float* w, int64_t rows, int64_t out_features,
              int64_t in_features, float* y);
  // dx += dy w, dw += dy^T x, with w from the prepared weights; kBf16 rounds copies of x and dy.
  void MatMulBackward(const float* x, const float* w, const float* dy, int64_t rows,
                      int64_t out_features, int64_t in_features, float* dx, float* dw);
  const ModelWeights& MatmulWeights(const ModelWeights& params) const;

  ModelConfig config_;
  KvPlan plan_;
  MatmulPrecision precision_;
  ops::RopeTable rope_;
  ModelWeights rounded_;  // kBf16: params rounded to bf16 (refreshed each call)

  // Workspace, grown to the largest batch seen.
  int64_t rows_ = 0;
  std::vector<int32_t> positions_;  // [R]
  std::vector<LayerState> layers_;
  std::map<int, OwnerState> owners_;
  std::vector<float> x_final_, final_hidden_;  // [R, H]
  std::vector<float> logits_;                  // [chunk, V]
  std::vector<float> dx_, dh_, dtmp_, dattn_;  // [R, H] / [R, NH D]
  std::vector<float> dact_, dgate_, dup_;      // [R, F]
  std::vector<float> dq_;                      // [R, NH D]
  std::vector<float> round_x_, round_dy_;      // kBf16: rounded matmul operands
};

}  // namespace mixattn
