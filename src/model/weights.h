// Model weights: which tensors exist for a config (names as Hugging Face Llama writes them), the
// in-memory f32 form the reference path uses, and loading / saving / random initialisation.
//
// Legend: H = hidden_size, NH = num_attention_heads, KVH = num_key_value_heads, D = head_dim,
// F = intermediate_size, V = vocab_size. Linear weights are [out, in] (y = x W^T), as in PyTorch.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "model/config.h"

namespace mixattn {

class SafetensorsFile;

// Only a layer that computes its own K/V has these (LLM Foundry's reuse_kv_layer_idx layers and
// mixattn's readers have a Q and an output projection only).
struct KvProjection {
  Tensor k_proj;  // [KVH*D, H]
  Tensor v_proj;  // [KVH*D, H]
};

struct LayerWeights {
  Tensor input_norm;               // [H]
  Tensor q_proj;                   // [NH*D, H]
  std::optional<KvProjection> kv;  // present iff the layer owns a KV cache
  Tensor o_proj;                   // [H, NH*D]
  Tensor post_attention_norm;      // [H]
  Tensor gate_proj;                // [F, H]
  Tensor up_proj;                  // [F, H]
  Tensor down_proj;                // [H, F]
};

struct ModelWeights {
  Tensor embed_tokens;               // [V, H]
  std::vector<LayerWeights> layers;  // [L]
  Tensor final_norm;                 // [H]
  std::optional<Tensor> lm_head;     // [V, H]; absent when tie_word_embeddings

  const Tensor& output_embedding() const { return lm_head ? *lm_head : embed_tokens; }
};

// One tensor a config requires: its file name and shape.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// Every tensor the config requires, in file order (embedding, layers 0..L-1, final norm, head).
std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config);

// Every tensor of `config`, zero-filled, with the shapes ExpectedTensors gives (the one place that
// knows names and shapes; LoadWeights and checkpoints allocate through it).
ModelWeights ZeroWeights(const ModelConfig& config);

// Total parameter count of the config.
int64_t ParameterCount(const ModelConfig& config);

// Visits every tensor of `weights` with its file name, in ExpectedTensors order.
template <typename Weights, typename Visit>
void ForEachTensor(Weights& weights, Visit&& visit);

// Copies (converting bf16 to f32) from a safetensors file. Every expected tensor must be present
// with the exact shape, and no other tensor may be: errors name the file, the tensor, the shape
// found and the shape the config requires.
ModelWeights LoadWeights(const SafetensorsFile& file, const ModelConfig& config);

// Writes weights as safetensors in `dtype` (atomically).
void SaveWeights(const std::string& path, const ModelWeights& weights, DType dtype);

// Random initialisation, deterministic in `seed`: linear weights and embeddings N(0, 1/H_in)
// (H_in = the second dimension), the residual branches' output projections (o_proj, down_proj)
// additionally scaled by `residual_scale`, norm weights 1 + N(0, norm_jitter) (jitter 0 for
// training; tests use a little so norm weights matter).
//
// residual_scale defaults to 1, not GPT-2's 1/sqrt(2L): with 1/sqrt(2L) an 8-layer model stayed on
// the loss plateau before in-context copying (induction heads) for 800 steps of copy-dense data
// (with 1/2, for the 440 steps it ran); at scale 1 it left it after about 300 (docs/results.md).
ModelWeights RandomWeights(const ModelConfig& config, uint64_t seed, double norm_jitter = 0.0,
                           double residual_scale = 1.0);

// ---- implementation of the template ----

template <typename Weights, typename Visit>
void ForEachTensor(Weights& weights, Visit&& visit) {
  visit("model.embed_tokens.weight", weights.embed_tokens);
  for (size_t i = 0; i < weights.layers.size(); ++i) {
    auto& layer = weights.layers[i];
    const std::string prefix = "model.layers." + std::to_string(i) + ".";
    visit(prefix + "input_layernorm.weight", layer.input_norm);
    visit(prefix + "self_attn.q_proj.weight", layer.q_proj);
    if (layer.kv) {
      visit(prefix + "self_attn.k_proj.weight", layer.kv->k_proj);
      visit(prefix + "self_attn.v_proj.weight", layer.kv->v_proj);
    }
    visit(prefix + "self_attn.o_proj.weight", layer.o_proj);
    visit(prefix + "post_attention_layernorm.weight", layer.post_attention_norm);
    visit(prefix + "mlp.gate_proj.weight", layer.gate_proj);
    visit(prefix + "mlp.up_proj.weight", layer.up_proj);
    visit(prefix + "mlp.down_proj.weight", layer.down_proj);
  }
  visit("model.norm.weight", weights.final_norm);
  if (weights.lm_head) visit("lm_head.weight", *weights.lm_head);
}

}  // namespace mixattn
