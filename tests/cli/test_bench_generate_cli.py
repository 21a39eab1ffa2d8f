#!/usr/bin/env python3
"""End-to-end checks of `mixattn bench` and `mixattn generate` as a user or a script sees them.

Usage: test_bench_generate_cli.py --mixattn PATH --workdir DIR
bench: a tiny two-preset run (its JSON, table, ratios and plot) and every flag error, each of which
must come before any measuring. generate: the shipped default model from another working
directory, greedy and seeded sampling.
"""
import json
import os
import sys
import tempfile

from clitest import check, parse_args, run, summary

TINY_SHAPE = ["--layers", "8", "--hidden", "64", "--heads", "2", "--kv-heads", "1", "--head-dim", "32",
              "--ffn", "64", "--vocab", "64", "--window", "16"]
PRESETS = ["standard", "ma-pairs"]
CONTEXTS = [256, 512]
BATCHES = [1, 2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def table_rows(stdout):
    """The bench table's rows as token lists (the KV alloc and bytes/step cells are two tokens)."""
    lines = stdout.splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith("preset ")), None)
    if header is None:
        return None, []
    rows = []
    for line in lines[header + 1:]:
        if not line.strip():
            break
        rows.append(line.split())
    return lines[header], rows


def test_bench(m, workdir):
    json_path = os.path.join(workdir, "bench.json")
    plot_path = os.path.join(workdir, "bench.png")
    for path in (json_path, plot_path):
        if os.path.exists(path):
            os.remove(path)
    # Each decode timing follows a 1 GiB DRAM read pass (there is no flag to shrink it), so the
    # run keeps to 8 points of one timing each.
    r = run(m, "bench", "--compare", ",".join(PRESETS), *TINY_SHAPE,
            "--context", ",".join(map(str, CONTEXTS)), "--batch", ",".join(map(str, BATCHES)),
            "--repeats", "1", "--decode-steps", "2", "--prefill-tokens", "32",
            "--json", json_path, "--plot", plot_path)
    check(r.returncode == 0, f"bench exits 0 (stderr: {r.stderr[-400:]})")
    if r.returncode != 0:
        return
    rows = json.load(open(json_path))
    expected = [(p, c, b) for c in CONTEXTS for b in BATCHES for p in PRESETS]
    check([(x["preset"], x["context"], x["batch"]) for x in rows] == expected,
          f"bench --json: one object per preset x context x batch, presets interleaved "
          f"({[(x['preset'], x['context'], x['batch']) for x in rows]})")
    for x in rows:
        point = f"{x.get('preset')} {x.get('context')}x{x.get('batch')}"
        for field in ["kv_bytes", "prefill_tokens_per_s", "decode_tokens_per_s",
                      "decode_bytes_per_step", "decode_step_s"]:
            check(isinstance(x.get(field), (int, float)) and x[field] > 0,
                  f"bench {point}: {field} present and > 0 ({x.get(field)})")
        check(x.get("decode_kv") == "synthetic", f"bench {point}: decode_kv says synthetic")
        check(x.get("prefill_tokens") == 32, f"bench {point}: prefill_tokens = --prefill-tokens")
    by_point = {(x["preset"], x["context"], x["batch"]): x for x in rows}
    if len(by_point) == len(expected):
        for c in CONTEXTS:
            for b in BATCHES:
                check(by_point[("ma-pairs", c, b)]["kv_bytes"] < by_point[("standard", c, b)]["kv_bytes"],
                      f"bench: ma-pairs allocates less KV than standard at {c} tokens x {b}")
        for p in PRESETS:
            rates = {x["prefill_tokens_per_s"] for x in rows if x["preset"] == p}
            check(len(rates) == 1, f"bench: {p}'s one prefill measurement on each of its rows")

    check("synthetic" in r.stdout, "bench table says the decode KV is synthetic")
    check("measured once per preset" in r.stdout and "32 tokens" in r.stdout,
          "bench footnote: prefill measured once per preset over --prefill-tokens tokens")
    header, table = table_rows(r.stdout)
    check(header is not None and "ms/step" in header and "vs first" in header,
          f"bench table has ms/step and vs first columns ({header})")
    check(len(table) == len(rows), f"bench table: one row per JSON object ({len(table)} rows)")
    if len(table) == len(rows):
        for i, (cells, x) in enumerate(zip(table, rows)):
            first = rows[i - i % len(PRESETS)]
            point = f"{x['preset']} {x['context']}x{x['batch']}"
            check(cells[0] == x["preset"] and int(cells[1]) == x["context"] and int(cells[2]) == x["batch"],
                  f"bench table row {i} is {point} ({cells[:3]})")
            # From the right: vs first, DRAM bound, DRAM, GB/s, bytes/step (2 cells), ms/step.
            ratio = x["decode_tokens_per_s"] / first["decode_tokens_per_s"]
            check(cells[-1].endswith("x") and abs(float(cells[-1][:-1]) - ratio) <= 0.005 + 1e-9,
                  f"bench {point}: vs first {cells[-1]} = decode_tokens_per_s ratio {ratio:.4f}")
            check(abs(float(cells[-7]) - 1e3 * x["decode_step_s"]) <= 0.0005 + 1e-9,
                  f"bench {point}: ms/step {cells[-7]} = 1000 x decode_step_s {x['decode_step_s']}")
    with open(plot_path, "rb") as f:
        check(f.read(8) == PNG_SIGNATURE, "bench --plot writes a PNG")


def test_bench_errors(m, workdir):
    """Each bad flag fails naming the flag, before the DRAM probe (no measuring starts)."""
    defaults = {"--compare": "standard,ma-pairs", "--context": "256", "--batch": "1"}

    def bench_args(extra):
        # List flags accumulate in CLI11, so a flag under test replaces its default here.
        given = set(extra[::2])
        args = ["bench", *TINY_SHAPE]
        for flag, value in defaults.items():
            if flag not in given and not (flag == "--compare" and "--preset" in given):
                args += [flag, value]
        return args + extra

    for flag in ["--decode-steps", "--repeats", "--block-size", "--chunk", "--prefill-tokens"]:
        for value in ["0", "-1"]:
            r = run(m, *bench_args([flag, value]), timeout=60)
            check(r.returncode != 0 and flag in r.stderr + r.stdout,
                  f"bench {flag} {value} is refused naming the flag ({r.stderr.strip()[-200:]})")
            check("measuring" not in r.stderr, f"bench {flag} {value} fails before measuring")
    cases = [
        (["--context", "0"], "--context"),
        (["--context", "256,-4"], "--context"),
        (["--batch", "0"], "--batch"),
        (["--batch", "-2"], "--batch"),
        (["--compare", "standard,bogus"], "unknown preset 'bogus'"),
        (["--compare", "ma-pairs,ma-pairs"], "listed twice"),
        (["--plot", os.path.join(workdir, "bench.jpg")], "must end in .png"),
        (["--kv-budget", "1KiB"], "--kv-budget"),
        (["--kv-budget", "lots"], "--kv-budget"),
        (["--context", "131070"], "max_position_embeddings"),
        (["--preset", "standard", "--compare", "standard,ma-pairs"], "give one of"),
    ]
    for extra, message in cases:
        r = run(m, *bench_args(extra), timeout=60)
        check(r.returncode != 0 and message in r.stderr,
              f"bench {' '.join(extra)} is refused with '{message}' ({r.stderr.strip()[-200:]})")
        check("measuring" not in r.stderr, f"bench {' '.join(extra)} fails before measuring")


def test_generate_default_model(m):
    """Without --model, generate finds the shipped models/default from any working directory."""
    with tempfile.TemporaryDirectory() as cwd:
        prompt = ["generate", "--prompt", "And it came to pass", "--max-tokens", "8"]
        r = run(m, *prompt, "--temperature", "0", "--json", cwd=cwd)
        check(r.returncode == 0, f"generate from another directory exits 0 ({r.stderr[-300:]})")
        if r.returncode == 0:
            out = json.loads(r.stdout)
            check(out["text"].strip() != "" and len(out["tokens"]) > 0,
                  f"generate with the default model produces text ({out['text']!r})")
        seeded = [run(m, *prompt, "--temperature", "0.8", "--seed", "1234", "--json", cwd=cwd)
                  for _ in range(2)]
        check(all(s.returncode == 0 for s in seeded), f"seeded generate exits 0 ({seeded[0].stderr[-300:]})")
        if all(s.returncode == 0 for s in seeded):
            a, b = (json.loads(s.stdout) for s in seeded)
            check(a["text"].strip() != "", f"seeded generate produces text ({a['text']!r})")
            check(a["tokens"] == b["tokens"] and a["text"] == b["text"],
                  f"same --seed, same output at temperature 0.8 ({a['text']!r} vs {b['text']!r})")
        r = run(m, *prompt, "--temperature", "0", "--json", "--batch-invariant", cwd=cwd)
        check(r.returncode == 0 and json.loads(r.stdout)["text"].strip() != "",
              f"generate --batch-invariant produces text ({r.stderr[-300:]})")


def main():
    args = parse_args()
    m = os.path.abspath(args.mixattn)
    test_bench(m, args.workdir)
    test_bench_errors(m, args.workdir)
    test_generate_default_model(m)
    return summary()


if __name__ == "__main__":
    sys.exit(main())
