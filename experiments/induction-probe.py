#!/usr/bin/env python3
"""A textbook small transformer trained on a mixattn token shard: does an induction head form?

  /usr/bin/python3 experiments/induction-probe.py DATA_DIR [--pos learned|rope] [--mlp]
      [--steps 16000] [--batch 8] [--lr 1e-3] [--layers 2]

A control for docs/results.md ("How many tokens copying needs"): the classic 2-layer
attention-only model of the induction-head literature (Olsson et al. 2022), in PyTorch and not
ours: LayerNorm and biases, learned absolute positions (or RoPE with --pos rope), an untied
output layer, PyTorch's default initialisation, AdamW at a constant lr after 100 warm-up steps,
weight decay 0.01, no clipping. It trains on DATA_DIR's train_longrange.bin (sequences of
`mixattn data --long-range-length`, C = length - 1 tokens of context) and prints the mean training
loss every 250 steps; an induction head shows as a sudden drop of the loss (on
out/pilot-a64-129, from about 4.1 to 2.5). One thread, so it can run beside a training run.
"""
import argparse
import math
import time

import numpy as np
import torch

from long_range_shard import read_long_range_sequences



def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="a `mixattn data` directory with train_longrange.bin")
    parser.add_argument("--pos", choices=["learned", "rope"], default="learned")
    parser.add_argument("--mlp", action="store_true", help="add a GELU MLP (4x) to each layer")
    parser.add_argument("--steps", type=int, default=16000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.hidden % args.heads or (args.hidden // args.heads) % 2:
        parser.error("--hidden must split into --heads heads of an even dimension")

    sequences, info = read_long_range_sequences(args.data)
    length = sequences.shape[1]
    vocab = info["tokenizer"]["vocab_size"]
    context = length - 1
    dim = args.hidden // args.heads

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = Probe(vocab, args.hidden, args.heads, context, args.layers, args.pos, args.mlp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    rng = np.random.default_rng(args.seed + 1)
    print(f"{args.layers} layers x {args.hidden} ({args.heads} heads of {dim}), positions "
          f"{args.pos}, {'MLP' if args.mlp else 'attention only'}; {len(sequences)} sequences of "
          f"{length} tokens, batch {args.batch}", flush=True)
    start, losses = time.time(), []
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, step / 100)
        batch = torch.from_numpy(sequences[rng.integers(0, len(sequences), args.batch)])
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab),
                                                 batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 250 == 0:
            print(f"step {step} loss {np.mean(losses):.3f} ({time.time() - start:.0f} s)",
                  flush=True)
            losses = []


class Probe(torch.nn.Module):
    def __init__(self, vocab, hidden, heads, context, layers, pos, mlp):
        super().__init__()
        self.heads, self.dim, self.pos_kind = heads, hidden // heads, pos
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.pos = torch.nn.Embedding(context, hidden) if pos == "learned" else None
        self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(hidden) for _ in range(layers))
        self.qkv = torch.nn.ModuleList(torch.nn.Linear(hidden, 3 * hidden) for _ in range(layers))
        self.o = torch.nn.ModuleList(torch.nn.Linear(hidden, hidden) for _ in range(layers))
        self.mlps = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, 4 * hidden),
                                torch.nn.GELU(), torch.nn.Linear(4 * hidden, hidden))
            for _ in range(layers)) if mlp else None
        self.final_norm = torch.nn.LayerNorm(hidden)
        self.out = torch.nn.Linear(hidden, vocab)
        inv = 10000.0 ** (-torch.arange(0, self.dim, 2).float() / self.dim)
        angles = torch.outer(torch.arange(context).float(), inv)
        self.register_buffer("cos", torch.cat([angles.cos()] * 2, -1))
        self.register_buffer("sin", torch.cat([angles.sin()] * 2, -1))

    def rope(self, x, n):  # rotate-half RoPE on [B, heads, n, dim]
        half = self.dim // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * self.cos[:n] + rotated * self.sin[:n]

    def forward(self, tokens):
        batch, n = tokens.shape
        x = self.embed(tokens)
        if self.pos is not None:
            x = x + self.pos(torch.arange(n))
        future = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
        for i, norm in enumerate(self.norms):
            q, k, v = self.qkv[i](norm(x)).view(batch, n, 3, self.heads, self.dim).permute(
                2, 0, 3, 1, 4)
            if self.pos_kind == "rope":
                q, k = self.rope(q, n), self.rope(k, n)
            scores = (q @ k.transpose(-1, -2) / math.sqrt(self.dim)).masked_fill(future,
                                                                                  float("-inf"))
            y = torch.softmax(scores, -1) @ v
            x = x + self.o[i](y.transpose(1, 2).reshape(batch, n, -1))
            if self.mlps is not None:
                x = x + self.mlps[i](x)
        return self.out(self.final_norm(x))


if __name__ == "__main__":
    main()
