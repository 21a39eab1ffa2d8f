#include "train/training_model.h"

#include <algorithm>

#include "core/error.h"
#include "ops/backward.h"

namespace mixattn {
namespace {

// Rows of logits alive at once: the [R, V] logits of a whole batch would be the largest buffer
// of a step (R = 4096, V = 8192: 128 MiB), so the loss and its gradient run over row chunks.
constexpr int64_t kLogitRowsPerChunk = 512;

ModelConfig Validated(ModelConfig config) {
  ValidateConfig(config);
  return config;
}

void Zero(std::vector<float>& values) { std::fill(values.begin(), values.end(), 0.0f); }

template <typename T>
void GrowTo(std::vector<T>& values, int64_t count) {
  if (static_cast<int64_t>(values.size()) < count) values.resize(static_cast<size_t>(count));
}

int64_t WindowOf(const LayerSpec& spec) {
  return spec.kind == AttentionKind::kSliding ? spec.window : 0;
}

}  // namespace

const char* MatmulPrecisionName(MatmulPrecision precision) {
  return precision == MatmulPrecision::kBf16 ? "bf16" : "f32";
}

MatmulPrecision DefaultMatmulPrecision() {
  return __builtin_cpu_supports("avx512bf16") ? MatmulPrecision::kBf16 : MatmulPrecision::kF32;
}

TrainingModel::TrainingModel(const ModelConfig& config, MatmulPrecision precision)
    : config_(Validated(config)),
      plan_(config_),
      precision_(precision),
      rope_(config_.max_position_embeddings, config_.head_dim, config_.rope_theta),
      layers_(static_cast<size_t>(config_.num_layers())) {
  for (int owner : plan_.kv_owners()) owners_[owner];
}

void TrainingModel::CheckBatch(const TrainingBatch& batch) const {
  if (batch.sequences < 1 || batch.length < 1)
    Fail("training batch: need at least one sequence of at least one token (got ", batch.sequences,
         " x ", batch.length, ")");
  if (batch.length > config_.max_position_embeddings)
    Fail("training batch: sequences of ", batch.length,
         " tokens exceed max_position_embeddings = ", config_.max_position_embeddings);
  const auto rows = static_cast<size_t>(batch.rows());
  if (batch.inputs.size() != rows || batch.targets.size() != rows)
    Fail("training batch: ", batch.inputs.size(), " inputs and ", batch.targets.size(),
         " targets for ", batch.sequences, " x ", batch.length, " tokens");
  for (size_t r = 0; r < rows; ++r) {
    if (batch.inputs[r] < 0 || batch.inputs[r] >= config_.vocab_size)
      Fail("training batch: input token ", batch.inputs[r], " at row ", r,
           " is outside the vocabulary [0, ", config_.vocab_size, ")");
    if (batch.targets[r] >= config_.vocab_size)
      Fail("training batch: target token ", batch.targets[r], " at row ", r,
           " is outside the vocabulary [0, ", config_.vocab_size, ")");
  }
}

void TrainingModel::PrepareWeights(const ModelWeights& params) {
  if (precision_ != MatmulPrecision::kBf16) return;
  if (rounded_.layers.size() != params.layers.size()) rounded_ = params;
  std::vector<const Tensor*> sources;
  ForEachTensor(params, [&](const std::string&, const Tensor& t) { sources.push_back(&t); });
  size_t next = 0;
  ForEachTensor(rounded_, [&](const std::string&, Tensor& t) {
    const Tensor& source = *sources[next++];
    t.data.resize(source.data.size());
    ops::RoundToBf16(source.data.data(), source.size(), t.data.data());
  });
}

const ModelWeights& TrainingModel::MatmulWeights(const ModelWeights& params) const {
  return precision_ == MatmulPrecision::kBf16 ? rounded_ : params;
}

void TrainingModel::MatMul(const float* x, const float* w, int64_t rows, int64_t out_features,
                           int64_t in_features, float* y) {
  if (precision_ == MatmulPrecision::kBf16) {
    GrowTo(round_x_, rows * in_features);
    ops::RoundToBf16(x, rows * in_features, round_x_.data());
    x = round_x_.data();
  }
  ops::MatMulTransposed(x, w, rows, out_features, in_features, y);
}

void TrainingModel::MatMulBackward(const float* x, const float* w, const float* dy, int64_t rows,
                                   int64_t out_features, int64_t in_features, float* dx,
                                   float* dw) {
  if (precision_ == MatmulPrecision::kBf16) {
    GrowTo(round_x_, rows * in_features);
    GrowTo(round_dy_, rows * out_features);
    ops::RoundToBf16(x, rows * in_features, round_x_.data());
    ops::RoundToBf16(dy, rows * out_features, round_dy_.data());
    x = round_x_.data();
    dy = round_dy_.data();
  }
  ops::MatMulTransposedBackward(x, w, dy, rows, out_features, in_features, dx, dw);
}

void TrainingModel::Forward(const ModelWeights& params, const TrainingBatch& batch) {
  CheckBatch(batch);
  PrepareWeights(params);
  const ModelWeights& w = MatmulWeights(params);
  const int64_t r_len = batch.rows(), t_len = batch.length, h = config_.hidden_size,
                f = config_.intermediate_size, nh = config_.num_attention_heads,
                kvh = config_.num_key_value_heads, d = config_.head_dim;
  const auto eps = static_cast<float>(config_.rms_norm_eps);

  if (r_len > rows_) {
    rows_ = r_len;
    for (LayerState& layer : layers_) {
      for (auto* buffer : {&layer.x_in, &layer.h1, &layer.x_mid, &layer.h2})
        buffer->resize(static_cast<size_t>(r_len * h));
      for (auto* buffer : {&layer.q, &layer.attn})
        buffer->resize(static_cast<size_t>(r_len * nh * d));
      layer.lse.resize(static_cast<size_t>(r_len * nh));
      for (auto* buffer : {&layer.gate, &layer.up, &layer.act})
        buffer->resize(static_cast<size_t>(r_len * f));
    }
    for (auto& [owner, state] : owners_)
      for (auto* buffer : {&state.k, &state.v, &state.dk, &state.dv})
        buffer->resize(static_cast<size_t>(r_len * kvh * d));
    for (auto* buffer : {&x_final_, &final_hidden_, &dx_, &dh_, &dtmp_})
      buffer->resize(static_cast<size_t>(r_len * h));
    for (auto* buffer : {&dattn_, &dq_}) buffer->resize(static_cast<size_t>(r_len * nh * d));
    for (auto* buffer : {&dact_, &dgate_, &dup_}) buffer->resize(static_cast<size_t>(r_len * f));
    positions_.resize(static_cast<size_t>(r_len));
  }
  for (int64_t r = 0; r < r_len; ++r)
    positions_[static_cast<size_t>(r)] = static_cast<int32_t>(r % t_len);

  // x_0 = embedding rows.
  float* x = layers_.empty() ? x_final_.data() : layers_[0].x_in.data();
  for (int64_t r = 0; r < r_len; ++r)
    std::copy_n(params.embed_tokens.data.data() + batch.inputs[static_cast<size_t>(r)] * h, h,
                x + r * h);

  for (int i = 0; i < config_.num_layers(); ++i) {
    LayerState& s = layers_[static_cast<size_t>(i)];
    const LayerWeights& lw = w.layers[static_cast<size_t>(i)];
    const LayerWeights& lp = params.layers[static_cast<size_t>(i)];  // norms stay f32
    ops::RmsNorm(s.x_in.data(), lp.input_norm.data.data(), r_len, h, eps, s.h1.data());
    MatMul(s.h1.data(), lw.q_proj.data.data(), r_len, nh * d, h, s.q.data());
    ops::ApplyRope(s.q.data(), positions_.data(), r_len, nh, d, rope_);
    if (plan_.owns_kv(i)) {
      OwnerState& o = owners_.at(i);
      MatMul(s.h1.data(), lw.kv->k_proj.data.data(), r_len, kvh * d, h, o.k.data());
      MatMul(s.h1.data(), lw.kv->v_proj.data.data(), r_len, kvh * d, h, o.v.data());
      ops::ApplyRope(o.k.data(), positions_.data(), r_len, kvh, d, rope_);
    }
    const OwnerState& o = owners_.at(plan_.kv_owner(i));
    const int64_t window = WindowOf(plan_.layer(i));
    for (int64_t b = 0; b < batch.sequences; ++b) {
      const int64_t row = b * t_len;
      ops::CausalAttentionForward(s.q.data() + row * nh * d, o.k.data() + row * kvh * d,
                                  o.v.data() + row * kvh * d, t_len, nh, kvh, d, window,
                                  s.attn.data() + row * nh * d, s.lse.data() + row * nh);
    }
    MatMul(s.attn.data(), lw.o_proj.data.data(), r_len, h, nh * d, s.x_mid.data());
    ops::AddInPlace(s.x_mid.data(), s.x_in.data(), r_len * h);

    ops::RmsNorm(s.x_mid.data(), lp.post_attention_norm.data.data(), r_len, h, eps, s.h2.data());
    MatMul(s.h2.data(), lw.gate_proj.data.data(), r_len, f, h, s.gate.data());
    MatMul(s.h2.data(), lw.up_proj.data.data(), r_len, f, h, s.up.data());
    ops::SwiGlu(s.gate.data(), s.up.data(), r_len * f, s.act.data());
    float* next = i + 1 < config_.num_layers() ? layers_[static_cast<size_t>(i + 1)].x_in.data()
                                               : x_final_.data();
    MatMul(s.act.data(), lw.down_proj.data.data(), r_len, h, f, next);
    ops::AddInPlace(next, s.x_mid.data(), r_len * h);
  }
  ops::RmsNorm(x_final_.data(), params.final_norm.data.data(), r_len, h, eps, final_hidden_.data());
}

TrainingModel::LossResult TrainingModel::Loss(const ModelWeights& params,
                                              const TrainingBatch& batch) {
  Forward(params, batch);
  const ModelWeights& w = MatmulWeights(params);
  const int64_t r_len = batch.rows(), h = config_.hidden_size, v = config_.vocab_size;
  GrowTo(logits_, kLogitRowsPerChunk * v);
  LossResult result;
  double loss_sum = 0.0;
  for (int64_t r0 = 0; r0 < r_len; r0 += kLogitRowsPerChunk) {
    const int64_t n = std::min(kLogitRowsPerChunk, r_len - r0);
    const int32_t* targets = batch.targets.data() + r0;
    const int64_t scored = std::count_if(targets, targets + n, [](int32_t t) { return t >= 0; });
    if (scored == 0) continue;
    MatMul(final_hidden_.data() + r0 * h, w.output_embedding().data.data(), n, v, h,
           logits_.data());
    loss_sum += ops::CrossEntropyForwardBackward(logits_.data(), targets, n, v, nullptr) *
                static_cast<double>(scored);
    result.scored_rows += scored;
  }
  result.mean_loss =
      result.scored_rows > 0 ? loss_sum / static_cast<double>(result.scored_rows) : 0.0;
  return result;
}

double TrainingModel::ForwardBackward(const ModelWeights& params, const TrainingBatch& batch,
                                      double gradient_scale, ModelWeights& grads) {
  Forward(params, batch);
  const ModelWeights& w = MatmulWeights(params);
  const int64_t r_len = batch.rows(), t_len = batch.length, h = config_.hidden_size,
                f = config_.intermediate_size, v = config_.vocab_size,
                nh = config_.num_attention_heads, kvh = config_.num_key_value_heads,
                d = config_.head_dim;
  const double eps = config_.rms_norm_eps;
  Tensor& d_output_embedding = grads.lm_head ? *grads.lm_head : grads.embed_tokens;

  // Loss and dL/d final_hidden, chunk by chunk. Each chunk's cross-entropy is a mean over its own
  // scored rows, so its gradient is rescaled to the batch mean: x scored_in_chunk / scored.
  const int64_t scored_total =
      std::count_if(batch.targets.begin(), batch.targets.end(), [](int32_t t) { return t >= 0; });
  GrowTo(logits_, kLogitRowsPerChunk * v);
  Zero(dh_);
  double loss_sum = 0.0;
  for (int64_t r0 = 0; r0 < r_len && scored_total > 0; r0 += kLogitRowsPerChunk) {
    const int64_t n = std::min(kLogitRowsPerChunk, r_len - r0);
    const int32_t* targets = batch.targets.data() + r0;
    const int64_t scored = std::count_if(targets, targets + n, [](int32_t t) { return t >= 0; });
    if (scored == 0) continue;
    const float* hidden = final_hidden_.data() + r0 * h;
    MatMul(hidden, w.output_embedding().data.data(), n, v, h, logits_.data());
    loss_sum += ops::CrossEntropyForwardBackward(logits_.data(), targets, n, v, logits_.data()) *
                static_cast<double>(scored);
    const auto scale = static_cast<float>(gradient_scale * static_cast<double>(scored) /
                                          static_cast<double>(scored_total));
    for (int64_t j = 0; j < n * v; ++j) logits_[static_cast<size_t>(j)] *= scale;
    MatMulBackward(hidden, w.output_embedding().data.data(), logits_.data(), n, v, h,
                   dh_.data() + r0 * h, d_output_embedding.data.data());
  }
  ops::RmsNormBackward(x_final_.data(), params.final_norm.data.data(), dh_.data(), r_len, h, eps,
                       dx_.data(), grads.final_norm.data.data());

  for (auto& [owner, state] : owners_) {
    Zero(state.dk);
    Zero(state.dv);
  }
  for (int i = config_.num_layers() - 1; i >= 0; --i) {
    const LayerState& s = layers_[static_cast<size_t>(i)];
    const LayerWeights& lw = w.layers[static_cast<size_t>(i)];
    const LayerWeights& lp = params.layers[static_cast<size_t>(i)];
    LayerWeights& g = grads.layers[static_cast<size_t>(i)];

    // MLP: x_{i+1} = x_mid + act Wd^T; dx_ holds dL/dx_{i+1}.
    Zero(dact_);
    MatMulBackward(s.act.data(), lw.down_proj.data.data(), dx_.data(), r_len, h, f, dact_.data(),
                   g.down_proj.data.data());
    ops::SwiGluBackward(s.gate.data(), s.up.data(), dact_.data(), r_len * f, dgate_.data(),
                        dup_.data());
    Zero(dh_);
    MatMulBackward(s.h2.data(), lw.gate_proj.data.data(), dgate_.data(), r_len, f, h, dh_.data(),
                   g.gate_proj.data.data());
    MatMulBackward(s.h2.data(), lw.up_proj.data.data(), dup_.data(), r_len, f, h, dh_.data(),
                   g.up_proj.data.data());
    ops::RmsNormBackward(s.x_mid.data(), lp.post_attention_norm.data.data(), dh_.data(), r_len, h,
                         eps, dtmp_.data(), g.post_attention_norm.data.data());
    ops::AddInPlace(dx_.data(), dtmp_.data(), r_len * h);  // dx_ = dL/dx_mid

    // Attention: x_mid = x_in + attn Wo^T. The K/V gradient goes to the owner's buffers.
    Zero(dattn_);
    MatMulBackward(s.attn.data(), lw.o_proj.data.data(), dx_.data(), r_len, h, nh * d,
                   dattn_.data(), g.o_proj.data.data());
    OwnerState& o = owners_.at(plan_.kv_owner(i));
    const int64_t window = WindowOf(plan_.layer(i));
    for (int64_t b = 0; b < batch.sequences; ++b) {
      const int64_t row = b * t_len;
      ops::CausalAttentionBackward(s.q.data() + row * nh * d, o.k.data() + row * kvh * d,
                                   o.v.data() + row * kvh * d, s.attn.data() + row * nh * d,
                                   s.lse.data() + row * nh, dattn_.data() + row * nh * d, t_len, nh,
                                   kvh, d, window, dq_.data() + row * nh * d,
                                   o.dk.data() + row * kvh * d, o.dv.data() + row * kvh * d);
    }
    ops::ApplyRopeBackward(dq_.data(), positions_.data(), r_len, nh, d, rope_);
    Zero(dh_);
    MatMulBackward(s.h1.data(), lw.q_proj.data.data(), dq_.data(), r_len, nh * d, h, dh_.data(),
                   g.q_proj.data.data());
    if (plan_.owns_kv(i)) {  // every reader of this cache has added its share by now
      ops::ApplyRopeBackward(o.dk.data(), positions_.data(), r_len, kvh, d, rope_);
      MatMulBackward(s.h1.data(), lw.kv->k_proj.data.data(), o.dk.data(), r_len, kvh * d, h,
                     dh_.data(), g.kv->k_proj.data.data());
      MatMulBackward(s.h1.data(), lw.kv->v_proj.data.data(), o.dv.data(), r_len, kvh * d, h,
                     dh_.data(), g.kv->v_proj.data.data());
    }
    ops::RmsNormBackward(s.x_in.data(), lp.input_norm.data.data(), dh_.data(), r_len, h, eps,
                         dtmp_.data(), g.input_norm.data.data());
    ops::AddInPlace(dx_.data(), dtmp_.data(), r_len * h);  // dx_ = dL/dx_in
  }
  ops::EmbeddingBackward(batch.inputs.data(), r_len, dx_.data(), h, v,
                         grads.embed_tokens.data.data());
  return scored_total > 0 ? loss_sum / static_cast<double>(scored_total) : 0.0;
}

double TrainingModel::TrainingFlops(const ModelConfig& config, int64_t sequences, int64_t length) {
  const KvPlan plan(config);
  const double h = config.hidden_size, f = config.intermediate_size, v = config.vocab_size,
               nh = config.num_attention_heads, kvh = config.num_key_value_heads,
               d = config.head_dim;
  double matmul_weights = v * h;  // LM head
  double attention = 0.0;         // query-key pairs x heads, summed over layers
  for (int i = 0; i < config.num_layers(); ++i) {
    matmul_weights += 2 * nh * d * h + 3 * h * f;
    if (plan.owns_kv(i)) matmul_weights += 2 * kvh * d * h;
    const auto window = static_cast<double>(WindowOf(plan.layer(i)));
    double pairs = 0.0;  // keys seen by the T queries of one sequence
    for (int64_t p = 0; p < length; ++p)
      pairs += window > 0 ? std::min<double>(static_cast<double>(p + 1), window)
                          : static_cast<double>(p + 1);
    attention += pairs * nh;
  }
  const double tokens = static_cast<double>(sequences * length);
  return 6.0 * matmul_weights * tokens + 12.0 * d * attention * static_cast<double>(sequences);
}

}  // namespace mixattn
