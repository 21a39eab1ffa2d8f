#!/usr/bin/env bash
# The MixAttention paper's comparison at the scale of one 2-core CPU (issue 6, docs/results.md):
# every preset of PRESETS.md trained with the same shape, data, token budget, seed and schedule,
# then evaluated with `mixattn eval` and benchmarked with `mixattn bench`.
#
# Scale: 256-token sequences and a sliding window of 8 tokens, the paper's window-to-context
# ratio (1024 of 32K) at this machine's scale. all-sliding's receptive field is then
# 12 x 7 = 84 tokens, so facts at needle depths 0-0.5 of a 256-token context are out of its reach.
# (Sessions 3-6 tried 512-token sequences with a window of 32: a 12-layer model of this width did
# not learn to copy at 512 tokens within the budget; docs/results.md.)
#
# Training has two stages, the same for every preset:
#   1. copying: 12,000 steps x 8 sequences of 128 tokens (12.3M tokens) of `periodic` and
#      `random_repeat` sequences (random spans over the whole vocabulary), so that the model
#      learns to copy from its context (the induction-head phase change; docs/results.md,
#      sessions 8-9: it needs millions of tokens, a peak lr of 1e-3 rather than 3e-3, and no
#      gradient clipping at 1.0, which delays it; spans from only the 64 most frequent ids
#      taught copying of those ids alone, which stage 2 did not extend to the rest);
#   2. the mix: 1200 steps x 16 x 256 of the corpus plus the synthetic long-range sequences at the
#      same length, starting from stage 1's weights (`mixattn train --init-from`).
# Both stages: AdamW (0.9, 0.95), weight decay 0.1, peak lr 1e-3, cosine to 1e-4, no clipping,
# f32 matmuls (`--matmul auto` would pick bf16 on a CPU with AVX512_BF16 and f32 elsewhere, and
# the layouts may be trained on different machines of this kind).
#
#   experiments/paper-comparison.sh [data|train|eval|keep|bench|report|all]   (default: all)
#
# Every stage is safe to interrupt and run again: data is made once, each training run resumes
# from its latest checkpoint (stage 1 takes about 35 minutes and stage 2 about 20 on an idle
# 2-core machine, so all nine layouts take two or three sessions), and
# evaluations and benchmarks whose JSON exists are skipped. Outputs go to out/experiment-v4/
# (models, checkpoints, eval JSON and heat maps, bench JSON). out/ does not survive a new checkout,
# so `keep` (also run after each evaluation) copies what the report needs into docs/results/runs/,
# which is committed: eval.json, config.json, the stage-2 training log and every 5th step of the
# stage-1 log. A preset with kept results is not trained or evaluated again. `report` writes the
# figures and tables that docs/results.md shows into docs/results/ from docs/results/runs/.
#
# Environment: BUILD (default build), PRESETS (default: all nine), THREADS (OMP_NUM_THREADS,
# default 2), JOBS (default 1). With JOBS=N, `train` and `all` run N workers side by side, one
# thread each, every worker training and then evaluating its share of the presets (its output in
# out/experiment-v4/worker-K.log): on this 2-core machine one thread trains this shape at about
# 6,700 tokens/s and two threads at 5,500, so two one-thread workers do about 2.4x the work.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
[ -x "$build/mixattn" ] || scripts/build.sh "$build"
mixattn=$build/mixattn
export OMP_NUM_THREADS=${THREADS:-2}
# Training and evaluation share the machine with other work: threads that spin between parallel
# regions would starve it. The bench stage unsets this (README, engine figures).
export OMP_WAIT_POLICY=passive

out=out/experiment-v4  # v4: the session-9 recipe (earlier layouts of out/ differ)
data=$out/data
copy_data=$out/data-copy
kept=docs/results/runs
presets=${PRESETS:-standard all-sliding ma-pairs ma ma-offset ma-endslide characterai ma-offset-slideshare ma-pairs-slideshare}

# 12 layers so that the slideshare variants differ from their base layouts (at 8 layers they are
# identical); window 8 so that the all-sliding model's receptive field, 12 x 7 = 84 tokens, is
# shorter than most evaluation distances (up to about 220 tokens at length 256, depth 0).
shape=(--layers 12 --hidden 128 --heads 2 --kv-heads 1 --head-dim 64 --ffn 384 --window 8)
# Stage 1: 12,000 x 8 x 128 = 12.3M tokens of periodic and random_repeat sequences only.
# o_proj and down_proj start near zero (--init-residual-scale 0.01), so that at first every layer
# adds almost nothing to the residual stream: drawn like the other matrices, the 12-layer model
# had not left the plateau by step 10,000; near zero it did at about step 5,000 (session 10).
copy_schedule=(--steps 12000 --batch 8 --seq 128 --long-range-mix 1.0 --lr 1e-3 --warmup 100
  --clip 0 --matmul f32 --seed 1 --eval-every 2000 --eval-batches 4 --save-every 250 --keep 2
  --init-residual-scale 0.01)
# Stage 2: 1200 x 16 x 256 = 4.9M tokens per model; half of the sequences are synthetic: pass
# keys, key/value facts, and spans repeated later (of filler text, and of random tokens), so the
# copying learned in stage 1 keeps being used.
schedule=(--steps 1200 --batch 16 --seq 256 --lr 1e-3 --warmup 30 --clip 0 --matmul f32
  --seed 1 --eval-every 100 --eval-batches 8 --save-every 20 --keep 2)
lengths=192,224,256  # vt needs 170 tokens, niah_multikey 133
samples=40

stage_data() {
  scripts/fetch-corpus.sh data/corpus
  if [ ! -f "$data/data.json" ]; then
    "$mixattn" data --in data/corpus/kjv.txt data/corpus/brown.txt data/corpus/sotu.txt \
      --out "$data" --tokenizer models/default/tokenizer.model --val-fraction 0.01 --seed 1 \
      --long-range-ratio 1.0 --long-range-length 257 --long-range-min-distance 16 \
      --long-range-repeat-spans 16 --long-range-kinds pass_key,key_value,repeat,random_repeat
  fi
  if [ ! -f "$copy_data/data.json" ]; then
    "$mixattn" data --in data/corpus/kjv.txt data/corpus/brown.txt data/corpus/sotu.txt \
      --out "$copy_data" --tokenizer models/default/tokenizer.model --val-fraction 0.01 --seed 1 \
      --long-range-ratio 1.0 --long-range-length 129 --long-range-min-distance 8 \
      --long-range-repeat-spans 8 --long-range-kinds periodic,random_repeat
  fi
}

# Trains one stage into $1 (a run directory) with the remaining arguments, resuming it if it has
# checkpoints; $1/done marks a finished stage.
train_stage() {
  local run=$1
  shift
  [ -f "$run/done" ] && return
  local train=("$mixattn" train --out "$run" "$@")
  if ls "$run/checkpoints"/checkpoint-*.safetensors > /dev/null 2>&1; then train+=(--resume); fi
  "${train[@]}"
  touch "$run/done"
}

stage_train() {
  for preset in $presets; do
    local copy_run=$out/copy/$preset run=$out/$preset
    if [ -f "$kept/$preset/eval.json" ]; then
      echo "train: $preset already trained and evaluated ($kept/$preset)"
      continue
    fi
    if [ -f "$run/done" ]; then
      echo "train: $preset already trained"
      continue
    fi
    echo "train: $preset, stage 1 (copying)"
    train_stage "$copy_run" --preset "$preset" "${shape[@]}" --data "$copy_data" \
      "${copy_schedule[@]}"
    local stage1
    stage1=$(ls "$copy_run"/checkpoints/checkpoint-*.safetensors | tail -n 1)
    echo "train: $preset, stage 2 (the mix) from $stage1"
    train_stage "$run" --preset "$preset" "${shape[@]}" --data "$data" --init-from "$stage1" \
      "${schedule[@]}"
  done
}

stage_eval() {
  for preset in $presets; do
    local run=$out/$preset
    [ -f "$kept/$preset/eval.json" ] && { echo "eval: $preset done ($kept/$preset)"; continue; }
    [ -f "$run/done" ] || { echo "eval: $preset is not trained yet, skipped"; continue; }
    [ -f "$run/eval.json" ] && { echo "eval: $preset done"; continue; }
    echo "eval: $preset"
    "$mixattn" eval --model "$run" --data "$data" --lengths $lengths --samples $samples \
      --ppl-windows 32 --seed 1 --json "$run/eval.json.tmp" --plot "$run/eval.png"
    mv "$run/eval.json.tmp" "$run/eval.json"
  done
  stage_keep
}

# Copies each evaluated preset's results from out/ into $kept (committed to the repository).
stage_keep() {
  for preset in $presets; do
    local run=$out/$preset
    [ -f "$run/eval.json" ] || continue
    mkdir -p "$kept/$preset" "$kept/copy/$preset"
    cp "$run/eval.json" "$run/config.json" "$run/train.jsonl" "$kept/$preset/"
    [ -f "$run/eval.png" ] && cp "$run/eval.png" "$kept/$preset/"
    # Stage 1 logs 12,000 steps: every 5th step and every validation line are enough to plot it.
    awk '/val_loss/ || NR % 5 == 1' "$out/copy/$preset/train.jsonl" > "$kept/copy/$preset/train.jsonl"
    echo "keep: $preset -> $kept/$preset"
  done
  if [ -f "$out/bench.json" ]; then mkdir -p "$kept" && cp "$out/bench.json" "$kept/"; fi
}

stage_bench() {
  # Decode speed of each layout at the experiment's shape, side by side in one process.
  [ -f "$kept/bench.json" ] && { echo "bench: done ($kept/bench.json)"; return; }
  local list
  list=$(echo $presets | tr ' ' ',')
  env -u OMP_WAIT_POLICY "$mixattn" bench --compare "$list" "${shape[@]}" --vocab 4096 \
    --context 256,4096 --batch 8 \
    --json "$out/bench.json.tmp"
  mv "$out/bench.json.tmp" "$out/bench.json"
  mkdir -p "$kept"
  cp "$out/bench.json" "$kept/"
}

stage_report() {
  /usr/bin/python3 experiments/report.py --experiment "$kept" --out docs/results
}

# JOBS workers, each running `train` then `eval` for every JOBS-th preset with one thread.
stage_parallel() {
  local jobs=$1 k=0 pids=() failed=0
  local -a shares
  for preset in $presets; do
    shares[k % jobs]+="$preset "
    k=$((k + 1))
  done
  mkdir -p "$out"
  for ((k = 0; k < jobs; k++)); do
    [ -n "${shares[k]:-}" ] || continue
    echo "worker $k: ${shares[k]}(log: $out/worker-$k.log)"
    (
      for preset in ${shares[k]}; do
        PRESETS=$preset THREADS=1 JOBS=1 "$0" train && PRESETS=$preset THREADS=1 JOBS=1 "$0" eval
      done
    ) > "$out/worker-$k.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  [ "$failed" = 0 ] || { echo "a worker failed: see $out/worker-*.log" >&2; return 1; }
}

# stage_train, or with JOBS > 1 the same presets split over JOBS one-thread workers.
train_all() {
  if [ "$jobs" -gt 1 ]; then stage_parallel "$jobs"; else stage_train; fi
}

jobs=${JOBS:-1}
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "JOBS must be a positive integer, not '$jobs'" >&2; exit 2; }

case "${1:-all}" in
  data) stage_data ;;
  train) stage_data && train_all ;;
  eval) stage_eval ;;
  keep) stage_keep ;;
  bench) stage_bench ;;
  report) stage_report ;;
  all) stage_data && train_all && stage_eval && stage_bench && stage_report ;;
  *) echo "usage: $0 [data|train|eval|keep|bench|report|all]" >&2; exit 2 ;;
esac
