#include "model/foundry_import.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>
#include <utility>

#include "core/error.h"

// yaml-cpp pitfall: `node_a = node_b` on a Node that already refers to something overwrites the
// referenced value inside the document; this file never assigns Nodes, it only copies them into
// new variables or rebinds with reset().

namespace mixattn {
namespace {

// Most layers an import builds: far above any real model, small enough that a large `repeat`
// cannot make the import allocate gigabytes.
constexpr int kMaxLayers = 1 << 16;
// Deepest nesting of `order:` lists (LLM Foundry configs use one or two levels).
constexpr int kMaxOrderDepth = 32;
// Longest chain of ${...} references followed before giving up (catches cycles).
constexpr int kMaxInterpolationHops = 16;

// In block_overrides.order, "default" names the base config (no override).
constexpr std::string_view kDefaultName = "default";

std::string Join(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}

std::string At(const std::string& path, size_t index) {
  return path + "[" + std::to_string(index) + "]";
}

// A node as a message shows it: a scalar's text, else its kind.
std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar: {
      std::string text = node.Scalar();
      if (text.size() > 40) text = text.substr(0, 37) + "...";
      return "'" + text + "'";
    }
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Null:
      return "null";
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

bool IsPresent(const YAML::Node& node) { return node.IsDefined() && !node.IsNull(); }

bool HasBlockOverrides(const YAML::Node& map) {
  return map.IsMap() && IsPresent(map["block_overrides"]);
}

YAML::Node LoadYaml(const std::string& text) { return YAML::Load(text); }

// "line 3, column 7: " for a yaml-cpp mark (0-based inside yaml-cpp), "" when it has none.
std::string DescribeMark(const YAML::Mark& mark) {
  if (mark.is_null()) return "";
  return "line " + std::to_string(mark.line + 1) + ", column " + std::to_string(mark.column + 1) +
         ": ";
}

// One per-block override, block_overrides.overrides.<name>.attn_config.
struct Override {
  std::string path;                        // YAML path of the override, for messages
  std::optional<int> sliding_window_size;  // LLM Foundry units: -1 = off, else w (w + 1 tokens)
  std::optional<int> reuse_kv_layer_idx;   // relative, < 0
};

// One item of block_overrides.order: a name or a nested order, repeated `repeat` times.
struct OrderItem {
  std::string path;                 // YAML path of the item, for messages
  std::string name;                 // empty for a nested order
  std::vector<OrderItem> children;  // the nested order
  int64_t repeat = 1;
  int64_t length = 0;  // layers the item expands to, saturated at kMaxLayers + 1
};

int64_t SaturatedLength(int64_t value) { return std::min<int64_t>(value, kMaxLayers + 1); }

// Appends one pointer per layer, in layer order, to the item that names the layer.
void Expand(const OrderItem& item, std::vector<const OrderItem*>& out) {
  for (int64_t r = 0; r < item.repeat; ++r) {
    if (item.children.empty()) {
      out.push_back(&item);
    } else {
      for (const OrderItem& child : item.children) Expand(child, out);
    }
  }
}

class FoundryReader {
 public:
  FoundryReader(std::string source, YAML::Node root) : source_(std::move(source)), root_(root) {}

  FoundryImport Import(int n_layers_arg) {
    if (!root_.IsMap()) {
      Fail(source_, ": expected a map of config keys at the top level, got ", Describe(root_));
    }
    // An LLM Foundry training YAML nests the model under `model:`; an HF config.json does not.
    std::string base;
    YAML::Node config(root_);
    const YAML::Node model = Child(root_, "", "model");
    if (model.IsMap() && HasBlockOverrides(model)) {
      config.reset(model);
      base = "model";
    } else if (!HasBlockOverrides(root_)) {
      Fail(source_,
           ": no block_overrides (looked under model: and at the top level); expected an LLM "
           "Foundry MPT config with block_overrides: {order: [...], overrides: {...}}");
    }

    FoundryImport result;
    const int base_window_size = ReadShape(config, base, result.shape);
    const int n_layers = n_layers_arg > 0 ? n_layers_arg : result.shape.n_layers;
    if (n_layers == 0) {
      Fail(source_, ": ", Join(base, "n_layers"),
           " is not in the file; pass the layer count to the import");
    }
    if (n_layers > kMaxLayers) {
      Fail(source_, ": n_layers = ", n_layers, " is more than the ", kMaxLayers,
           " layers mixattn supports");
    }
    result.shape.n_layers = n_layers;

    const std::string block_path = Join(base, "block_overrides");
    const YAML::Node block = Child(config, base, "block_overrides");
    RequireMap(block, block_path, "{order: [...], overrides: {...}}");
    CheckKeys(block, block_path, {"order", "overrides", "repeat"}, "");
    overrides_ =
        ReadOverrides(Child(block, block_path, "overrides"), Join(block_path, "overrides"));

    // The whole order is one item, repeated block_overrides.repeat times.
    const std::string order_path = Join(block_path, "order");
    const YAML::Node order = Child(block, block_path, "order");
    if (!IsPresent(order)) {
      Fail(source_, ": ", block_path,
           ": missing 'order' (the list of override names that expands to one per layer)");
    }
    OrderItem whole;
    whole.path = block_path;
    const YAML::Node repeat = Child(block, block_path, "repeat");
    if (repeat.IsDefined()) whole.repeat = ReadRepeat(repeat, Join(block_path, "repeat"));
    whole.children = ReadOrder(order, order_path, 0);
    whole.length = SumLengths(whole.children, whole.repeat);
    if (whole.length != n_layers) {
      std::ostringstream got;
      if (whole.length > kMaxLayers) {
        got << "more than " << kMaxLayers;
      } else {
        got << whole.length;
      }
      Fail(source_, ": ", order_path, ": expands to ", got.str(), " layers",
           whole.repeat > 1 ? " (block_overrides.repeat included)" : "", ", but n_layers is ",
           n_layers);
    }

    std::vector<const OrderItem*> per_layer;
    per_layer.reserve(static_cast<size_t>(n_layers));
    Expand(whole, per_layer);
    MIXATTN_CHECK(per_layer.size() == static_cast<size_t>(n_layers));
    for (int b = 0; b < n_layers; ++b) {
      const OrderItem& item = *per_layer[static_cast<size_t>(b)];
      result.layers.push_back(BuildLayer(b, item, base_window_size, result.layers));
      result.layer_override_names.push_back(item.name);
    }
    return result;
  }

 private:
  template <typename... Parts>
  [[noreturn]] void FailAt(const std::string& path, Parts&&... parts) const {
    Fail(source_, ": ", path, ": ", std::forward<Parts>(parts)...);
  }

  // OmegaConf, which LLM Foundry loads its YAML with, writes references as ${a.b.c}. A value that
  // is exactly one such reference (absolute, to a key in this file) is replaced by its target.
  YAML::Node Resolve(const YAML::Node& node, const std::string& path) const {
    YAML::Node current(node);
    for (int hop = 0; hop < kMaxInterpolationHops; ++hop) {
      if (!current.IsScalar()) return current;
      const std::string text = current.Scalar();
      if (text.size() < 3 || text.compare(0, 2, "${") != 0 || text.back() != '}') return current;
      const std::string reference = text.substr(2, text.size() - 3);
      if (reference.empty() || reference.front() == '.' ||
          reference.find_first_of("${}:") != std::string::npos) {
        FailAt(path, "'", text,
               "' is an OmegaConf interpolation mixattn cannot resolve; only ${a.b.c} references "
               "to keys of this file are supported");
      }
      YAML::Node target(root_);
      std::istringstream parts(reference);
      for (std::string key; std::getline(parts, key, '.');) {
        const YAML::Node& map = target;
        if (!map.IsMap() || !map[key].IsDefined()) {
          FailAt(path, "'", text, "' refers to '", reference, "', which is not in this file");
        }
        target.reset(map[key]);
      }
      current.reset(target);
    }
    FailAt(path, "interpolation chain longer than ", kMaxInterpolationHops,
           " references (is it a cycle?)");
  }

  // The value under `key` in `map` (undefined when absent), references resolved.
  YAML::Node Child(const YAML::Node& map, const std::string& map_path, std::string_view key) const {
    MIXATTN_CHECK(map.IsMap());
    const YAML::Node value = map[std::string(key)];
    // A missing key gives yaml-cpp's "invalid" node, on which IsMap() and friends throw; hand back
    // a valid undefined node instead.
    if (!value.IsDefined()) return YAML::Node(YAML::NodeType::Undefined);
    return Resolve(value, Join(map_path, key));
  }

  void RequireMap(const YAML::Node& node, const std::string& path, std::string_view shape) const {
    if (!node.IsMap()) FailAt(path, "expected a map ", shape, ", got ", Describe(node));
  }

  // Every key of `map` must be a name in `allowed`, and appear once.
  void CheckKeys(const YAML::Node& map, const std::string& path,
                 std::initializer_list<std::string_view> allowed, std::string_view note) const {
    std::set<std::string> seen;
    for (const auto& entry : map) {
      if (!entry.first.IsScalar()) FailAt(path, "keys must be names, got ", Describe(entry.first));
      const std::string& key = entry.first.Scalar();
      if (!seen.insert(key).second) FailAt(Join(path, key), "key given twice");
      if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
        std::string expected;
        for (std::string_view name : allowed) {
          expected += expected.empty() ? "" : ", ";
          expected += name;
        }
        FailAt(Join(path, key), "unexpected key '", key, "'; expected one of: ", expected, note);
      }
    }
  }

  int ReadInt(const YAML::Node& node, const std::string& path) const {
    int value = 0;
    if (!node.IsScalar() || !YAML::convert<int>::decode(node, value)) {
      FailAt(path, "expected an integer, got ", Describe(node));
    }
    return value;
  }

  double ReadNumber(const YAML::Node& node, const std::string& path) const {
    double value = 0;
    if (!node.IsScalar() || !YAML::convert<double>::decode(node, value) || !std::isfinite(value)) {
      FailAt(path, "expected a finite number, got ", Describe(node));
    }
    return value;
  }

  std::string ReadName(const YAML::Node& node, const std::string& path) const {
    if (!node.IsScalar()) FailAt(path, "expected a name, got ", Describe(node));
    return node.Scalar();
  }

  // Optional positive int field of `map`; 0 when absent or null.
  int ReadOptionalSize(const YAML::Node& map, const std::string& map_path,
                       std::string_view key) const {
    const YAML::Node node = Child(map, map_path, key);
    if (!IsPresent(node)) return 0;
    const int value = ReadInt(node, Join(map_path, key));
    if (value < 1) FailAt(Join(map_path, key), "must be a positive integer, got ", value);
    return value;
  }

  double ReadOptionalPositiveNumber(const YAML::Node& map, const std::string& map_path,
                                    std::string_view key) const {
    const YAML::Node node = Child(map, map_path, key);
    if (!IsPresent(node)) return 0;
    const double value = ReadNumber(node, Join(map_path, key));
    if (!(value > 0)) FailAt(Join(map_path, key), "must be > 0, got ", Describe(node));
    return value;
  }

  int64_t ReadRepeat(const YAML::Node& node, const std::string& path) const {
    const int value = ReadInt(node, path);
    if (value < 1) FailAt(path, "must be a positive integer (>= 1), got ", value);
    return value;
  }

  // LLM Foundry's sliding_window_size: -1 (off) or w >= 0 (keys i-w .. i).
  int ReadWindowSize(const YAML::Node& node, const std::string& path) const {
    const int value = ReadInt(node, path);
    if (value < -1) FailAt(path, "must be -1 (no sliding window) or >= 0, got ", value);
    if (value == std::numeric_limits<int>::max()) FailAt(path, "window ", value, " is too large");
    return value;
  }

  // Fills `shape` from the model config; returns the base attn_config.sliding_window_size.
  int ReadShape(const YAML::Node& config, const std::string& base, FoundryShape& shape) const {
    shape.d_model = ReadOptionalSize(config, base, "d_model");
    shape.n_heads = ReadOptionalSize(config, base, "n_heads");
    shape.n_layers = ReadOptionalSize(config, base, "n_layers");
    shape.vocab_size = ReadOptionalSize(config, base, "vocab_size");
    shape.max_seq_len = ReadOptionalSize(config, base, "max_seq_len");

    int window_size = -1;
    shape.kv_n_heads = shape.n_heads;
    const std::string attn_path = Join(base, "attn_config");
    const YAML::Node attn = Child(config, base, "attn_config");
    if (IsPresent(attn)) {
      RequireMap(attn, attn_path, "of attention settings");
      shape.rope_theta = ReadOptionalPositiveNumber(attn, attn_path, "rope_theta");
      const YAML::Node window = Child(attn, attn_path, "sliding_window_size");
      if (IsPresent(window))
        window_size = ReadWindowSize(window, Join(attn_path, "sliding_window_size"));
      if (IsPresent(Child(attn, attn_path, "reuse_kv_layer_idx"))) {
        FailAt(Join(attn_path, "reuse_kv_layer_idx"),
               "in the base attn_config it would apply to every layer, layer 0 included; set it "
               "in block_overrides.overrides.<name>.attn_config");
      }
      // LLM Foundry's attention classes: multihead_attention gives every query head its own K/V
      // (and ignores kv_n_heads), multiquery_attention shares one, grouped_query_attention reads
      // kv_n_heads.
      const int kv_n_heads = ReadOptionalSize(attn, attn_path, "kv_n_heads");
      const YAML::Node type_node = Child(attn, attn_path, "attn_type");
      const std::string type = IsPresent(type_node)
                                   ? ReadName(type_node, Join(attn_path, "attn_type"))
                                   : "multihead_attention";
      if (type == "multiquery_attention") {
        shape.kv_n_heads = 1;
      } else if (type == "grouped_query_attention") {
        if (kv_n_heads > 0) shape.kv_n_heads = kv_n_heads;
      } else if (type != "multihead_attention") {
        FailAt(Join(attn_path, "attn_type"), "unknown attention type '", type,
               "'; expected multihead_attention, multiquery_attention or "
               "grouped_query_attention");
      }
    }

    // LLM Foundry: ffn_config.ffn_hidden_size wins; else d_model * expansion_ratio, which must be
    // a whole number.
    const std::string ffn_path = Join(base, "ffn_config");
    const YAML::Node ffn = Child(config, base, "ffn_config");
    if (IsPresent(ffn)) {
      RequireMap(ffn, ffn_path, "of FFN settings");
      shape.ffn_hidden_size = ReadOptionalSize(ffn, ffn_path, "ffn_hidden_size");
    }
    const double ratio = ReadOptionalPositiveNumber(config, base, "expansion_ratio");
    if (shape.ffn_hidden_size == 0 && ratio > 0 && shape.d_model > 0) {
      const double hidden = ratio * shape.d_model;
      if (hidden != std::floor(hidden) || hidden > std::numeric_limits<int>::max()) {
        FailAt(Join(base, "expansion_ratio"), "expansion_ratio ", ratio, " * d_model ",
               shape.d_model, " = ", hidden, " is not a whole number of FFN units");
      }
      shape.ffn_hidden_size = static_cast<int>(hidden);
    }
    return window_size;
  }

  std::map<std::string, Override> ReadOverrides(const YAML::Node& node,
                                                const std::string& path) const {
    std::map<std::string, Override> overrides;
    if (!IsPresent(node)) return overrides;  // an order of only "default" needs none
    RequireMap(node, path, "{name: {attn_config: {...}}, ...}");
    for (const auto& entry : node) {
      if (!entry.first.IsScalar()) FailAt(path, "override names must be names, got a map or list");
      const std::string name = entry.first.Scalar();
      const std::string override_path = Join(path, name);
      if (name == kDefaultName) {
        FailAt(override_path,
               "an override may not be named 'default'; in order, 'default' means no override");
      }
      if (overrides.count(name) != 0) FailAt(override_path, "override defined twice");
      overrides.emplace(name, ReadOverride(Resolve(entry.second, override_path), override_path));
    }
    return overrides;
  }

  Override ReadOverride(const YAML::Node& node, const std::string& path) const {
    Override result;
    result.path = path;
    RequireMap(node, path, "{attn_config: {...}}");
    CheckKeys(node, path, {"attn_config"}, " (block_overrides may only change attn_config)");
    const std::string attn_path = Join(path, "attn_config");
    const YAML::Node attn = Child(node, path, "attn_config");
    if (!attn.IsDefined()) return result;
    RequireMap(attn, attn_path, "{sliding_window_size: ..., reuse_kv_layer_idx: ...}");
    CheckKeys(attn, attn_path, {"sliding_window_size", "reuse_kv_layer_idx"},
              " (mixattn imports the per-block attention overrides of the MixAttention paper)");
    const YAML::Node window = Child(attn, attn_path, "sliding_window_size");
    if (window.IsDefined()) {
      result.sliding_window_size = ReadWindowSize(window, Join(attn_path, "sliding_window_size"));
    }
    const YAML::Node reuse = Child(attn, attn_path, "reuse_kv_layer_idx");
    if (reuse.IsDefined()) {
      const std::string reuse_path = Join(attn_path, "reuse_kv_layer_idx");
      const int relative = ReadInt(reuse, reuse_path);
      if (relative >= 0) {
        FailAt(reuse_path, "must be negative (relative: -1 = the previous layer), got ", relative);
      }
      result.reuse_kv_layer_idx = relative;
    }
    return result;
  }

  std::string DescribeOverrideNames() const {
    if (overrides_.empty()) return "block_overrides.overrides defines none";
    std::string names;
    for (const auto& entry : overrides_) names += (names.empty() ? "" : ", ") + entry.first;
    return "defined: " + names;
  }

  std::vector<OrderItem> ReadOrder(const YAML::Node& node, const std::string& path,
                                   int depth) const {
    if (depth >= kMaxOrderDepth) {
      FailAt(path, "order lists nested more than ", kMaxOrderDepth, " levels deep");
    }
    if (!node.IsSequence()) {
      FailAt(path, "expected a list of {name: ...} or {order: [...]} items, got ", Describe(node));
    }
    if (node.size() == 0) FailAt(path, "empty list; an order needs at least one item");
    std::vector<OrderItem> items;
    size_t index = 0;
    for (const auto& element : node) {
      const std::string item_path = At(path, index++);
      items.push_back(ReadOrderItem(Resolve(element, item_path), item_path, depth));
    }
    return items;
  }

  OrderItem ReadOrderItem(const YAML::Node& node, const std::string& path, int depth) const {
    RequireMap(node, path, "with 'name:' or 'order:' and an optional 'repeat:'");
    CheckKeys(node, path, {"name", "order", "repeat"}, "");
    const YAML::Node name = Child(node, path, "name");
    const YAML::Node order = Child(node, path, "order");
    if (name.IsDefined() && order.IsDefined()) {
      FailAt(path, "has both 'name' and 'order'; an item takes exactly one of them");
    }
    if (!name.IsDefined() && !order.IsDefined()) {
      FailAt(path, "has neither 'name' nor 'order'; an item takes exactly one of them");
    }
    OrderItem item;
    item.path = path;
    const YAML::Node repeat = Child(node, path, "repeat");
    if (repeat.IsDefined()) item.repeat = ReadRepeat(repeat, Join(path, "repeat"));
    if (name.IsDefined()) {
      item.name = ReadName(name, Join(path, "name"));
      if (item.name != kDefaultName && overrides_.count(item.name) == 0) {
        FailAt(Join(path, "name"), "unknown override '", item.name, "' (", DescribeOverrideNames(),
               "; 'default' means no override)");
      }
      item.length = item.repeat;
    } else {
      item.children = ReadOrder(order, Join(path, "order"), depth + 1);
      item.length = SumLengths(item.children, item.repeat);
    }
    return item;
  }

  // repeat * the summed lengths, saturated at kMaxLayers + 1 so it never overflows.
  static int64_t SumLengths(const std::vector<OrderItem>& items, int64_t repeat) {
    int64_t sum = 0;
    for (const OrderItem& item : items) sum = SaturatedLength(sum + item.length);
    return SaturatedLength(sum * repeat);
  }

  LayerSpec BuildLayer(int b, const OrderItem& item, int base_window_size,
                       const std::vector<LayerSpec>& earlier) const {
    const Override* block_override =
        item.name == kDefaultName ? nullptr : &overrides_.at(item.name);
    int window_size = base_window_size;
    if (block_override != nullptr && block_override->sliding_window_size) {
      window_size = *block_override->sliding_window_size;
    }
    LayerSpec layer;
    if (window_size >= 0) {
      // flash-attn window_size=(w, w) with causal=True: the query at i sees keys i-w .. i, which
      // is w + 1 tokens; LayerSpec::window counts the query's own token too.
      layer.kind = AttentionKind::kSliding;
      layer.window = window_size + 1;
    }
    layer.kv_source = b;
    if (block_override != nullptr && block_override->reuse_kv_layer_idx) {
      const int relative = *block_override->reuse_kv_layer_idx;
      const int64_t target = static_cast<int64_t>(b) + relative;
      if (target < 0) {
        Fail(source_, ": layer ", b, " (", item.path, ", override '", item.name,
             "'): ", Join(block_override->path, "attn_config.reuse_kv_layer_idx"), " = ", relative,
             " points to layer ", target, ", before layer 0");
      }
      // A chain collapses to its root producer: if the target reads another layer, so does b.
      layer.kv_source = earlier[static_cast<size_t>(target)].kv_source;
    }
    return layer;
  }

  std::string source_;
  YAML::Node root_;
  std::map<std::string, Override> overrides_;
};

}  // namespace

FoundryImport ImportFoundryConfig(const std::string& text, const std::string& source_name,
                                  int n_layers) {
  try {
    const YAML::Node root = LoadYaml(text);
    FoundryReader reader(source_name, root);
    return reader.Import(n_layers);
  } catch (const YAML::ParserException& e) {
    Fail(source_name, ": ", DescribeMark(e.mark), "YAML syntax error: ", e.msg);
  } catch (const YAML::Exception& e) {
    Fail(source_name, ": ", DescribeMark(e.mark), "YAML error: ", e.msg);
  }
}

FoundryImport LoadFoundryConfigFile(const std::string& path, int n_layers) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) Fail(path, ": is a directory, not a config file");
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail(path, ": cannot open: ", std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) Fail(path, ": read error: ", std::strerror(errno));
  return ImportFoundryConfig(text.str(), path, n_layers);
}

bool LooksLikeFoundryConfig(const std::string& text) {
  try {
    const YAML::Node root = LoadYaml(text);
    if (!root.IsMap()) return false;
    return HasBlockOverrides(root) || HasBlockOverrides(root["model"]);
  } catch (...) {
    return false;
  }
}

}  // namespace mixattn
