#include "model/reference_forward.h"

#include <algorithm>
#include <map>

#include "core/error.h"
#include "model/kv_plan.h"
#include "ops/scalar_ops.h"

namespace mixattn {

Tensor ReferenceForward(const ModelConfig& config, const ModelWeights& weights,
                        std::span<const int> tokens) {
  const int64_t t_len = static_cast<int64_t>(tokens.size());
  const int64_t h = config.hidden_size, f = config.intermediate_size, v = config.vocab_size;
  const int64_t nh = config.num_attention_heads, kvh = config.num_key_value_heads,
                d = config.head_dim;
  if (t_len == 0) Fail("reference forward: the token sequence is empty");
  if (t_len > config.max_position_embeddings) {
    Fail("reference forward: ", t_len,
         " tokens exceed max_position_embeddings = ", config.max_position_embeddings);
  }
  const KvPlan plan(config);

  Tensor x({t_len, h});  // residual stream
  for (int64_t t = 0; t < t_len; ++t) {
    const int token = tokens[static_cast<size_t>(t)];
    if (token < 0 || token >= v)
      Fail("reference forward: token ", token, " at position ", t,
           " is outside the vocabulary [0, ", v, ")");
    std::copy_n(weights.embed_tokens.data.begin() + token * h, h, x.data.begin() + t * h);
  }

  struct KvCache {
    Tensor k, v;  // [T, KVH, D] each; k already rotated
  };
  std::map<int, KvCache> caches;  // owner layer -> its K/V
  Tensor normed({t_len, h}), q({t_len, nh, d}), attention({t_len, nh, d}), projected({t_len, h});
  Tensor gate({t_len, f}), up({t_len, f}), activated({t_len, f});

  for (int i = 0; i < config.num_layers(); ++i) {
    const LayerWeights& layer = weights.layers[static_cast<size_t>(i)];
    const LayerSpec& spec = plan.layer(i);
    ops::RmsNormScalar(x.data.data(), layer.input_norm.data.data(), t_len, h, config.rms_norm_eps,
                       normed.data.data());
    ops::MatMulTransposedScalar(normed.data.data(), layer.q_proj.data.data(), t_len, nh * d, h,
                                q.data.data());
    ops::RopeScalar(q.data.data(), t_len, nh, d, 0, config.rope_theta);
    if (plan.owns_kv(i)) {
      MIXATTN_CHECK(layer.kv.has_value());
      KvCache& cache = caches[i];
      cache.k = Tensor({t_len, kvh, d});
      cache.v = Tensor({t_len, kvh, d});
      ops::MatMulTransposedScalar(normed.data.data(), layer.kv->k_proj.data.data(), t_len, kvh * d,
                                  h, cache.k.data.data());
      ops::MatMulTransposedScalar(normed.data.data(), layer.kv->v_proj.data.data(), t_len, kvh * d,
                                  h, cache.v.data.data());
      ops::RopeScalar(cache.k.data.data(), t_len, kvh, d, 0, config.rope_theta);
    }
    const KvCache& cache = caches.at(plan.kv_owner(i));
    const int64_t window = spec.kind == AttentionKind::kSliding ? spec.window : 0;
    ops::CausalAttentionScalar(q.data.data(), cache.k.data.data(), cache.v.data.data(), t_len, nh,
                               kvh, d, window, attention.data.data());
    ops::MatMulTransposedScalar(attention.data.data(), layer.o_proj.data.data(), t_len, h, nh * d,
                                projected.data.data());
    for (int64_t j = 0; j < x.size(); ++j)
      x.data[static_cast<size_t>(j)] += projected.data[static_cast<size_t>(j)];

    ops::RmsNormScalar(x.data.data(), layer.post_attention_norm.data.data(), t_len, h,
                       config.rms_norm_eps, normed.data.data());
    ops::MatMulTransposedScalar(normed.data.data(), layer.gate_proj.data.data(), t_len, f, h,
                                gate.data.data());
    ops::MatMulTransposedScalar(normed.data.data(), layer.up_proj.data.data(), t_len, f, h,
                                up.data.data());
    ops::SwiGluScalar(gate.data.data(), up.data.data(), t_len * f, activated.data.data());
    ops::MatMulTransposedScalar(activated.data.data(), layer.down_proj.data.data(), t_len, h, f,
                                projected.data.data());
    for (int64_t j = 0; j < x.size(); ++j)
      x.data[static_cast<size_t>(j)] += projected.data[static_cast<size_t>(j)];
  }

  ops::RmsNormScalar(x.data.data(), weights.final_norm.data.data(), t_len, h, config.rms_norm_eps,
                     normed.data.data());
  Tensor logits({t_len, v});
  ops::MatMulTransposedScalar(normed.data.data(), weights.output_embedding().data.data(), t_len, v,
                              h, logits.data.data());
  return logits;
}

}  // namespace mixattn
