#include "model/config.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"

namespace mixattn {
namespace {

using Json = nlohmann::ordered_json;

// Largest value accepted for any size field: generous for real models, small enough that products
// of two sizes (e.g. vocab * hidden) never overflow int64.
constexpr int64_t kMaxDimension = 1 << 24;

constexpr const char* kFullName = "full_attention";
constexpr const char* kSlidingName = "sliding_attention";

// Fields written by Hugging Face tools that carry no information for mixattn; accepted and ignored.
const std::set<std::string>& InformationalFields() {
  static const std::set<std::string> fields = {
      "architectures",     "model_type",   "torch_dtype",       "transformers_version",
      "bos_token_id",      "eos_token_id", "pad_token_id",      "hidden_act",
      "attention_bias",    "mlp_bias",     "initializer_range", "use_cache",
      "attention_dropout", "mixattn"};
  return fields;
}

const char* LayerTypeName(AttentionKind kind) {
  return kind == AttentionKind::kFull ? kFullName : kSlidingName;
}

std::string DescribeLayer(const ModelConfig& config, int i) {
  const LayerSpec& layer = config.layers[static_cast<size_t>(i)];
  std::ostringstream out;
  out << "layer " << i << " (" << LayerTypeName(layer.kind);
  if (layer.kind == AttentionKind::kSliding) out << ", window " << layer.window;
  out << ")";
  return out.str();
}

int ReadInt(const Json& root, const std::string& source, const char* field) {
  const auto it = root.find(field);
  if (it == root.end()) Fail(source, ": missing field '", field, "'");
  if (!it->is_number_integer())
    Fail(source, ": field '", field, "' must be an integer, got ", it->dump());
  const int64_t value = it->get<int64_t>();
  if (value < 1 || value > kMaxDimension) {
    Fail(source, ": field '", field, "' = ", value, " must be in [1, ", kMaxDimension, "]");
  }
  return static_cast<int>(value);
}

double ReadPositiveNumber(const Json& root, const std::string& source, const char* field) {
  const auto it = root.find(field);
  if (it == root.end()) Fail(source, ": missing field '", field, "'");
  if (!it->is_number()) Fail(source, ": field '", field, "' must be a number, got ", it->dump());
  const double value = it->get<double>();
  if (!(value > 0) || !std::isfinite(value))
    Fail(source, ": field '", field, "' must be > 0, got ", it->dump());
  return value;
}

const Json& ReadList(const Json& root, const std::string& source, const char* field, size_t size) {
  const auto it = root.find(field);
  if (it == root.end()) Fail(source, ": missing field '", field, "'");
  if (!it->is_array()) Fail(source, ": field '", field, "' must be a list, got ", it->dump());
  if (it->size() != size) {
    Fail(source, ": field '", field, "' has ", it->size(), " entries; num_hidden_layers is ", size);
  }
  return *it;
}

int ReadWindow(const Json& value, const std::string& source, const std::string& where) {
  if (!value.is_number_integer())
    Fail(source, ": ", where, " must be an integer window, got ", value.dump());
  const int64_t window = value.get<int64_t>();
  if (window < 1 || window > std::numeric_limits<int>::max()) {
    Fail(source, ": ", where, " = ", window, " must be a window of at least 1 token");
  }
  return static_cast<int>(window);
}

}  // namespace

const char* AttentionKindName(AttentionKind kind) {
  return kind == AttentionKind::kFull ? "full" : "sliding";
}

void ValidateConfig(ModelConfig& config) {
  const auto positive = [](int value, const char* field) {
    if (value < 1 || value > kMaxDimension)
      Fail("config: ", field, " = ", value, " must be in [1, ", kMaxDimension, "]");
  };
  positive(config.hidden_size, "hidden_size");
  positive(config.num_attention_heads, "num_attention_heads");
  positive(config.num_key_value_heads, "num_key_value_heads");
  positive(config.head_dim, "head_dim");
  positive(config.intermediate_size, "intermediate_size");
  positive(config.vocab_size, "vocab_size");
  positive(config.max_position_embeddings, "max_position_embeddings");
  if (config.num_layers() < 1 || config.num_layers() > 4096) {
    Fail("config: num_hidden_layers = ", config.num_layers(), " must be in [1, 4096]");
  }
  if (config.num_attention_heads % config.num_key_value_heads != 0) {
    Fail("config: num_attention_heads = ", config.num_attention_heads,
         " is not divisible by num_key_value_heads = ", config.num_key_value_heads,
         " (each KV head serves the same number of query heads)");
  }
  if (config.head_dim % 2 != 0) {
    Fail("config: head_dim = ", config.head_dim,
         " must be even (RoPE rotates pairs of dimensions)");
  }
  if (!(config.rope_theta > 0) || !std::isfinite(config.rope_theta))
    Fail("config: rope_theta must be > 0");
  if (!(config.rms_norm_eps > 0) || !std::isfinite(config.rms_norm_eps))
    Fail("config: rms_norm_eps must be > 0");

  for (int i = 0; i < config.num_layers(); ++i) {
    LayerSpec& layer = config.layers[static_cast<size_t>(i)];
    if (layer.kind == AttentionKind::kSliding && layer.window < 1) {
      Fail("config: ", DescribeLayer(config, i), " needs a sliding window of at least 1 token");
    }
    if (layer.kind == AttentionKind::kFull) layer.window = 0;
    if (layer.kv_source < 0 || layer.kv_source > i) {
      Fail("config: layer ", i, " reads the KV cache of layer ", layer.kv_source,
           "; a layer can only read its own KV (kv_source = ", i, ") or an earlier layer's");
    }
    // Chains collapse: the source was validated and collapsed already (it is earlier), so its
    // kv_source is the layer that really computes the K/V.
    const int owner = config.layers[static_cast<size_t>(layer.kv_source)].kv_source;
    const std::string via = owner == layer.kv_source
                                ? std::string()
                                : " (via layer " + std::to_string(layer.kv_source) + ")";
    layer.kv_source = owner;
    if (owner == i) continue;
    const LayerSpec& source = config.layers[static_cast<size_t>(owner)];
    if (layer.kind == AttentionKind::kFull && source.kind == AttentionKind::kSliding) {
      Fail("config: ", DescribeLayer(config, i), " reads the KV cache of ",
           DescribeLayer(config, owner), via,
           ": a full-attention layer cannot read a sliding cache, whose tokens older than the "
           "window are gone");
    }
    if (layer.kind == AttentionKind::kSliding && source.kind == AttentionKind::kSliding &&
        layer.window > source.window) {
      Fail("config: ", DescribeLayer(config, i), " reads the KV cache of ",
           DescribeLayer(config, owner), via,
           ": a sliding layer may only read a sliding cache whose window is at least its own (",
           layer.window, " > ", source.window, ")");
    }
  }
}

ModelConfig ParseConfigJson(const std::string& text, const std::string& source) {
  Json root;
  try {
    root = Json::parse(text);
  } catch (const Json::exception& e) {  // parse errors and number overflow (1e400) alike
    Fail(source, ": not valid JSON: ", e.what());
  }
  if (!root.is_object()) Fail(source, ": expected a JSON object at the top level");

  static const std::set<std::string> kKnown = {
      "hidden_size",    "num_hidden_layers",       "num_attention_heads", "num_key_value_heads",
      "head_dim",       "intermediate_size",       "vocab_size",          "rope_theta",
      "rms_norm_eps",   "max_position_embeddings", "tie_word_embeddings", "layer_types",
      "sliding_window", "kv_source_layers"};
  for (const auto& [key, value] : root.items()) {
    if (!kKnown.count(key) && !InformationalFields().count(key)) {
      Fail(source, ": unknown field '", key, "' (mixattn reads: hidden_size, num_hidden_layers, ",
           "num_attention_heads, num_key_value_heads, head_dim, intermediate_size, vocab_size, ",
           "rope_theta, rms_norm_eps, max_position_embeddings, tie_word_embeddings, layer_types, ",
           "sliding_window, kv_source_layers)");
    }
  }
  if (auto act = root.find("hidden_act"); act != root.end() && *act != "silu") {
    Fail(source, ": hidden_act = ", act->dump(),
         " is not supported; mixattn models use \"silu\" (SwiGLU)");
  }
  for (const char* bias : {"attention_bias", "mlp_bias"}) {
    if (auto it = root.find(bias); it != root.end() && *it != false) {
      Fail(source, ": ", bias, " = ", it->dump(),
           " is not supported; mixattn layers have no biases");
    }
  }

  ModelConfig config;
  config.hidden_size = ReadInt(root, source, "hidden_size");
  const int num_layers = ReadInt(root, source, "num_hidden_layers");
  config.num_attention_heads = ReadInt(root, source, "num_attention_heads");
  config.num_key_value_heads = ReadInt(root, source, "num_key_value_heads");
  config.head_dim = ReadInt(root, source, "head_dim");
  config.intermediate_size = ReadInt(root, source, "intermediate_size");
  config.vocab_size = ReadInt(root, source, "vocab_size");
  config.max_position_embeddings = ReadInt(root, source, "max_position_embeddings");
  config.rope_theta = ReadPositiveNumber(root, source, "rope_theta");
  config.rms_norm_eps = ReadPositiveNumber(root, source, "rms_norm_eps");
  const auto tie = root.find("tie_word_embeddings");
  if (tie == root.end()) Fail(source, ": missing field 'tie_word_embeddings'");
  if (!tie->is_boolean())
    Fail(source, ": field 'tie_word_embeddings' must be true or false, got ", tie->dump());
  config.tie_word_embeddings = tie->get<bool>();
  if (num_layers > 4096)
    Fail(source, ": num_hidden_layers = ", num_layers, " must be at most 4096");

  const Json& types = ReadList(root, source, "layer_types", static_cast<size_t>(num_layers));
  const Json& sources = ReadList(root, source, "kv_source_layers", static_cast<size_t>(num_layers));
  config.layers.resize(static_cast<size_t>(num_layers));
  bool any_sliding = false;
  for (int i = 0; i < num_layers; ++i) {
    LayerSpec& layer = config.layers[static_cast<size_t>(i)];
    const Json& type = types[static_cast<size_t>(i)];
    if (type == kFullName) {
      layer.kind = AttentionKind::kFull;
    } else if (type == kSlidingName) {
      layer.kind = AttentionKind::kSliding;
      any_sliding = true;
    } else {
      Fail(source, ": layer_types[", i, "] = ", type.dump(), "; expected \"", kFullName, "\" or \"",
           kSlidingName, "\"");
    }
    const Json& kv_source = sources[static_cast<size_t>(i)];
    if (!kv_source.is_number_integer()) {
      Fail(source, ": kv_source_layers[", i, "] must be a layer index, got ", kv_source.dump());
    }
    const int64_t index = kv_source.get<int64_t>();
    if (index < 0 || index > i) {
      Fail(source, ": layer ", i, " has kv_source_layers[", i, "] = ", index,
           "; a layer can only read its own KV (", i, ") or an earlier layer's");
    }
    layer.kv_source = static_cast<int>(index);
  }

  const auto window = root.find("sliding_window");
  if (any_sliding) {
    if (window == root.end() || window->is_null()) {
      Fail(source,
           ": missing field 'sliding_window' (needed because some layers are sliding_attention)");
    }
    if (window->is_array()) {
      if (window->size() != static_cast<size_t>(num_layers)) {
        Fail(source, ": field 'sliding_window' has ", window->size(),
             " entries; num_hidden_layers is ", num_layers);
      }
      for (int i = 0; i < num_layers; ++i) {
        const Json& entry = (*window)[static_cast<size_t>(i)];
        if (config.layers[static_cast<size_t>(i)].kind == AttentionKind::kSliding) {
          config.layers[static_cast<size_t>(i)].window =
              ReadWindow(entry, source, "sliding_window[" + std::to_string(i) + "]");
        } else if (!entry.is_null()) {
          ReadWindow(entry, source,
                     "sliding_window[" + std::to_string(i) + "]");  // type-check only
        }
      }
    } else {
      const int shared = ReadWindow(*window, source, "sliding_window");
      for (LayerSpec& layer : config.layers) {
        if (layer.kind == AttentionKind::kSliding) layer.window = shared;
      }
    }
  } else if (window != root.end() && !window->is_null() && !window->is_number_integer() &&
             !window->is_array()) {
    Fail(source, ": field 'sliding_window' must be an integer, a list or null, got ",
         window->dump());
  }

  try {
    ValidateConfig(config);
  } catch (const Error& e) {
    std::string message = e.what();
    if (message.rfind("config: ", 0) == 0) message = message.substr(8);
    Fail(source, ": ", message);
  }
  return config;
}

ModelConfig LoadConfigFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail(path, ": cannot open config file: ", std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return ParseConfigJson(text.str(), path);
}

std::string ConfigToJson(const ModelConfig& config) {
  Json root;
  root["architectures"] = Json::array({"MixAttentionForCausalLM"});
  root["model_type"] = "mixattn";
  root["hidden_size"] = config.hidden_size;
  root["num_hidden_layers"] = config.num_layers();
  root["num_attention_heads"] = config.num_attention_heads;
  root["num_key_value_heads"] = config.num_key_value_heads;
  root["head_dim"] = config.head_dim;
  root["intermediate_size"] = config.intermediate_size;
  root["vocab_size"] = config.vocab_size;
  root["rope_theta"] = config.rope_theta;
  root["rms_norm_eps"] = config.rms_norm_eps;
  root["max_position_embeddings"] = config.max_position_embeddings;
  root["tie_word_embeddings"] = config.tie_word_embeddings;
  root["hidden_act"] = "silu";
  Json types = Json::array(), windows = Json::array(), sources = Json::array();
  for (const LayerSpec& layer : config.layers) {
    types.push_back(LayerTypeName(layer.kind));
    windows.push_back(layer.kind == AttentionKind::kSliding ? Json(layer.window) : Json(nullptr));
    sources.push_back(layer.kv_source);
  }
  root["layer_types"] = types;
  root["sliding_window"] = windows;
  root["kv_source_layers"] = sources;
  return root.dump(2) + "\n";
}

}  // namespace mixattn
