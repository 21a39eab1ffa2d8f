#!/usr/bin/env python3
"""Training throughput: mixattn's trainer against PyTorch on the same model and batch, in one run.

  /usr/bin/python3 bench/train_vs_pytorch.py --mixattn build/mixattn --data DIR \
      [--presets standard,ma-pairs,...] [--seq 512] [--batch 8] [--steps 4] [--threads 2] \
      [--json FILE]

For each preset, in turn: `mixattn train` runs --steps + 1 optimizer steps (the first is not
timed: it creates the oneDNN primitives), then PyTorch trains the same model (the config.json
mixattn wrote, the same batch shape, AdamW) in f32 and with bf16 autocast, also timing all but
the first step. Rates are tokens per second of forward + backward + optimizer step. Model FLOP/s
count 6 per weight per token plus the attention of the keys inside each layer's window
(TrainingModel::TrainingFlops), as a fraction of the matmul peak measured in the same run (a
2048^3 torch.matmul in f32 and in bf16). The machines are shared, so read the ratios, which are
measured side by side, rather than the absolute figures.

The PyTorch model is the plain way to write this architecture in PyTorch 1.13 (no
scaled_dot_product_attention before 2.0): batched [B, heads, T, D] attention with an explicit
causal / sliding mask, GQA by repeating KV heads, readers taking their owner's rotated K/V.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

REFERENCE_SHAPE = ["--layers", "8", "--hidden", "256", "--heads", "4", "--kv-heads", "1",
                   "--head-dim", "64", "--ffn", "768", "--window", "128"]


class TorchModel(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        H, NH, KVH, D, F, V = (c["hidden_size"], c["num_attention_heads"],
                               c["num_key_value_heads"], c["head_dim"], c["intermediate_size"],
                               c["vocab_size"])
        lin = lambda i, o: torch.nn.Linear(i, o, bias=False)  # noqa: E731
        self.embed = torch.nn.Embedding(V, H)
        self.layers = torch.nn.ModuleList()
        for i in range(c["num_hidden_layers"]):
            layer = torch.nn.Module()
            layer.norm1 = torch.nn.Parameter(torch.ones(H))
            layer.norm2 = torch.nn.Parameter(torch.ones(H))
            layer.q, layer.o = lin(H, NH * D), lin(NH * D, H)
            if c["kv_source_layers"][i] == i:
                layer.k, layer.v = lin(H, KVH * D), lin(H, KVH * D)
            layer.gate, layer.up, layer.down = lin(H, F), lin(H, F), lin(F, H)
            self.layers.append(layer)
        self.norm = torch.nn.Parameter(torch.ones(H))
        self.head = None if c.get("tie_word_embeddings", True) else lin(H, V)

    @staticmethod
    def rms(x, w, eps):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def forward(self, tokens):
        c = self.c
        B, T = tokens.shape
        NH, KVH, D = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        pos = torch.arange(T, dtype=torch.float32)
        inv = c.get("rope_theta", 10000.0) ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)
        ang = torch.outer(pos, inv)
        cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

        def rope(x):  # [B, h, T, D], rotate-half
            x1, x2 = x[..., : D // 2], x[..., D // 2:]
            return x * cos + torch.cat([-x2, x1], -1) * sin

        idx = torch.arange(T)
        masks = {}
        x = self.embed(tokens)
        kv = {}
        eps = c.get("rms_norm_eps", 1e-5)
        for i, layer in enumerate(self.layers):
            h = self.rms(x, layer.norm1, eps)
            q = rope(layer.q(h).view(B, T, NH, D).transpose(1, 2))
            src = c["kv_source_layers"][i]
            if src == i:
                k = rope(layer.k(h).view(B, T, KVH, D).transpose(1, 2))
                v = layer.v(h).view(B, T, KVH, D).transpose(1, 2)
                kv[i] = (k.repeat_interleave(NH // KVH, 1), v.repeat_interleave(NH // KVH, 1))
            k, v = kv[src]
            window = c["sliding_window"][i] if c["layer_types"][i] == "sliding_attention" else 0
            if window not in masks:
                allowed = idx[None, :] <= idx[:, None]
                if window:
                    allowed &= idx[:, None] - idx[None, :] < window
                masks[window] = torch.zeros(T, T).masked_fill(~allowed, float("-inf"))
            s = q @ k.transpose(-1, -2) / math.sqrt(D) + masks[window]
            a = (torch.softmax(s.float(), -1).to(v.dtype) @ v).transpose(1, 2).reshape(B, T, NH * D)
            x = x + layer.o(a)
            h2 = self.rms(x, layer.norm2, eps)
            x = x + layer.down(torch.nn.functional.silu(layer.gate(h2)) * layer.up(h2))
        h = self.rms(x, self.norm, eps)
        return h @ (self.embed.weight if self.head is None else self.head.weight).T


def torch_rate(config, batch, seq, steps, bf16):
    torch.manual_seed(0)
    model = TorchModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    V = config["vocab_size"]
    tokens = torch.randint(0, V, (batch, seq + 1))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, V),
                                                     tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - start)
    return batch * seq * steps / sum(times[1:])


def mixattn_rate(args, preset, work):
    out = os.path.join(work, preset)
    cmd = [args.mixattn, "train", "--preset", preset, *REFERENCE_SHAPE, "--data", args.data,
           "--out", out, "--steps", str(args.steps + 1), "--batch", str(args.batch), "--seq",
           str(args.seq), "--eval-every", "0", "--save-every", "0", "--matmul", args.matmul,
           "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"mixattn train failed for {preset}: {proc.stderr[-800:]}")
    records = [json.loads(l) for l in open(os.path.join(out, "train.jsonl")) if '"loss"' in l]
    timed = records[-1]["elapsed_s"] - records[0]["elapsed_s"]
    config = json.load(open(os.path.join(out, "config.json")))
    return records[0]["tokens"] * (len(records) - 1) / timed, config


def model_flops(config, batch, seq):
    """TrainingModel::TrainingFlops, the same count in Python."""
    H, F, V = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    NH, KVH, D = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    weights, attention = V * H, 0.0
    for i, src in enumerate(config["kv_source_layers"]):
        weights += 2 * NH * D * H + 3 * H * F + (2 * KVH * D * H if src == i else 0)
        w = config["sliding_window"][i] if config["layer_types"][i] == "sliding_attention" else 0
        attention += sum(min(p + 1, w) if w else p + 1 for p in range(seq)) * NH
    return 6 * weights * batch * seq + 12 * D * attention * batch


def matmul_peak(dtype):
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    a @ b
    start, reps = time.perf_counter(), 5
    for _ in range(reps):
        a @ b
    return 2 * 2048 ** 3 * reps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mixattn", required=True)
    parser.add_argument("--data", required=True, help="a `mixattn data` directory")
    parser.add_argument("--presets", default="standard,ma,ma-offset,ma-pairs,all-sliding")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--matmul", default="auto", choices=["auto", "f32", "bf16"])
    parser.add_argument("--torch-bf16", default="all", choices=["all", "first", "none"],
                        help="which presets also time PyTorch with bf16 autocast: on a CPU "
                        "without native bf16 (AVX2 only) it is ~30x slower than f32 and one step "
                        "takes minutes, so `first` times it for the first preset only")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    peak_f32, peak_bf16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    print(f"matmul peak (torch, 2048^3, {args.threads} threads): f32 {peak_f32 / 1e9:.0f} "
          f"GFLOP/s, bf16 {peak_bf16 / 1e9:.0f} GFLOP/s")
    rows = []
    work = tempfile.mkdtemp(prefix="mixattn-train-bench-")
    try:
        for index, preset in enumerate(args.presets.split(",")):
            ours, config = mixattn_rate(args, preset, work)
            t32 = torch_rate(config, args.batch, args.seq, args.steps, bf16=False)
            time_bf16 = args.torch_bf16 == "all" or (args.torch_bf16 == "first" and index == 0)
            t16 = torch_rate(config, args.batch, args.seq, args.steps, bf16=True) if time_bf16 \
                else None
            flops = model_flops(config, args.batch, args.seq) / (args.batch * args.seq)
            rows.append({"preset": preset, "seq": args.seq, "batch": args.batch,
                         "mixattn_tokens_per_s": ours, "torch_f32_tokens_per_s": t32,
                         "torch_bf16_tokens_per_s": t16,
                         "ratio_vs_torch_bf16": ours / t16 if t16 else None,
                         "ratio_vs_torch_f32": ours / t32,
                         "mixattn_model_gflops": ours * flops / 1e9,
                         "fraction_of_f32_peak": ours * flops / peak_f32,
                         "fraction_of_bf16_peak": ours * flops / peak_bf16})
            r = rows[-1]
            bf16 = (f"torch bf16 {t16:7.0f} | x{r['ratio_vs_torch_bf16']:.2f} vs bf16, " if t16
                    else "torch bf16 (not timed) | ")
            print(f"{preset:<22} mixattn {ours:7.0f} tok/s | torch f32 {t32:7.0f} | {bf16}"
                  f"x{r['ratio_vs_torch_f32']:.2f} vs f32 | {r['mixattn_model_gflops']:.0f} "
                  f"GFLOP/s = {100 * r['fraction_of_f32_peak']:.0f}% of f32 peak", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"matmul_peak_f32_gflops": peak_f32 / 1e9, "matmul_peak_bf16_gflops": peak_bf16 / 1e9,
              "threads": args.threads, "matmul": args.matmul, "results": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
