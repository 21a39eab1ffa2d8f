// Benchmarks of the dense kernels in src/ops (Google Benchmark; prints numbers, asserts nothing).
//
// Legend: M = rows, N = out_features, K = in_features.
//
// Build from the repository root after building mixattn_lib in build-ops:
//   g++ -O2 -std=c++20 -fopenmp -Isrc bench/ops_bench.cc build-ops/libmixattn_lib.a
//       -lbenchmark -lpthread -ldnnl -o build-ops/ops_bench      (one line)
//   ./build-ops/ops_bench --benchmark_format=json   (or console; add --benchmark_filter=Linear)
//
// Counters: FLOP/s = 2 M N K per call; weight_B/s = bytes of weights per call, the figure that
// matters for decode (M = 1), which is bound by memory bandwidth. A 512 x 512 bf16 matrix is
// 512 KiB and 1536 x 512 is 1.5 MiB, so they sit in L2/L3 between calls: these rates are cache
// rates, above the DRAM read roofline (~80 GB/s on 2 cores) that a full model's weights meet.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/random.h"
#include "ops/elementwise.h"
#include "ops/linear.h"

namespace mixattn::ops {
namespace {

std::vector<float> RandomVector(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> out(static_cast<size_t>(n));
  for (float& x : out) x = static_cast<float>(rng.Normal());
  return out;
}

void SetLinearCounters(benchmark::State& state, int64_t rows, int64_t n, int64_t k,
                       int64_t weight_bytes) {
  using benchmark::Counter;
  state.counters["FLOP/s"] = Counter(2.0 * static_cast<double>(rows * n * k),
                                     Counter::kIsIterationInvariantRate, Counter::kIs1000);
  state.counters["weight_B/s"] = Counter(static_cast<double>(weight_bytes),
                                         Counter::kIsIterationInvariantRate, Counter::kIs1000);
}

// Args: dtype (0 = f32, 1 = bf16), M, N, K.
void BM_Linear(benchmark::State& state) {
  const DType dtype = state.range(0) == 0 ? DType::kF32 : DType::kBF16;
  const int64_t rows = state.range(1), n = state.range(2), k = state.range(3);
  const std::vector<float> w = RandomVector(n * k, 1), x = RandomVector(rows * k, 2);
  std::vector<float> y(static_cast<size_t>(rows * n));
  const Linear linear(w.data(), n, k, dtype);
  linear.Forward(x.data(), rows, y.data());  // creates the primitive and scratch for this M
  for (auto _ : state) {
    linear.Forward(x.data(), rows, y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(std::string(DTypeName(dtype)) + " " + linear.KernelName(rows));
  SetLinearCounters(state, rows, n, k, linear.weight_bytes());
}

// Baseline: oneDNN's f32 matmul alone with weights in plain [N, K] (`ba`) layout, or `any` (the
// layout oneDNN prefers, reordered once). Args: tag (0 = ba, 1 = any), M, N, K.
void BM_OneDnnF32(benchmark::State& state) {
  using dims = dnnl::memory::dims;
  using tag = dnnl::memory::format_tag;
  const auto f32 = dnnl::memory::data_type::f32;
  const int64_t rows = state.range(1), n = state.range(2), k = state.range(3);
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  const dnnl::memory::desc src_desc(dims{rows, k}, f32, tag::ab);
  const dnnl::memory::desc plain_desc(dims{k, n}, f32, tag::ba);
  const dnnl::memory::desc dst_desc(dims{rows, n}, f32, tag::ab);
  const dnnl::matmul::primitive_desc pd(
      dnnl::matmul::desc(
          src_desc,
          state.range(0) == 0 ? plain_desc : dnnl::memory::desc(dims{k, n}, f32, tag::any),
          dst_desc),
      engine);
  std::vector<float> w = RandomVector(n * k, 1), x = RandomVector(rows * k, 2);
  std::vector<float> y(static_cast<size_t>(rows * n));
  dnnl::memory plain(plain_desc, engine, w.data()), weights(pd.weights_desc(), engine);
  dnnl::reorder(plain, weights).execute(stream, plain, weights);
  dnnl::memory src(src_desc, engine, x.data()), dst(dst_desc, engine, y.data());
  const dnnl::matmul matmul(pd);
  const std::unordered_map<int, dnnl::memory> args = {
      {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}};
  for (auto _ : state) {
    matmul.execute(stream, args);
    stream.wait();
    benchmark::ClobberMemory();
  }
  state.SetLabel(std::string(state.range(0) == 0 ? "ba " : "any ") + pd.impl_info_str());
  SetLinearCounters(state, rows, n, k, n * k * 4);
}

void LinearShapes(benchmark::internal::Benchmark* bench) {
  for (int64_t type : {0, 1}) {
    for (int64_t n : {512, 1536}) {
      for (int64_t rows : {1, 4, 64, 512}) bench->Args({type, rows, n, 512});
    }
  }
}

void OneDnnShapes(benchmark::internal::Benchmark* bench) {
  for (int64_t layout : {0, 1}) {
    for (int64_t n : {512, 1536}) {
      for (int64_t rows : {1, 4, 64, 512}) bench->Args({layout, rows, n, 512});
    }
  }
}

BENCHMARK(BM_Linear)->Apply(LinearShapes)->ArgNames({"bf16", "M", "N", "K"})->UseRealTime();
BENCHMARK(BM_OneDnnF32)->Apply(OneDnnShapes)->ArgNames({"any", "M", "N", "K"})->UseRealTime();

// Cold weights: the bench model's projections (12 layers of q 512x512, k and v 128x512 each,
// o 512x512, gate and up 1536x512, down 512x1536; about 72 MB in bf16, more than the L3 holds) run
// in order, as one decode step does, so every weight comes from DRAM. weight_B/s here is the
// figure to hold against the DRAM read bandwidth. Args: M (rows of x), simd (the highest
// instruction set the kernels may use: 1 AVX2, 2 AVX-512; runs above what the CPU has are skipped).
void BM_LinearColdStack(benchmark::State& state) {
  const int64_t rows = state.range(0);
  const auto level = static_cast<SimdLevel>(state.range(1));
  if (level > DetectedSimdLevel()) {
    state.SkipWithError("instruction set not available on this CPU");
    return;
  }
  SetSimdLevelCap(level);
  constexpr int64_t kLayers = 12, kWidth = 512, kKv = 128, kFfn = 1536;
  const std::vector<float> w = RandomVector(kFfn * kWidth, 1);
  const std::vector<float> x = RandomVector(rows * kFfn, 2);
  std::vector<float> y(static_cast<size_t>(rows * kFfn));
  std::vector<Linear> stack;
  for (int64_t layer = 0; layer < kLayers; ++layer) {
    for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{{kWidth, kWidth},
                                                                       {kKv, kWidth},
                                                                       {kKv, kWidth},
                                                                       {kWidth, kWidth},
                                                                       {kFfn, kWidth},
                                                                       {kFfn, kWidth},
                                                                       {kWidth, kFfn}}) {
      stack.emplace_back(w.data(), n, k, DType::kBF16);
    }
  }
  int64_t bytes = 0;
  for (const Linear& linear : stack) {
    bytes += linear.weight_bytes();
    linear.Forward(x.data(), rows, y.data());
  }
  for (auto _ : state) {
    for (const Linear& linear : stack) linear.Forward(x.data(), rows, y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(stack.front().KernelName(rows));
  state.counters["weight_B/s"] =
      benchmark::Counter(static_cast<double>(bytes), benchmark::Counter::kIsIterationInvariantRate,
                         benchmark::Counter::kIs1000);
  SetSimdLevelCap(SimdLevel::kAvx512);  // no cap
}
BENCHMARK(BM_LinearColdStack)
    ->ArgNames({"M", "simd"})
    ->ArgsProduct({{1, 4, 8},
                   {static_cast<int64_t>(SimdLevel::kAvx2),
                    static_cast<int64_t>(SimdLevel::kAvx512)}})
    ->UseRealTime();

// Elementwise kernels at a prefill chunk of 64 tokens, model width 512, FFN 1536, 8 x 64 heads.
void SetBytes(benchmark::State& state, int64_t bytes) {
  state.counters["B/s"] =
      benchmark::Counter(static_cast<double>(bytes), benchmark::Counter::kIsIterationInvariantRate,
                         benchmark::Counter::kIs1000);
}

void BM_RmsNorm(benchmark::State& state) {
  const int64_t rows = state.range(0), width = state.range(1);
  const std::vector<float> x = RandomVector(rows * width, 1), weight = RandomVector(width, 2);
  std::vector<float> out(x.size());
  for (auto _ : state) {
    RmsNorm(x.data(), weight.data(), rows, width, 1e-5f, out.data());
    benchmark::ClobberMemory();
  }
  SetBytes(state, 2 * rows * width * 4);
}
BENCHMARK(BM_RmsNorm)->Args({1, 512})->Args({64, 512})->UseRealTime();

void BM_SwiGlu(benchmark::State& state) {
  const int64_t count = state.range(0);
  const std::vector<float> gate = RandomVector(count, 1), up = RandomVector(count, 2);
  std::vector<float> out(gate.size());
  for (auto _ : state) {
    SwiGlu(gate.data(), up.data(), count, out.data());
    benchmark::ClobberMemory();
  }
  SetBytes(state, 3 * count * 4);
}
BENCHMARK(BM_SwiGlu)->Arg(1536)->Arg(64 * 1536)->UseRealTime();

void BM_ApplyRope(benchmark::State& state) {
  const int64_t rows = state.range(0), heads = 8, head_dim = 64;
  const RopeTable table(4096, head_dim, 10000.0);
  std::vector<float> x = RandomVector(rows * heads * head_dim, 1);
  std::vector<int32_t> positions(static_cast<size_t>(rows));
  for (int64_t t = 0; t < rows; ++t)
    positions[static_cast<size_t>(t)] = static_cast<int32_t>(t * 61 % 4096);
  for (auto _ : state) {
    ApplyRope(x.data(), positions.data(), rows, heads, head_dim, table);
    benchmark::ClobberMemory();
  }
  SetBytes(state, 2 * rows * heads * head_dim * 4);
}
BENCHMARK(BM_ApplyRope)->Arg(1)->Arg(64)->UseRealTime();

void BM_StoreAsBf16(benchmark::State& state) {
  const int64_t count = state.range(0);
  const std::vector<float> src = RandomVector(count, 1);
  std::vector<std::byte> dst(static_cast<size_t>(2 * count));
  for (auto _ : state) {
    StoreAs(src.data(), count, DType::kBF16, dst.data());
    benchmark::ClobberMemory();
  }
  SetBytes(state, 6 * count);
}
BENCHMARK(BM_StoreAsBf16)->Arg(64 * 512)->UseRealTime();

}  // namespace
}  // namespace mixattn::ops

BENCHMARK_MAIN();
