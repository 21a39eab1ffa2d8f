#include "engine/model_runner.h"

#include <algorithm>

#include "core/error.h"
#include "ops/paged_attention.h"

namespace mixattn {
namespace {

ops::Linear MakeLinear(const Tensor& weight, DType dtype, ops::LargeBatches large_batches) {
  return ops::Linear(weight.data.data(), weight.shape[0], weight.shape[1], dtype,
                     ops::Bf16Matmul::kAuto, large_batches);
}

}  // namespace

ModelRunner::ModelRunner(const ModelConfig& config, const ModelWeights& weights,
                         DType weights_dtype, ops::LargeBatches large_batches)
    : config_(config),
      plan_(config),
      embed_tokens_(weights.embed_tokens.data),
      final_norm_(weights.final_norm.data),
      output_(MakeLinear(weights.output_embedding(), weights_dtype, large_batches)),
      rope_(config.max_position_embeddings, config.head_dim, config.rope_theta) {
  layers_.reserve(weights.layers.size());
  for (const LayerWeights& w : weights.layers) {
    Layer layer{w.input_norm.data,
                MakeLinear(w.q_proj, weights_dtype, large_batches),
                std::nullopt,
                std::nullopt,
                MakeLinear(w.o_proj, weights_dtype, large_batches),
                w.post_attention_norm.data,
                MakeLinear(w.gate_proj, weights_dtype, large_batches),
                MakeLinear(w.up_proj, weights_dtype, large_batches),
                MakeLinear(w.down_proj, weights_dtype, large_batches)};
    if (w.kv) {
      layer.k_proj.emplace(MakeLinear(w.kv->k_proj, weights_dtype, large_batches));
      layer.v_proj.emplace(MakeLinear(w.kv->v_proj, weights_dtype, large_batches));
    }
    layers_.push_back(std::move(layer));
  }
}

int64_t ModelRunner::weight_bytes_per_step() const {
  int64_t bytes = output_.weight_bytes();
  for (const Layer& layer : layers_) {
    bytes += layer.q_proj.weight_bytes() + layer.o_proj.weight_bytes() +
             layer.gate_proj.weight_bytes() + layer.up_proj.weight_bytes() +
             layer.down_proj.weight_bytes();
    if (layer.k_proj) bytes += layer.k_proj->weight_bytes() + layer.v_proj->weight_bytes();
  }
  return bytes;
}

void ModelRunner::EnsureScratch(int64_t rows) {
  const int64_t h = config_.hidden_size, f = config_.intermediate_size;
  const int64_t q_width = int64_t{config_.num_attention_heads} * config_.head_dim;
  const int64_t kv_width = int64_t{config_.num_key_value_heads} * config_.head_dim;
  const auto grow = [rows](std::vector<float>& buffer, int64_t width) {
    if (static_cast<int64_t>(buffer.size()) < rows * width)
      buffer.resize(static_cast<size_t>(rows * width));
  };
  if (static_cast<int64_t>(positions_.size()) < rows) positions_.resize(static_cast<size_t>(rows));
  grow(x_, h);
  grow(normed_, h);
  grow(projected_, h);
  grow(q_, q_width);
  grow(attention_, q_width);
  grow(k_, kv_width);
  grow(v_, kv_width);
  grow(gate_, f);
  grow(up_, f);
}

const std::vector<float>& ModelRunner::Forward(std::span<const BatchItem> items, KvCache& cache) {
  const int64_t h = config_.hidden_size, f = config_.intermediate_size, v = config_.vocab_size;
  const int64_t nh = config_.num_attention_heads, kvh = config_.num_key_value_heads,
                d = config_.head_dim;
  const float eps = static_cast<float>(config_.rms_norm_eps);

  int64_t rows = 0, logit_rows = 0;
  for (const BatchItem& item : items) {
    const int64_t count = static_cast<int64_t>(item.tokens.size());
    MIXATTN_CHECK(count > 0);
    MIXATTN_CHECK(cache.length(item.sequence) == item.start + count);
    if (item.start + count > config_.max_position_embeddings) {
      Fail("sequence of ", item.start + count,
           " tokens exceeds max_position_embeddings = ", config_.max_position_embeddings);
    }
    rows += count;
    logit_rows += item.want_all_logits ? count : item.want_logits ? 1 : 0;
  }
  EnsureScratch(rows);

  // Embedding gather and positions.
  int64_t row = 0;
  for (const BatchItem& item : items) {
    for (size_t j = 0; j < item.tokens.size(); ++j, ++row) {
      const int token = item.tokens[j];
      if (token < 0 || token >= v) Fail("token ", token, " is outside the vocabulary [0, ", v, ")");
      std::copy_n(embed_tokens_.begin() + token * h, h, x_.begin() + row * h);
      positions_[static_cast<size_t>(row)] =
          static_cast<int32_t>(item.start + static_cast<int64_t>(j));
    }
  }

  jobs_.resize(items.size());
  for (int i = 0; i < config_.num_layers(); ++i) {
    const Layer& layer = layers_[static_cast<size_t>(i)];
    const LayerSpec& spec = plan_.layer(i);
    ops::RmsNorm(x_.data(), layer.input_norm.data(), rows, h, eps, normed_.data());
    layer.q_proj.Forward(normed_.data(), rows, q_.data());
    ops::ApplyRope(q_.data(), positions_.data(), rows, nh, d, rope_);
    if (plan_.owns_kv(i)) {
      // K/V of the new positions go straight into this owner's blocks.
      layer.k_proj->Forward(normed_.data(), rows, k_.data());
      layer.v_proj->Forward(normed_.data(), rows, v_.data());
      ops::ApplyRope(k_.data(), positions_.data(), rows, kvh, d, rope_);
      row = 0;
      for (const BatchItem& item : items) {
        const ops::PagedKvView view = cache.View(item.sequence, i);
        for (size_t j = 0; j < item.tokens.size(); ++j, ++row) {
          const int64_t position = item.start + static_cast<int64_t>(j);
          kv_vector_.resize(static_cast<size_t>(kvh * d * DTypeSize(view.dtype)));
          ops::StoreAs(k_.data() + row * kvh * d, kvh * d, view.dtype, kv_vector_.data());
          view.WriteKey(position, kv_vector_.data());
          ops::StoreAs(v_.data() + row * kvh * d, kvh * d, view.dtype, kv_vector_.data());
          view.WriteValue(position, kv_vector_.data());
        }
      }
    }
    row = 0;
    for (size_t n = 0; n < items.size(); ++n) {
      const BatchItem& item = items[n];
      const int64_t count = static_cast<int64_t>(item.tokens.size());
      jobs_[n] = ops::AttentionJob{q_.data() + row * nh * d,
                                   attention_.data() + row * nh * d,
                                   count,
                                   item.start,
                                   cache.View(item.sequence, plan_.kv_owner(i)),
                                   spec.kind == AttentionKind::kSliding ? int64_t{spec.window} : 0};
      row += count;
    }
    ops::PagedAttention(jobs_, nh);
    layer.o_proj.Forward(attention_.data(), rows, projected_.data());
    ops::AddInPlace(x_.data(), projected_.data(), rows * h);

    ops::RmsNorm(x_.data(), layer.post_attention_norm.data(), rows, h, eps, normed_.data());
    layer.gate_proj.Forward(normed_.data(), rows, gate_.data());
    layer.up_proj.Forward(normed_.data(), rows, up_.data());
    ops::SwiGlu(gate_.data(), up_.data(), rows * f, gate_.data());
    layer.down_proj.Forward(gate_.data(), rows, projected_.data());
    ops::AddInPlace(x_.data(), projected_.data(), rows * h);
  }

  // Final norm and output projection only for the rows whose logits are wanted.
  final_rows_.resize(static_cast<size_t>(logit_rows * h));
  logits_.resize(static_cast<size_t>(logit_rows * v));
  row = 0;
  int64_t out_row = 0;
  for (const BatchItem& item : items) {
    const int64_t count = static_cast<int64_t>(item.tokens.size());
    if (item.want_all_logits) {
      ops::RmsNorm(x_.data() + row * h, final_norm_.data(), count, h, eps,
                   final_rows_.data() + out_row * h);
      out_row += count;
    } else if (item.want_logits) {
      ops::RmsNorm(x_.data() + (row + count - 1) * h, final_norm_.data(), 1, h, eps,
                   final_rows_.data() + out_row * h);
      out_row += 1;
    }
    row += count;
  }
  if (logit_rows > 0) output_.Forward(final_rows_.data(), logit_rows, logits_.data());
  return logits_;
}

}  // namespace mixattn
