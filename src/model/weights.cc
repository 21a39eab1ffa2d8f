#include "model/weights.h"

#include <cmath>
#include <cstring>
#include <set>

#include "core/error.h"
#include "core/random.h"
#include "model/kv_plan.h"
#include "model/safetensors.h"

namespace mixattn {
namespace {

bool IsNormWeight(const std::string& name) { return name.ends_with("norm.weight"); }

}  // namespace

ModelWeights ZeroWeights(const ModelConfig& config) {
  const KvPlan plan(config);
  ModelWeights weights;
  weights.layers.resize(static_cast<size_t>(config.num_layers()));
  for (int i = 0; i < config.num_layers(); ++i) {
    if (plan.owns_kv(i)) weights.layers[static_cast<size_t>(i)].kv.emplace();
  }
  if (!config.tie_word_embeddings) weights.lm_head.emplace();
  const std::vector<TensorSpec> specs = ExpectedTensors(config);
  size_t next = 0;
  ForEachTensor(weights, [&](const std::string& name, Tensor& tensor) {
    MIXATTN_CHECK(next < specs.size() && specs[next].name == name);
    tensor = Tensor(specs[next++].shape);
  });
  MIXATTN_CHECK(next == specs.size());
  return weights;
}

std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config) {
  const KvPlan plan(config);
  const int64_t h = config.hidden_size, f = config.intermediate_size, v = config.vocab_size;
  const int64_t q_width = int64_t{config.num_attention_heads} * config.head_dim;
  const int64_t kv_width = int64_t{config.num_key_value_heads} * config.head_dim;
  std::vector<TensorSpec> specs;
  specs.push_back({"model.embed_tokens.weight", {v, h}});
  for (int i = 0; i < config.num_layers(); ++i) {
    const std::string prefix = "model.layers." + std::to_string(i) + ".";
    specs.push_back({prefix + "input_layernorm.weight", {h}});
    specs.push_back({prefix + "self_attn.q_proj.weight", {q_width, h}});
    if (plan.owns_kv(i)) {
      specs.push_back({prefix + "self_attn.k_proj.weight", {kv_width, h}});
      specs.push_back({prefix + "self_attn.v_proj.weight", {kv_width, h}});
    }
    specs.push_back({prefix + "self_attn.o_proj.weight", {h, q_width}});
    specs.push_back({prefix + "post_attention_layernorm.weight", {h}});
    specs.push_back({prefix + "mlp.gate_proj.weight", {f, h}});
    specs.push_back({prefix + "mlp.up_proj.weight", {f, h}});
    specs.push_back({prefix + "mlp.down_proj.weight", {h, f}});
  }
  specs.push_back({"model.norm.weight", {h}});
  if (!config.tie_word_embeddings) specs.push_back({"lm_head.weight", {v, h}});
  return specs;
}

int64_t ParameterCount(const ModelConfig& config) {
  int64_t total = 0;
  for (const TensorSpec& spec : ExpectedTensors(config)) total += Tensor::NumElements(spec.shape);
  return total;
}

ModelWeights LoadWeights(const SafetensorsFile& file, const ModelConfig& config) {
  std::set<std::string> expected_names;
  for (const TensorSpec& spec : ExpectedTensors(config)) expected_names.insert(spec.name);
  for (const SafetensorsTensor& tensor : file.tensors()) {
    if (!expected_names.count(tensor.name)) {
      const bool is_kv = tensor.name.find("k_proj") != std::string::npos ||
                         tensor.name.find("v_proj") != std::string::npos;
      Fail(file.path(), ": unexpected tensor '", tensor.name, "'",
           is_kv ? " (the config says this layer reads another layer's KV, so it has no K/V "
                   "projection)"
           : tensor.name == "lm_head.weight"
               ? " (the config ties the output embedding to the input embedding)"
               : " (the config has no such tensor)");
    }
  }
  ModelWeights weights = ZeroWeights(config);
  ForEachTensor(weights, [&](const std::string& name, Tensor& tensor) {
    const SafetensorsTensor* found = file.Find(name);
    if (!found)
      Fail(file.path(), ": tensor '", name, "' is missing; the config requires it with shape ",
           ShapeString(tensor.shape));
    if (found->shape != tensor.shape) {
      Fail(file.path(), ": tensor '", name, "' has shape ", ShapeString(found->shape),
           "; the config requires ", ShapeString(tensor.shape));
    }
    const size_t n = tensor.data.size();
    if (found->dtype == DType::kF32) {
      std::memcpy(tensor.data.data(), found->data, n * sizeof(float));
    } else {
      for (size_t j = 0; j < n; ++j) {
        uint16_t bits;
        std::memcpy(&bits, found->data + 2 * j, 2);
        tensor.data[j] = Bf16ToF32(bits);
      }
    }
  });
  return weights;
}

void SaveWeights(const std::string& path, const ModelWeights& weights, DType dtype) {
  std::vector<std::vector<uint16_t>> bf16_copies;
  std::vector<SafetensorsWriteItem> items;
  ForEachTensor(weights, [&](const std::string& name, const Tensor& tensor) {
    const void* data = tensor.data.data();
    if (dtype == DType::kBF16) {
      std::vector<uint16_t>& copy = bf16_copies.emplace_back(tensor.data.size());
      for (size_t j = 0; j < copy.size(); ++j) copy[j] = F32ToBf16(tensor.data[j]);
      data = copy.data();
    }
    items.push_back({name, dtype, tensor.shape, data});
  });
  WriteSafetensors(path, items, {{"format", "pt"}, {"producer", "mixattn"}});
}

ModelWeights RandomWeights(const ModelConfig& config, uint64_t seed, double norm_jitter,
                           double residual_scale) {
  ModelWeights weights = ZeroWeights(config);
  Rng rng(seed);
  ForEachTensor(weights, [&](const std::string& name, Tensor& tensor) {
    if (IsNormWeight(name)) {
      for (float& w : tensor.data) w = static_cast<float>(1.0 + norm_jitter * rng.Normal());
      return;
    }
    double scale = 1.0 / std::sqrt(static_cast<double>(tensor.shape[1]));
    if (name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight"))
      scale *= residual_scale;
    for (float& w : tensor.data) w = static_cast<float>(scale * rng.Normal());
  });
  return weights;
}

}  // namespace mixattn
