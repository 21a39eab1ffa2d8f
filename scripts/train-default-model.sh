#!/usr/bin/env bash
# Reproduces models/default: the default corpus -> token shards -> a training run -> the model
# directory committed in the repo (config.json, model.safetensors in bf16, tokenizer.model,
# val.bin, train.jsonl, loss.png). Safe to interrupt and run again: the training run resumes from its
# latest checkpoint (out/default-run/checkpoints) and continues exactly where it stopped.
#
#   scripts/train-default-model.sh [BUILD_DIR]      (default: build; built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
[ -x "$build/mixattn" ] || scripts/build.sh "$build"
mixattn=$build/mixattn

scripts/fetch-corpus.sh data/corpus
data=out/data-default
if [ ! -f "$data/data.json" ]; then
  "$mixattn" data --in data/corpus/kjv.txt data/corpus/brown.txt data/corpus/sotu.txt \
    --out "$data" --vocab-size 4096 --long-range-ratio 0.1 --long-range-length 513 \
    --long-range-min-distance 256
fi

run=out/default-run
train=("$mixattn" train --preset ma-pairs --data "$data" --out "$run" --steps 600 --batch 8
  --seq 512 --lr 3e-3 --eval-every 50 --eval-batches 6 --save-every 25)
if [ -d "$run/checkpoints" ] && ls "$run/checkpoints"/checkpoint-*.safetensors >/dev/null 2>&1; then
  train+=(--resume)
fi
"${train[@]}"

model=models/default
mkdir -p "$model"
cp "$run/config.json" "$run/model.safetensors" "$run/tokenizer.model" "$run/train.jsonl" "$model/"
# The held-out split travels with the model: `mixattn eval` hides its needles in it.
cp "$data/val.bin" "$model/"
/usr/bin/python3 scripts/plot-loss.py "$run/train.jsonl" "$model/loss.png" \
  --title "models/default: ma-pairs, 7.0M parameters, default corpus"
echo "models/default: $(du -sh "$model" | cut -f1)"
