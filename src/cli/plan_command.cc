// mixattn plan: the KV-memory planner. Every figure comes from KvPlan, the same object the engine
// allocates from: the sequences that fit a budget are counted in the engine's blocks (block size
// and prefill chunk as the engine's defaults, or as given), so what the planner reports is what
// the engine admits.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/model_source.h"
#include "core/error.h"
#include "core/units.h"
#include "engine/engine.h"
#include "kv/block_pool.h"
#include "model/kv_plan.h"
#include "model/presets.h"
#include "model/weights.h"

namespace mixattn::cli {
namespace {

using Json = nlohmann::ordered_json;

struct PlanOptions {
  int64_t context = 32768;
  int64_t batch = 1;
  std::string kv_dtype = "bf16";
  std::string budget = "8GiB";
  int64_t block_tokens = kDefaultBlockTokens;
  int64_t chunk = EngineOptions{}.prefill_chunk;
  bool compare = false;
  bool json = false;
};

// The figures of one plan at one context, batch and budget.
struct PlanReport {
  std::string label;
  ModelConfig config;
  int64_t kv_token_layers = 0;
  int64_t bytes_per_token = 0;
  int64_t bytes_per_sequence = 0;
  int64_t bytes_total = 0;
  int64_t block_bytes = 0;            // one engine block: B tokens of K and V of one owner
  int64_t blocks_per_sequence = 0;    // what the engine reserves for one T-token sequence
  int64_t max_sequences = 0;          // T-token sequences the engine admits within the budget
  int64_t max_sequences_unpaged = 0;  // the same without block rounding (bytes per sequence)
  double reduction_vs_standard = 0;
  std::vector<int> owners;
};

PlanReport MakeReport(const std::string& label, const ModelConfig& config,
                      const PlanOptions& options, DType dtype, int64_t budget) {
  const KvPlan plan(config);
  PlanReport report;
  report.label = label;
  report.config = config;
  report.owners = plan.kv_owners();
  report.kv_token_layers = plan.kv_token_layers(options.context);
  report.bytes_per_token = plan.kv_bytes_per_token(dtype);
  report.bytes_per_sequence = plan.kv_bytes_per_sequence(options.context, dtype);
  report.bytes_total = report.bytes_per_sequence * options.batch;
  report.block_bytes = KvBlockPool::BlockBytes(options.block_tokens, config.num_key_value_heads,
                                               config.head_dim, dtype);
  report.blocks_per_sequence =
      plan.kv_blocks_per_sequence(options.context, options.block_tokens, options.chunk);
  report.max_sequences = plan.max_sequences_in_blocks(budget / report.block_bytes, options.context,
                                                      options.block_tokens, options.chunk);
  report.max_sequences_unpaged = plan.max_sequences(budget, options.context, dtype);
  // The standard layout of the same shape keeps every token in every layer: L * T token-layers.
  report.reduction_vs_standard = static_cast<double>(config.num_layers()) *
                                 static_cast<double>(options.context) /
                                 static_cast<double>(report.kv_token_layers);
  return report;
}

Json ReportJson(const PlanReport& report, const PlanOptions& options, int64_t budget,
                bool from_preset) {
  const ModelConfig& c = report.config;
  Json layers = Json::array();
  for (int i = 0; i < c.num_layers(); ++i) {
    const LayerSpec& spec = c.layers[static_cast<size_t>(i)];
    layers.push_back(
        {{"index", i},
         {"kind", AttentionKindName(spec.kind)},
         {"window", spec.kind == AttentionKind::kSliding ? Json(spec.window) : Json(nullptr)},
         {"kv_source", spec.kv_source}});
  }
  Json out;
  out["preset"] = from_preset ? Json(report.label) : Json(nullptr);
  out["config"] = from_preset ? Json(nullptr) : Json(report.label);
  out["shape"] = {{"layers", c.num_layers()},
                  {"hidden_size", c.hidden_size},
                  {"num_attention_heads", c.num_attention_heads},
                  {"num_key_value_heads", c.num_key_value_heads},
                  {"head_dim", c.head_dim},
                  {"intermediate_size", c.intermediate_size},
                  {"vocab_size", c.vocab_size},
                  {"parameters", ParameterCount(c)}};
  out["layout"] = LayoutString(c.layers);
  out["layers"] = layers;
  out["kv_owner_layers"] = report.owners;
  out["kv_owner_count"] = report.owners.size();
  out["kv_dtype"] = options.kv_dtype;
  out["context"] = options.context;
  out["batch"] = options.batch;
  out["kv_token_layers"] = report.kv_token_layers;
  out["kv_bytes_per_token"] = report.bytes_per_token;
  out["kv_bytes_per_sequence"] = report.bytes_per_sequence;
  out["kv_bytes_total"] = report.bytes_total;
  out["budget_bytes"] = budget;
  out["block_tokens"] = options.block_tokens;
  out["chunk"] = options.chunk;
  out["kv_block_bytes"] = report.block_bytes;
  out["kv_blocks_per_sequence"] = report.blocks_per_sequence;
  out["max_sequences"] = report.max_sequences;
  out["max_sequences_unpaged"] = report.max_sequences_unpaged;
  out["reduction_vs_standard"] = report.reduction_vs_standard;
  return out;
}

void PrintPlan(const PlanReport& report, const PlanOptions& options, int64_t budget) {
  const ModelConfig& c = report.config;
  const KvPlan plan(c);
  int full_owners = 0;
  for (int owner : report.owners) full_owners += plan.layer(owner).kind == AttentionKind::kFull;
  std::printf("%s: %d layers, hidden %d, %d heads, %d KV heads x %d dims, %s parameters\n",
              report.label.c_str(), c.num_layers(), c.hidden_size, c.num_attention_heads,
              c.num_key_value_heads, c.head_dim, std::to_string(ParameterCount(c)).c_str());
  std::printf("\n%5s  %-8s %7s  %-10s tokens cached at %lld\n", "layer", "kind", "window",
              "kv owner", static_cast<long long>(options.context));
  for (int i = 0; i < c.num_layers(); ++i) {
    const LayerSpec& spec = plan.layer(i);
    const std::string window =
        spec.kind == AttentionKind::kSliding ? std::to_string(spec.window) : "-";
    const std::string owner = plan.owns_kv(i) ? "own" : "layer " + std::to_string(plan.kv_owner(i));
    const std::string held =
        plan.owns_kv(i) ? std::to_string(plan.kv_tokens_held(i, options.context)) : "0 (reads)";
    std::printf("%5d  %-8s %7s  %-10s %s\n", i, AttentionKindName(spec.kind), window.c_str(),
                owner.c_str(), held.c_str());
  }
  std::printf("\nKV owners: %zu of %d layers (%d full, %zu sliding); KV dtype %s\n",
              report.owners.size(), c.num_layers(), full_owners,
              report.owners.size() - static_cast<size_t>(full_owners), options.kv_dtype.c_str());
  std::printf("KV bytes per token (every owner one more token): %s (%lld B)\n",
              FormatBytes(report.bytes_per_token).c_str(),
              static_cast<long long>(report.bytes_per_token));
  std::printf("KV per sequence at %lld tokens: %s (%lld B), %lld token-layers\n",
              static_cast<long long>(options.context),
              FormatBytes(report.bytes_per_sequence).c_str(),
              static_cast<long long>(report.bytes_per_sequence),
              static_cast<long long>(report.kv_token_layers));
  std::printf("KV for a batch of %lld: %s\n", static_cast<long long>(options.batch),
              FormatBytes(report.bytes_total).c_str());
  std::printf(
      "Sequences of %lld tokens the engine admits within %s: %lld (%lld blocks of %lld tokens "
      "each, prefill chunk %lld; %lld without block rounding)\n",
      static_cast<long long>(options.context), FormatBytes(budget).c_str(),
      static_cast<long long>(report.max_sequences),
      static_cast<long long>(report.blocks_per_sequence),
      static_cast<long long>(options.block_tokens), static_cast<long long>(options.chunk),
      static_cast<long long>(report.max_sequences_unpaged));
  std::printf("Reduction against standard attention of the same shape: %.1fx\n",
              report.reduction_vs_standard);
}

void PrintComparison(const std::vector<PlanReport>& reports, const PlanOptions& options,
                     int64_t budget) {
  const ModelConfig& c = reports.front().config;
  std::printf(
      "KV plans at context %lld, batch %lld, KV %s, budget %s; shape: %d layers, %d KV heads x %d "
      "dims; max seqs: what the engine admits (blocks of %lld tokens, prefill chunk %lld)\n\n",
      static_cast<long long>(options.context), static_cast<long long>(options.batch),
      options.kv_dtype.c_str(), FormatBytes(budget).c_str(), c.num_layers(), c.num_key_value_heads,
      c.head_dim, static_cast<long long>(options.block_tokens),
      static_cast<long long>(options.chunk));
  std::printf("%-22s %6s %16s %12s %12s %10s %9s  %s\n", "preset", "owners", "kv_token_layers",
              "per seq", "batch", "reduction", "max seqs", "layout");
  for (const PlanReport& r : reports) {
    std::printf("%-22s %6zu %16lld %12s %12s %9.1fx %9lld  %s\n", r.label.c_str(), r.owners.size(),
                static_cast<long long>(r.kv_token_layers),
                FormatBytes(r.bytes_per_sequence).c_str(), FormatBytes(r.bytes_total).c_str(),
                r.reduction_vs_standard, static_cast<long long>(r.max_sequences),
                LayoutString(r.config.layers).c_str());
  }
  std::printf(
      "\nF = full attention, S = sliding window, X>j = reads layer j's KV cache. "
      "Presets are this project's reconstruction of the MixAttention paper's variants.\n");
}

void RunPlan(const ModelSource& source, const PlanOptions& options) {
  const DType dtype = options.kv_dtype == "f32" ? DType::kF32 : DType::kBF16;
  const int64_t budget = ParseByteSize(options.budget, "--budget");
  if (options.compare) {
    if (source.has_preset() || source.has_config()) {
      Fail("--compare shows every preset at the shape flags; leave out --preset and --config");
    }
    std::vector<PlanReport> reports;
    for (const PresetInfo& preset : Presets()) {
      reports.push_back(MakeReport(preset.name,
                                   MakePresetConfig(preset.name, source.shape_flags().shape()),
                                   options, dtype, budget));
    }
    if (options.json) {
      Json list = Json::array();
      for (const PlanReport& r : reports) list.push_back(ReportJson(r, options, budget, true));
      std::printf("%s\n", list.dump(2).c_str());
    } else {
      PrintComparison(reports, options, budget);
    }
    return;
  }
  const PlanReport report = MakeReport(source.label(), source.Resolve(), options, dtype, budget);
  if (options.json) {
    std::printf("%s\n", ReportJson(report, options, budget, source.has_preset()).dump(2).c_str());
  } else {
    PrintPlan(report, options, budget);
  }
}

}  // namespace

void RegisterPlanCommand(CLI::App& app) {
  CLI::App* command = app.add_subcommand(
      "plan",
      "KV-memory planner: per-layer table, KV bytes per token and per sequence, how many sequences "
      "fit in a memory budget, and every preset side by side (--compare)");
  auto options = std::make_shared<PlanOptions>();
  auto source = std::make_shared<ModelSource>(ModelShape{});
  source->Register(*command);
  command->add_option("--context", options->context, "context length T of each sequence, in tokens")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40))
      ->capture_default_str();
  command->add_option("--batch", options->batch, "number of sequences held at once")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30))
      ->capture_default_str();
  command->add_option("--kv-dtype", options->kv_dtype, "element type of the KV cache")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  command->add_option("--budget", options->budget, "KV memory budget, e.g. 8GiB, 512MiB, 24GB")
      ->capture_default_str();
  command
      ->add_option("--block-size", options->block_tokens,
                   "KV block size in tokens, as the engine's (sequences are counted in blocks)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  command
      ->add_option("--chunk", options->chunk,
                   "prefill chunk in tokens, as the engine's (a sliding owner holds W + chunk - 1 "
                   "tokens while it writes a chunk)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30))
      ->capture_default_str();
  command->add_flag("--compare", options->compare, "every preset side by side at the shape flags");
  command->add_flag("--json", options->json, "print JSON (one object, or a list with --compare)");
  command->callback([options, source]() { RunPlan(*source, *options); });
}

}  // namespace mixattn::cli
