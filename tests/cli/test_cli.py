#!/usr/bin/env python3
"""End-to-end checks of the mixattn command line: what a user or a script sees.

Usage: test_cli.py --mixattn PATH --workdir DIR
Runs the real binary, parses its JSON and checks exit codes and error messages.
"""
import json
import os
import sys

from clitest import check, parse_args, run, summary

def main():
    args = parse_args()
    m = args.mixattn

    # --- plan --json for one preset: the fields scripts read
    r = run(m, "plan", "--preset", "ma-pairs", "--context", "32768", "--batch", "4", "--budget", "8GiB", "--json")
    check(r.returncode == 0, f"plan --json exits 0 (stderr: {r.stderr})")
    plan = json.loads(r.stdout)
    for field in ["preset", "layers", "kv_owner_layers", "kv_bytes_per_token", "kv_bytes_per_sequence",
                  "kv_bytes_total", "max_sequences", "reduction_vs_standard"]:
        check(field in plan, f"plan --json has '{field}'")
    check(plan["preset"] == "ma-pairs", "preset name in JSON")
    check(len(plan["layers"]) == 24, "24 layers by default")
    check(plan["layers"][2] == {"index": 2, "kind": "sliding", "window": 1024, "kv_source": 1},
          f"layer 2 of ma-pairs reads layer 1: {plan['layers'][2]}")
    check(plan["layers"][8] == {"index": 8, "kind": "full", "window": None, "kv_source": 0},
          f"layer 8 of ma-pairs is full and reads layer 0: {plan['layers'][8]}")
    slot = 2 * 4 * 128 * 2  # K+V, 4 KV heads, 128 dims, bf16
    check(plan["kv_bytes_per_token"] == 13 * slot, "bytes per token = 13 owners x slot")
    check(plan["kv_bytes_per_sequence"] == 76800 * slot, "bytes per sequence = PRESETS.md token-layers x slot")
    check(plan["kv_bytes_total"] == 4 * 76800 * slot, "batch total")
    check(plan["max_sequences_unpaged"] == (8 << 30) // (76800 * slot),
          "max sequences within the budget without block rounding")
    # What the engine admits: blocks of 64 tokens (64 x slot bytes), each owner reserving its worst
    # case for a 32768-token request written in 256-token chunks: a full owner 512 blocks, a
    # sliding one (W = 1024) at most ceil((1024 + 256 - 2) / 64) + 1 = 21.
    check(plan["block_tokens"] == 64 and plan["chunk"] == 256, "engine's block size and chunk")
    owner_blocks = [512 if plan["layers"][o]["kind"] == "full" else 21 for o in plan["kv_owner_layers"]]
    check(plan["kv_blocks_per_sequence"] == sum(owner_blocks), "blocks reserved per sequence")
    check(plan["max_sequences"] == (8 << 30) // (64 * slot) // sum(owner_blocks),
          f"max sequences the engine admits: {plan['max_sequences']}")
    r = run(m, "plan", "--preset", "ma-pairs", "--block-size", "16", "--chunk", "1", "--json")
    check(r.returncode == 0 and json.loads(r.stdout)["kv_blocks_per_sequence"] ==
          sum(2048 if plan["layers"][o]["kind"] == "full" else 65 for o in plan["kv_owner_layers"]),
          "plan --block-size 16 --chunk 1: a sliding owner holds ceil(1023 / 16) + 1 = 65 blocks")
    for flag in ["--block-size", "--chunk"]:
        r = run(m, "plan", "--preset", "ma-pairs", flag, "0")
        check(r.returncode != 0 and flag in r.stderr, f"plan {flag} 0 is refused naming the flag: {r.stderr}")
    check(abs(plan["reduction_vs_standard"] - 786432 / 76800) < 1e-9, "reduction vs standard")

    # --- plan --compare --json: one object per preset, figures of PRESETS.md at L=8, T=4096, W=256
    r = run(m, "plan", "--compare", "--json", "--layers", "8", "--window", "256", "--context", "4096")
    check(r.returncode == 0, "plan --compare --json exits 0")
    plans = json.loads(r.stdout)
    expected = {"standard": 32768, "all-sliding": 2048, "ma": 4864, "ma-endslide": 4864, "ma-offset": 4864,
                "ma-pairs": 8960, "ma-offset-slideshare": 4864, "ma-pairs-slideshare": 8960, "characterai": 4864}
    check([p["preset"] for p in plans] == list(expected), "every preset, standard first")
    for p in plans:
        check(p["kv_token_layers"] == expected[p["preset"]], f"{p['preset']} token-layers at 4096")

    # --- the human table
    r = run(m, "plan", "--compare")
    check(r.returncode == 0 and "ma-pairs" in r.stdout and "10.2x" in r.stdout, "plan --compare table shows 10.2x")
    r = run(m, "plan", "--preset", "ma")
    check(r.returncode == 0 and "KV owners: 12 of 24 layers (1 full, 11 sliding)" in r.stdout,
          f"plan --preset ma summary line: {r.stdout[-600:]}")

    # --- init + plan --config on the written config.json
    model_dir = os.path.join(args.workdir, "model")
    r = run(m, "init", "--preset", "ma-offset", "--layers", "8", "--hidden", "32", "--heads", "2", "--kv-heads", "1",
            "--head-dim", "16", "--ffn", "48", "--vocab", "50", "--window", "16", "--out", model_dir)
    check(r.returncode == 0, f"init exits 0 ({r.stderr})")
    r = run(m, "plan", "--config", os.path.join(model_dir, "config.json"), "--context", "64", "--json")
    check(r.returncode == 0, f"plan --config config.json ({r.stderr})")
    if r.returncode == 0:
        check(json.loads(r.stdout)["kv_token_layers"] == 64 * 1 + 16 * 3, "ma-offset L=8 token-layers at 64")

    # --- an LLM Foundry YAML through --config
    yaml_path = os.path.join(args.workdir, "foundry.yaml")
    with open(yaml_path, "w") as f:
        f.write("""model:
  name: mpt_causal_lm
  d_model: 256
  n_heads: 4
  n_layers: 13
  attn_config:
    attn_type: grouped_query_attention
    kv_n_heads: 1
  block_overrides:
    order:
      - name: default
      - repeat: 2
        order:
          - name: sliding_window_layer
          - name: sliding_window_layer_reuse
          - name: sliding_window_layer
          - name: sliding_window_layer_reuse
            repeat: 2
          - name: reuse_kv_layer
    overrides:
      sliding_window_layer:
        attn_config:
          sliding_window_size: 1024
      sliding_window_layer_reuse:
        attn_config:
          sliding_window_size: 1024
          reuse_kv_layer_idx: -1
      reuse_kv_layer:
        attn_config:
          reuse_kv_layer_idx: -6
""")
    r = run(m, "plan", "--config", yaml_path, "--json")
    check(r.returncode == 0, f"plan --config foundry.yaml exits 0 ({r.stderr})")
    if r.returncode == 0:
        p = json.loads(r.stdout)
        check(p["kv_owner_layers"] == [0, 1, 3, 7, 9], f"foundry owners {p['kv_owner_layers']}")
        check([l["kv_source"] for l in p["layers"]] == [0, 1, 1, 3, 3, 3, 0, 7, 7, 9, 9, 9, 0],
              "foundry 13-layer sources")
        check(p["shape"]["hidden_size"] == 256 and p["shape"]["num_key_value_heads"] == 1, "foundry shape read")

    # --- bad input: clear message, non-zero exit, no crash
    bad_cases = [
        (["plan", "--preset", "mixattention"], "unknown preset 'mixattention'"),
        (["plan", "--preset", "ma", "--layers", "4"], "needs at least 8 layers"),
        (["plan", "--preset", "ma", "--budget", "lots"], "--budget: 'lots' is not a byte size"),
        (["plan", "--preset", "ma", "--kv-dtype", "int3"], "--kv-dtype"),
        (["plan", "--preset", "ma", "--context", "0"], "--context"),
        (["plan"], "give exactly one of --preset NAME or --config FILE"),
        (["plan", "--preset", "ma", "--config", "x.json"], "give exactly one of"),
        (["plan", "--config", "/nonexistent.json"], "/nonexistent.json: cannot open"),
        (["plan", "--config", os.path.join(model_dir, "config.json"), "--layers", "12"], "fixes the model shape"),
        (["plan", "--preset", "ma", "--heads", "6", "--kv-heads", "4"], "not divisible"),
        (["init", "--preset", "ma"], "--out"),
        (["frobnicate"], "frobnicate"),
    ]
    for argv, expected_text in bad_cases:
        r = run(m, *argv)
        check(r.returncode != 0 and r.returncode < 128, f"{' '.join(argv)}: non-zero exit without a crash ({r.returncode})")
        check(expected_text in r.stderr, f"{' '.join(argv)}: stderr mentions {expected_text!r}; got {r.stderr.strip()!r}")

    # --- bench --json on a tiny model: one object per preset x context x batch, with the fields
    # the issue names and a DRAM fraction judged against a measured DRAM pass
    bench_json = os.path.join(args.workdir, "bench.json")
    r = run(m, "bench", "--compare", "standard,ma-pairs", "--layers", "8", "--hidden", "64", "--heads", "4",
            "--kv-heads", "2", "--head-dim", "16", "--ffn", "128", "--vocab", "256", "--window", "32",
            "--context", "100,300", "--batch", "1,2", "--repeats", "2", "--decode-steps", "2",
            "--prefill-tokens", "64", "--block-size", "16", "--json", bench_json)
    check(r.returncode == 0, f"bench exits 0 (stderr: {r.stderr[-400:]})")
    rows = json.load(open(bench_json)) if r.returncode == 0 else []
    check([(b["preset"], b["context"], b["batch"]) for b in rows] ==
          [(p, c, b) for c in (100, 300) for b in (1, 2) for p in ("standard", "ma-pairs")],
          "bench --json: presets interleaved at each context and batch")
    for b in rows:
        for field in ["kv_bytes", "prefill_tokens_per_s", "decode_tokens_per_s", "decode_bytes_per_step",
                      "dram_read_bytes_per_s", "dram_bandwidth_fraction"]:
            check(field in b and b[field] > 0, f"bench {b['preset']} {b['context']}x{b['batch']}: {field} > 0")
    # Full attention reads all 300 keys per layer; ma-pairs' sliding layers read at most 32.
    by_point = {(b["preset"], b["context"], b["batch"]): b for b in rows}
    if by_point:
        check(by_point[("ma-pairs", 300, 2)]["kv_bytes"] < by_point[("standard", 300, 2)]["kv_bytes"],
              "bench: ma-pairs allocates less KV than standard at 300 tokens")
    check("blocks of 16 tokens" in r.stdout and "% of DRAM read" in r.stderr,
          "bench table names the block size; progress shows the DRAM fraction")
    r = run(m, "bench", "--preset", "standard", "--context", "0")
    check(r.returncode != 0 and "--context values must be >= 1" in r.stderr, "bench rejects --context 0")

    # --- help explains
    r = run(m, "plan", "--help")
    check(r.returncode == 0 and "--budget" in r.stdout and "ma-pairs" in r.stdout, "plan --help lists flags and presets")

    return summary()


if __name__ == "__main__":
    sys.exit(main())
