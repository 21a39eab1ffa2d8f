// mixattn bench: decode and prefill throughput, KV memory and bytes moved, across layouts,
// context lengths and batch sizes, measured side by side in one process.
//
// Decode at long context: filling 32K-token caches by running the prefill would take minutes
// per sequence here, so decode runs over caches whose blocks are allocated exactly as a real
// prefill would leave them and filled with synthetic K/V values (the output says so). Prefill
// throughput is measured separately, once per preset, on a shorter real prefill of
// --prefill-tokens tokens; the table and JSON repeat that one figure on each of the preset's rows.
//
// Every flag is checked before any measuring (and before the 1 GiB DRAM probe is allocated), so a
// typo fails in a second with a message naming the flag, not minutes later or as a failed check.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/model_loading.h"
#include "cli/model_source.h"
#include "core/error.h"
#include "core/random.h"
#include "core/units.h"
#include "engine/engine.h"
#include "engine/model_runner.h"
#include "model/model_dir.h"
#include "model/presets.h"
#include "ops/elementwise.h"
#include "plot/png_chart.h"

namespace mixattn::cli {
namespace {

using Json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

struct BenchOptions {
  std::string model;
  std::vector<std::string> compare;
  std::vector<int64_t> contexts = {4096, 32768};
  std::vector<int64_t> batches = {1, 4};
  std::string kv_budget;  // if set: each preset runs at the largest batch the budget admits
  int64_t decode_steps = 8;
  int64_t prefill_tokens = 1024;
  int64_t block_tokens = kDefaultBlockTokens;
  int64_t chunk = 256;
  int repeats = 3;
  std::string weights_dtype = "bf16";
  std::string kv_dtype = "bf16";
  bool batch_invariant = false;  // EngineOptions::batch_invariant
  std::string json_path;
  std::string plot_path;
};

// Bench model of the engine issue: 12 layers, d=512, 8 heads, 2 KV heads, head_dim 64, ffn 1536,
// vocab 8192, window 512.
ModelShape BenchDefaultShape() {
  ModelShape shape;
  shape.layers = 12;
  shape.hidden = 512;
  shape.heads = 8;
  shape.kv_heads = 2;
  shape.head_dim = 64;
  shape.ffn = 1536;
  shape.vocab = 8192;
  shape.window = 512;
  shape.max_position = 1 << 17;
  return shape;
}

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// DRAM read bandwidth: passes summing a 1 GiB buffer, far larger than the caches. 64-bit integer
// adds are associative, so the compiler vectorises the reduction and the loop is bound by memory,
// not by an add's latency. On a shared machine the bandwidth drifts by tens of percent within a
// minute, so the bench runs one pass right before each decode timing and judges each timing
// against its own pass (see Measurement::dram_fraction).
class ReadBandwidthProbe {
 public:
  ReadBandwidthProbe() : buffer_(kCount) {
    for (size_t i = 0; i < kCount; ++i) buffer_[i] = i;
  }
  // One pass; returns its bandwidth in bytes/s.
  double Pass() {
    const auto start = Clock::now();
    uint64_t sum = 0;
#pragma omp parallel for reduction(+ : sum) schedule(static)
    for (size_t i = 0; i < kCount; ++i) sum += buffer_[i];
    const double seconds = Seconds(start, Clock::now());
    MIXATTN_CHECK(sum == kCount * (kCount - 1) / 2);  // the reads happened
    const double bandwidth = static_cast<double>(kCount * sizeof(uint64_t)) / seconds;
    all_.push_back(bandwidth);
    return bandwidth;
  }
  const std::vector<double>& all() const { return all_; }

 private:
  static constexpr size_t kCount = size_t{1} << 27;  // 1 GiB of uint64
  std::vector<uint64_t> buffer_;
  std::vector<double> all_;  // every pass so far, bytes/s
};

double Median(std::vector<double> values) {
  MIXATTN_CHECK(!values.empty());
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

struct Measurement {
  std::string preset;
  int64_t context = 0, batch = 0;
  int64_t kv_bytes = 0;  // allocated for the batch
  // Measured once per preset, on one prefill of `prefill_tokens` tokens: the same on every row of
  // a preset, whatever the row's context and batch.
  double prefill_tokens_per_s = 0;
  int64_t prefill_tokens = 0;
  double decode_step_s = 0;
  double decode_tokens_per_s = 0;
  int64_t decode_bytes_per_step = 0;  // weights + the KV each layer reads
  int64_t weight_bytes = 0;
  double decode_bandwidth = 0;  // bytes per step / time per step
  // Each timing r of `repeats` follows a DRAM pass d_r: dram_fraction is the median over r of
  // (bytes per step / step time_r) / d_r, and dram_bandwidth the median d_r.
  double dram_fraction = 0;
  double dram_bandwidth = 0;
};

DType ParseDType(const std::string& name) { return name == "f32" ? DType::kF32 : DType::kBF16; }

class PresetBench {
 public:
  PresetBench(std::string name, const ModelConfig& config, const ModelWeights& weights,
              const BenchOptions& options)
      : name_(std::move(name)),
        options_(options),
        runner_(config, weights, ParseDType(options.weights_dtype),
                options.batch_invariant ? ops::LargeBatches::kRowInvariant
                                        : ops::LargeBatches::kOneDnn),
        kv_dtype_(ParseDType(options.kv_dtype)) {}

  const ModelRunner& runner() const { return runner_; }
  const std::string& name() const { return name_; }

  double Prefill() {
    const ModelConfig& config = runner_.config();
    const int64_t tokens = options_.prefill_tokens;
    KvBlockPool pool(
        runner_.plan().kv_blocks_per_sequence(tokens, options_.block_tokens, options_.chunk),
        options_.block_tokens, config.num_key_value_heads, config.head_dim, kv_dtype_);
    KvCache cache(runner_.plan(), pool);
    Rng rng(7);
    std::vector<int> prompt(static_cast<size_t>(tokens));
    for (int& t : prompt) t = static_cast<int>(rng.Below(static_cast<uint64_t>(config.vocab_size)));
    const SequenceId sequence = cache.AddSequence();
    const auto start = Clock::now();
    for (int64_t at = 0; at < tokens; at += options_.chunk) {
      const int64_t count = std::min(options_.chunk, tokens - at);
      MIXATTN_CHECK(cache.Append(sequence, count));
      const BatchItem item{
          sequence,
          std::span<const int>(prompt).subspan(static_cast<size_t>(at), static_cast<size_t>(count)),
          at, at + count == tokens, false};
      runner_.Forward(std::span<const BatchItem>(&item, 1), cache);
    }
    return static_cast<double>(tokens) / Seconds(start, Clock::now());
  }

  // Time per decode step for `batch` sequences at `context` tokens (synthetic cache contents).
  Measurement Decode(int64_t context, int64_t batch, ReadBandwidthProbe& probe) {
    const ModelConfig& config = runner_.config();
    const KvPlan& plan = runner_.plan();
    const int64_t final_length = context + options_.decode_steps * options_.repeats + 1;
    const int64_t blocks =
        batch * plan.kv_blocks_per_sequence(final_length, options_.block_tokens, options_.chunk);
    KvBlockPool pool(blocks, options_.block_tokens, config.num_key_value_heads, config.head_dim,
                     kv_dtype_);
    // Synthetic K/V: small random values (denormal-free), the same for every block.
    {
      Rng rng(11);
      std::vector<float> values(static_cast<size_t>(pool.block_bytes() / DTypeSize(kv_dtype_)));
      for (float& v : values) v = static_cast<float>(0.5 * rng.Normal());
      for (int64_t b = 0; b < pool.num_blocks(); ++b) {
        ops::StoreAs(values.data(), static_cast<int64_t>(values.size()), kv_dtype_,
                     pool.base() + b * pool.block_bytes());
      }
    }
    KvCache cache(plan, pool);
    std::vector<SequenceId> sequences;
    for (int64_t b = 0; b < batch; ++b) {
      sequences.push_back(cache.AddSequence());
      // As a chunked prefill would: sliding owners keep only their window's blocks.
      for (int64_t at = 0; at < context; at += options_.chunk) {
        MIXATTN_CHECK(cache.Append(sequences.back(), std::min(options_.chunk, context - at)));
      }
    }
    Measurement m;
    m.preset = name_;
    m.context = context;
    m.batch = batch;
    m.kv_bytes = cache.TotalUsage().full_bytes + cache.TotalUsage().sliding_bytes;
    m.weight_bytes = runner_.weight_bytes_per_step();
    m.decode_bytes_per_step =
        m.weight_bytes + batch * plan.kv_bytes_read_per_decode_token(context, kv_dtype_);
    std::vector<int> next_tokens(static_cast<size_t>(batch), 1);
    std::vector<BatchItem> items(static_cast<size_t>(batch));
    double best = INFINITY;
    std::vector<double> fractions, dram;
    for (int r = 0; r < options_.repeats; ++r) {
      dram.push_back(probe.Pass());
      const auto start = Clock::now();
      for (int64_t step = 0; step < options_.decode_steps; ++step) {
        for (int64_t b = 0; b < batch; ++b) {
          const SequenceId s = sequences[static_cast<size_t>(b)];
          const int64_t position = cache.length(s);
          MIXATTN_CHECK(cache.Append(s, 1));
          items[static_cast<size_t>(b)] =
              BatchItem{s, std::span<const int>(&next_tokens[static_cast<size_t>(b)], 1), position,
                        true, false};
        }
        runner_.Forward(items, cache);
      }
      const double step_s =
          Seconds(start, Clock::now()) / static_cast<double>(options_.decode_steps);
      best = std::min(best, step_s);
      fractions.push_back(static_cast<double>(m.decode_bytes_per_step) / step_s / dram.back());
    }
    m.dram_fraction = Median(fractions);
    m.dram_bandwidth = Median(dram);
    m.decode_step_s = best;
    m.decode_tokens_per_s = static_cast<double>(batch) / best;
    m.decode_bandwidth = static_cast<double>(m.decode_bytes_per_step) / best;
    return m;
  }

 private:
  std::string name_;
  const BenchOptions& options_;
  ModelRunner runner_;
  DType kv_dtype_;
};

// --plot is checked before the minutes of measuring, so a typo does not cost the run.
void CheckPlotPath(const std::string& path) {
  std::string extension = std::filesystem::path(path).extension().string();
  for (char& c : extension) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (extension != ".png") Fail("--plot ", path, ": the file name must end in .png");
  const std::filesystem::path directory = std::filesystem::path(path).parent_path();
  if (!directory.empty() && !std::filesystem::is_directory(directory)) {
    Fail("--plot ", path, ": directory ", directory.string(), " does not exist");
  }
}

// Three panels against context length (log2 axis), one line per preset x batch (per preset
// when --kv-budget picks the batch): decode tokens/s; KV bytes allocated; bytes read per decode
// step (weights + the KV each layer reads), the traffic that bounds decode speed. The last two
// are where MixAttention's savings show, the first is what they buy.
std::vector<plot::LineChart> BenchCharts(const std::vector<Measurement>& results,
                                         const std::string& kv_budget) {
  // One series per preset x batch, presets in the order they ran, batches ascending.
  std::vector<std::string> presets;
  for (const Measurement& m : results) {
    if (std::find(presets.begin(), presets.end(), m.preset) == presets.end()) {
      presets.push_back(m.preset);
    }
  }
  std::map<std::pair<size_t, int64_t>, std::vector<const Measurement*>> points;
  for (const Measurement& m : results) {
    const size_t preset =
        static_cast<size_t>(std::find(presets.begin(), presets.end(), m.preset) - presets.begin());
    // Under --kv-budget the batch varies with the context: one series per preset.
    points[{preset, kv_budget.empty() ? m.batch : 0}].push_back(&m);
  }
  const auto chart = [](std::string title, std::string y_label, bool log_y) {
    plot::LineChart c;
    c.title = std::move(title);
    c.x_label = "context length (tokens)";
    c.y_label = std::move(y_label);
    c.log_x = true;  // contexts are usually powers of two: 4K, 8K, ... 64K
    c.log_y = log_y;
    return c;
  };
  plot::LineChart speed = chart("Decode throughput", "decode tokens/s (whole batch)", false);
  plot::LineChart memory = chart("KV cache allocated", "bytes (log2 axis, M = MiB)", true);
  plot::LineChart traffic =
      chart("Bytes read per decode step", "weights + KV read (log2 axis, M = MiB)", true);
  // A log axis cannot show 0; such a point becomes a gap rather than failing the whole plot.
  const auto positive = [](double v) { return v > 0 ? v : NAN; };
  for (auto& [key, series] : points) {
    const std::string label = kv_budget.empty()
                                  ? presets[key.first] + " b=" + std::to_string(key.second)
                                  : presets[key.first] + " (batch fits " + kv_budget + ")";
    std::stable_sort(series.begin(), series.end(), [](const Measurement* a, const Measurement* b) {
      return a->context < b->context;
    });
    plot::Series s{label, {}, {}}, k{label, {}, {}}, t{label, {}, {}};
    for (const Measurement* m : series) {
      const double context = static_cast<double>(m->context);
      s.x.push_back(context);
      s.y.push_back(m->decode_tokens_per_s);
      k.x.push_back(context);
      k.y.push_back(positive(static_cast<double>(m->kv_bytes)));
      t.x.push_back(context);
      t.y.push_back(positive(static_cast<double>(m->decode_bytes_per_step)));
    }
    speed.series.push_back(std::move(s));
    memory.series.push_back(std::move(k));
    traffic.series.push_back(std::move(t));
  }
  return {speed, memory, traffic};
}

Json MeasurementJson(const Measurement& m) {
  return Json{{"preset", m.preset},
              {"context", m.context},
              {"batch", m.batch},
              {"kv_bytes", m.kv_bytes},
              {"prefill_tokens_per_s", m.prefill_tokens_per_s},
              {"prefill_tokens", m.prefill_tokens},
              {"decode_tokens_per_s", m.decode_tokens_per_s},
              {"decode_step_s", m.decode_step_s},
              {"decode_bytes_per_step", m.decode_bytes_per_step},
              {"weight_bytes", m.weight_bytes},
              {"decode_bandwidth_bytes_per_s", m.decode_bandwidth},
              {"dram_read_bytes_per_s", m.dram_bandwidth},
              {"dram_bandwidth_fraction", m.dram_fraction},
              {"bandwidth_bound_tokens_per_s", static_cast<double>(m.batch) * m.dram_bandwidth /
                                                   static_cast<double>(m.decode_bytes_per_step)},
              {"decode_kv", "synthetic"}};
}

// One model to measure: a preset at the shape flags, a --config file, or a --model directory.
struct BenchTarget {
  std::string name;
  ModelConfig config;
  std::unique_ptr<ModelWeights> weights;  // loaded from --model; random weights otherwise
};

// What to measure, from --model, --compare, --preset or --config (at most one of them).
std::vector<BenchTarget> ResolveTargets(const ModelSource& source, const BenchOptions& options) {
  const int given =
      !options.model.empty() + !options.compare.empty() + source.has_preset() + source.has_config();
  if (given > 1) Fail("give one of --model DIR, --compare A,B,..., --preset NAME or --config FILE");
  std::vector<BenchTarget> targets;
  if (!options.model.empty()) {
    LoadedModel model = LoadModelDir(options.model);
    targets.push_back(
        {options.model, model.config, std::make_unique<ModelWeights>(std::move(model.weights))});
    return targets;
  }
  if (source.has_config()) {
    targets.push_back({source.label(), source.Resolve(), nullptr});
    return targets;
  }
  std::vector<std::string> presets = options.compare;
  if (source.has_preset()) presets = {source.label()};
  if (presets.empty()) presets = {"standard", "ma-pairs"};
  for (size_t i = 0; i < presets.size(); ++i) {
    if (std::find(presets.begin(), presets.begin() + static_cast<std::ptrdiff_t>(i), presets[i]) !=
        presets.begin() + static_cast<std::ptrdiff_t>(i)) {
      Fail("--compare: preset '", presets[i], "' is listed twice");
    }
    const auto known = [&](const PresetInfo& preset) { return preset.name == presets[i]; };
    if (std::none_of(Presets().begin(), Presets().end(), known)) {
      std::string names;
      for (const PresetInfo& preset : Presets()) names += (names.empty() ? "" : ", ") + preset.name;
      Fail(source.has_preset() ? "--preset" : "--compare", ": unknown preset '", presets[i],
           "'; known presets: ", names);
    }
    targets.push_back(
        {presets[i], MakePresetConfig(presets[i], source.shape_flags().shape()), nullptr});
  }
  return targets;
}

// Under --kv-budget: the most sequences of `context` tokens the budget admits (0 if none fits).
int64_t BudgetBatch(const KvPlan& plan, const ModelConfig& config, int64_t budget, int64_t context,
                    const BenchOptions& options) {
  const int64_t block_bytes =
      KvBlockPool::BlockBytes(options.block_tokens, config.num_key_value_heads, config.head_dim,
                              ParseDType(options.kv_dtype));
  return plan.max_sequences_in_blocks(budget / block_bytes, context, options.block_tokens,
                                      options.chunk);
}

// The checks that need the models: positions within max_position_embeddings, a budget that holds
// at least one sequence. Returns the --kv-budget in bytes (0 when not given).
int64_t CheckPoints(const std::vector<BenchTarget>& targets, const BenchOptions& options) {
  for (int64_t c : options.contexts)
    if (c < 1) Fail("--context values must be >= 1 (got ", c, ")");
  for (int64_t b : options.batches)
    if (b < 1) Fail("--batch values must be >= 1 (got ", b, ")");
  // Decode appends decode_steps tokens per timing to each sequence, plus one.
  const int64_t decode_tokens = options.decode_steps * options.repeats + 1;
  const int64_t budget =
      options.kv_budget.empty() ? 0 : ParseByteSize(options.kv_budget, "--kv-budget");
  for (const BenchTarget& target : targets) {
    const int64_t max_position = target.config.max_position_embeddings;
    if (options.prefill_tokens > max_position) {
      Fail("--prefill-tokens ", options.prefill_tokens, " exceeds ", target.name,
           "'s max_position_embeddings = ", max_position);
    }
    const KvPlan plan(target.config);
    for (int64_t context : options.contexts) {
      if (context > max_position - decode_tokens) {
        Fail("--context ", context, ": decode takes the sequences to ", context + decode_tokens,
             " tokens (context + --decode-steps ", options.decode_steps, " x --repeats ",
             options.repeats, " + 1), beyond ", target.name,
             "'s max_position_embeddings = ", max_position);
      }
      if (budget && BudgetBatch(plan, target.config, budget, context, options) < 1) {
        Fail("--kv-budget ", options.kv_budget, ": not one ", context, "-token sequence of ",
             target.name, " fits in it");
      }
    }
  }
  return budget;
}

void RunBench(const ModelSource& source, const BenchOptions& options) {
  std::vector<BenchTarget> targets = ResolveTargets(source, options);
  const int64_t budget = CheckPoints(targets, options);
  if (!options.plot_path.empty()) CheckPlotPath(options.plot_path);

  std::fprintf(stderr, "measuring DRAM read bandwidth... ");
  ReadBandwidthProbe probe;
  probe.Pass();
  std::fprintf(stderr, "%.1f GB/s\n", probe.Pass() / 1e9);

  std::vector<std::unique_ptr<PresetBench>> benches;
  for (BenchTarget& target : targets) {
    if (!target.weights)
      target.weights = std::make_unique<ModelWeights>(RandomWeights(target.config, 1));
    benches.push_back(
        std::make_unique<PresetBench>(target.name, target.config, *target.weights, options));
  }

  std::map<std::string, double> prefill;
  for (auto& bench : benches) {
    std::fprintf(stderr, "prefill %s: %lld tokens in chunks of %lld... ", bench->name().c_str(),
                 static_cast<long long>(options.prefill_tokens),
                 static_cast<long long>(options.chunk));
    prefill[bench->name()] = bench->Prefill();
    std::fprintf(stderr, "%.0f tokens/s\n", prefill[bench->name()]);
  }

  std::vector<Measurement> results;
  for (int64_t context : options.contexts) {
    std::vector<int64_t> batches = options.batches;
    for (size_t bi = 0; bi < (budget ? 1 : batches.size()); ++bi) {
      // Interleave presets at each point so machine noise hits them alike.
      for (auto& bench : benches) {
        int64_t batch = budget ? 0 : batches[bi];
        if (budget) {
          batch = BudgetBatch(bench->runner().plan(), bench->runner().config(), budget, context,
                              options);
        }
        std::fprintf(stderr, "decode %s: context %lld, batch %lld... ", bench->name().c_str(),
                     static_cast<long long>(context), static_cast<long long>(batch));
        Measurement m = bench->Decode(context, batch, probe);
        m.prefill_tokens_per_s = prefill[bench->name()];
        m.prefill_tokens = options.prefill_tokens;
        std::fprintf(stderr, "%.1f tokens/s, %.0f%% of DRAM read (%.1f GB/s)\n",
                     m.decode_tokens_per_s, 100 * m.dram_fraction, m.dram_bandwidth / 1e9);
        results.push_back(m);
      }
    }
  }

  // Table, with ratios against the first preset at the same context and batch index.
  const std::vector<double>& passes = probe.all();
  std::printf(
      "\nDecode over synthetic KV caches (blocks allocated as after a real prefill); DRAM read "
      "%.1f-%.1f GB/s over %zu passes (median %.1f); weights %s, KV %s, blocks of %lld tokens\n\n",
      *std::min_element(passes.begin(), passes.end()) / 1e9,
      *std::max_element(passes.begin(), passes.end()) / 1e9, passes.size(), Median(passes) / 1e9,
      options.weights_dtype.c_str(), options.kv_dtype.c_str(),
      static_cast<long long>(options.block_tokens));
  std::printf("%-22s %7s %6s %10s %11s %10s %8s %10s %9s %6s %10s %8s\n", "preset", "context",
              "batch", "KV alloc", "prefill t/s", "decode t/s", "ms/step", "bytes/step", "GB/s",
              "DRAM", "DRAM bound", "vs first");
  // Results come in groups of one measurement per preset (same context, same batch or budget).
  const size_t group = benches.size();
  for (size_t i = 0; i < results.size(); ++i) {
    const Measurement& m = results[i];
    const Measurement& first = results[i - i % group];
    std::printf("%-22s %7lld %6lld %10s %11.0f %10.1f %8.3f %10s %9.1f %5.0f%% %10.1f %7.2fx\n",
                m.preset.c_str(), static_cast<long long>(m.context),
                static_cast<long long>(m.batch), FormatBytes(m.kv_bytes).c_str(),
                m.prefill_tokens_per_s, m.decode_tokens_per_s, 1e3 * m.decode_step_s,
                FormatBytes(m.decode_bytes_per_step).c_str(), m.decode_bandwidth / 1e9,
                100 * m.dram_fraction,
                static_cast<double>(m.batch) * m.dram_bandwidth /
                    static_cast<double>(m.decode_bytes_per_step),
                m.decode_tokens_per_s / first.decode_tokens_per_s);
  }
  std::printf(
      "\nprefill t/s: one real prefill of %lld tokens in chunks of %lld, measured once per "
      "preset and repeated\non each of its rows (not measured at the row's context or batch). "
      "ms/step: the best time of one\ndecode step over the timings; decode t/s = batch / that "
      "time. GB/s = bytes a decode step must move /\nthat time. DRAM = median over the timings "
      "of that rate as a share of the DRAM read bandwidth\nmeasured just before each; DRAM bound "
      "= tokens/s if every decode step moved its bytes at the median\nof those DRAM "
      "measurements.\n",
      static_cast<long long>(options.prefill_tokens), static_cast<long long>(options.chunk));

  if (!options.json_path.empty()) {
    Json out = Json::array();
    for (const Measurement& m : results) out.push_back(MeasurementJson(m));
    std::ofstream file(options.json_path);
    file << out.dump(2) << "\n";
    if (!file) Fail(options.json_path, ": cannot write");
    std::fprintf(stderr, "wrote %s\n", options.json_path.c_str());
  }
  if (!options.plot_path.empty()) {
    plot::WriteLineChartsPng(BenchCharts(results, options.kv_budget), options.plot_path);
    std::fprintf(stderr, "wrote %s\n", options.plot_path.c_str());
  }
}

}  // namespace

void RegisterBenchCommand(CLI::App& app) {
  CLI::App* command = app.add_subcommand("bench",
                                         "decode/prefill throughput, KV memory and bytes moved per "
                                         "step, across presets, contexts and batches");
  auto options = std::make_shared<BenchOptions>();
  auto source = std::make_shared<ModelSource>(BenchDefaultShape());
  source->Register(*command);
  command->add_option("--model", options->model,
                      "benchmark a model directory instead of random-weight presets");
  command
      ->add_option("--compare", options->compare,
                   "presets to run side by side, interleaved; ratios against the first")
      ->delimiter(',');
  command->add_option("--context", options->contexts, "context lengths, comma-separated")
      ->delimiter(',')
      ->capture_default_str();
  command->add_option("--batch", options->batches, "batch sizes, comma-separated")
      ->delimiter(',')
      ->capture_default_str();
  command->add_option(
      "--kv-budget", options->kv_budget,
      "run each preset at the largest batch this KV memory admits (e.g. 4GiB), instead of --batch");
  // Bounds as `plan`'s for --block-size and --chunk; the others keep sizes far from overflow.
  command->add_option("--decode-steps", options->decode_steps, "decode steps per timing")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  command->add_option("--repeats", options->repeats, "timings per point; the best is reported")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  command
      ->add_option("--prefill-tokens", options->prefill_tokens,
                   "tokens of the prefill measurement (one per preset, shown on each of its rows)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40))
      ->capture_default_str();
  command->add_option("--block-size", options->block_tokens, "KV block size in tokens")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  command->add_option("--chunk", options->chunk, "prefill chunk in tokens")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30))
      ->capture_default_str();
  command->add_option("--weights-dtype", options->weights_dtype)
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  command->add_option("--kv-dtype", options->kv_dtype)
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  command->add_flag("--batch-invariant", options->batch_invariant, kBatchInvariantHelp);
  command->add_option("--json", options->json_path,
                      "write one JSON object per preset x context x batch to this file");
  command
      ->add_option("--plot", options->plot_path,
                   "write a PNG of decode tokens/s, KV bytes and bytes read per step against "
                   "context, one line per preset x batch (FILE must end in .png)")
      ->type_name("FILE");
  command->callback([options, source]() { RunBench(*source, *options); });
}

}  // namespace mixattn::cli
