#!/usr/bin/env python3
"""Where each attention head of a mixattn model looks, on random_repeat training sequences.

  /usr/bin/python3 experiments/attention-diagnostics.py MODEL_DIR DATA_DIR [--sequences 16]

DATA_DIR is a `mixattn data` directory whose train_longrange.bin holds random_repeat sequences
(e.g. out/experiment/data-copy). For every layer and head it prints the mean attention on BOS, on
the previous token, on the token itself, the induction score (attention on the position right
after an earlier occurrence of the current token: what an induction head does, Olsson et al.
2022), the attention entropy in nats, and the norms of the residual stream and of the attention
and MLP outputs; then the model's loss on copyable tokens (the next token after an earlier
occurrence of the current one is the token to predict: what copying would get right) and on the
rest. Full causal attention of every layer (the script ignores windows and KV sharing:
use it on `standard` models). docs/results.md quotes its output for the copying pilots.
"""
import argparse
import json
import math
import struct

import numpy as np
import torch

from long_range_shard import read_long_range_sequences



def load_weights(model_dir):
    raw = open(f"{model_dir}/model.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    weights = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        begin, end = spec["data_offsets"]
        buf = raw[8 + n + begin:8 + n + end]
        if spec["dtype"] == "BF16":
            x = (np.frombuffer(buf, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            x = np.frombuffer(buf, np.float32)
        weights[name] = torch.tensor(x.reshape(spec["shape"]).copy())
    return weights


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--sequences", type=int, default=16)
    args = parser.parse_args()
    c = json.load(open(f"{args.model}/config.json"))
    rows, _ = read_long_range_sequences(args.data)
    T = rows.shape[1] - 1
    W = load_weights(args.model)
    seqs = torch.tensor(rows[:args.sequences])[:, :T]
    B = seqs.shape[0]
    NH, KVH, D = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    inv = c["rope_theta"] ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)
    ang = torch.outer(torch.arange(T, dtype=torch.float32), inv)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rope(x):
        return x * cos + torch.cat([-x[..., D // 2:], x[..., :D // 2]], -1) * sin

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c["rms_norm_eps"]) * w

    # induction[b, t, j] = 1 where token j - 1 equals token t (j <= t).
    induction = torch.zeros(B, T, T)
    for b in range(B):
        s = seqs[b].tolist()
        for t in range(T):
            for j in range(1, t + 1):
                induction[b, t, j] = float(s[j - 1] == s[t])
    has_earlier = induction.sum(-1) > 0
    skip = 16  # early queries see few keys; leave them out of the averages
    mask = torch.full((T, T), float("-inf")).triu(1)
    x = W["model.embed_tokens.weight"][seqs]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = rope((h @ W[p + "self_attn.q_proj.weight"].T).view(B, T, NH, D).transpose(1, 2))
        k = rope((h @ W[p + "self_attn.k_proj.weight"].T).view(B, T, KVH, D).transpose(1, 2))
        v = (h @ W[p + "self_attn.v_proj.weight"].T).view(B, T, KVH, D).transpose(1, 2)
        k, v = k.repeat_interleave(NH // KVH, 1), v.repeat_interleave(NH // KVH, 1)
        P = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D) + mask, -1)  # [B, NH, T, T]
        attn = (P @ v).transpose(1, 2).reshape(B, T, NH * D) @ W[p + "self_attn.o_proj.weight"].T
        bos = P[:, :, skip:, 0].mean((0, 2))
        prev = torch.diagonal(P, -1, -2, -1)[:, :, skip - 1:].mean((0, 2))
        self_ = torch.diagonal(P, 0, -2, -1)[:, :, skip:].mean((0, 2))
        ind_mass = (P * induction[:, None]).sum(-1)
        ind = torch.stack([ind_mass[:, n][has_earlier].mean() for n in range(NH)])
        entropy = -(P * torch.log(P + 1e-12)).sum(-1)[:, :, skip:].mean((0, 2))
        y = x + attn
        h2 = rms(y, W[p + "post_attention_layernorm.weight"])
        mlp = (torch.nn.functional.silu(h2 @ W[p + "mlp.gate_proj.weight"].T) *
               (h2 @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
        fmt = lambda t: " ".join(f"{float(v):.2f}" for v in t)  # noqa: E731
        print(f"layer {i:2d}: bos {fmt(bos)} | prev {fmt(prev)} | self {fmt(self_)} | "
              f"induction {fmt(ind)} | entropy {fmt(entropy)} | |x| {x.norm(dim=-1).mean():.1f} "
              f"|attn| {attn.norm(dim=-1).mean():.1f} |mlp| {mlp.norm(dim=-1).mean():.1f}")
        x = y + mlp
    # Loss per position: next-token cross-entropy through the final norm and the output embedding.
    out = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    logits = rms(x, W["model.norm.weight"]) @ out.T  # [B, T, V]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             seqs[:, 1:].reshape(-1), reduction="none")
    loss = loss.view(B, T - 1)
    # Copyable: an earlier occurrence j - 1 of token t is followed by token t + 1 (j = t + 1 itself
    # excluded: that is the target).
    copyable = torch.zeros(B, T - 1, dtype=torch.bool)
    for b in range(B):
        s = seqs[b].tolist()
        for t in range(T - 1):
            copyable[b, t] = any(s[j - 1] == s[t] and s[j] == s[t + 1] for j in range(1, t + 1))
    print(f"loss on copyable tokens {loss[copyable].mean():.3f} ({int(copyable.sum())} tokens), "
          f"on the rest {loss[~copyable].mean():.3f} ({int((~copyable).sum())} tokens)")


if __name__ == "__main__":
    main()
