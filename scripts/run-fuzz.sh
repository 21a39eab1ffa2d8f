#!/usr/bin/env bash
# Builds the libFuzzer targets with clang++ (ASan + UBSan) and fuzzes each for SECONDS seconds.
#
# Usage: scripts/run-fuzz.sh [SECONDS]      (default 20 per target)
#
# Build dir: build-fuzz/. Corpora grow in build-fuzz/corpus/<target>/ across runs (seeds are
# rewritten each run, so the script is idempotent); crash reproducers land in
# build-fuzz/findings/<target>/. Exits non-zero if any target finds a crash, leak, sanitizer report
# or uncaught exception. Reproduce one with: build-fuzz/fuzz/<target> <reproducer-file>
set -euo pipefail

seconds="${1:-20}"
if ! [[ "${seconds}" =~ ^[0-9]+$ ]] || ((seconds < 1)); then
  echo "usage: $0 [SECONDS]  (SECONDS: a positive integer, per target; got '${seconds}')" >&2
  exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${root}/build-fuzz"
cxx="${CXX_FUZZ:-clang++}"
if ! command -v "${cxx}" >/dev/null; then
  echo "error: ${cxx} not found; libFuzzer needs clang (set CXX_FUZZ to another clang++)" >&2
  exit 2
fi

mkdir -p "${build}"
cmake -S "${root}" -B "${build}" -DCMAKE_CXX_COMPILER="${cxx}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMIXATTN_FUZZ=ON -DMIXATTN_TESTS=OFF >"${build}/configure.log" 2>&1 ||
  { cat "${build}/configure.log" >&2; exit 1; }
cmake --build "${build}" -j"$(nproc)" --target fuzz_safetensors fuzz_config make_fuzz_seeds

# Seeds: valid files from the real writer, plus a hand-written valid config.json.
mkdir -p "${build}/corpus/fuzz_safetensors" "${build}/corpus/fuzz_config"
"${build}/fuzz/make_fuzz_seeds" "${build}/corpus/fuzz_safetensors"
cat >"${build}/corpus/fuzz_config/seed_config.json" <<'JSON'
{
  "hidden_size": 64,
  "num_hidden_layers": 4,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "head_dim": 16,
  "intermediate_size": 128,
  "vocab_size": 256,
  "rope_theta": 10000.0,
  "rms_norm_eps": 1e-05,
  "max_position_embeddings": 512,
  "tie_word_embeddings": true,
  "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
  "sliding_window": 64,
  "kv_source_layers": [0, 1, 1, 0]
}
JSON

status=0
for target in fuzz_safetensors fuzz_config; do
  findings="${build}/findings/${target}"
  mkdir -p "${findings}"
  log="${build}/${target}.log"
  echo "== ${target}: ${seconds} s (log: ${log})"
  # -max_len: headers are tiny; 64 KiB still allows large tensors tables and buffers.
  if "${build}/fuzz/${target}" "${build}/corpus/${target}" -max_total_time="${seconds}" \
    -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="${findings}/" >"${log}" 2>&1; then
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "${log}" || true
  else
    echo "!! ${target} found a problem; reproducers in ${findings}/:" >&2
    ls "${findings}" >&2 || true
    tail -n 40 "${log}" >&2
    status=1
  fi
done
exit "${status}"
