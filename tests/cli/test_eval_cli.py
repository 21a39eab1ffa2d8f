#!/usr/bin/env python3
"""End-to-end checks of `mixattn eval` on the shipped default model: the table, the JSON, the
heat map, the per-sample outputs, and clear errors for bad input.

Usage: test_eval_cli.py --mixattn PATH --workdir DIR [--model DIR]
"""
import argparse
import json
import math
import os
import shutil
import struct
import sys

from clitest import check, run, summary

TASKS = ["niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "copy"]


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mixattn", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                        "models", "default"))
    args = parser.parse_args()
    m, work, model = args.mixattn, args.workdir, os.path.abspath(args.model)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    env = dict(os.environ, OMP_WAIT_POLICY="passive")

    out_json, out_png, out_lines = (os.path.join(work, n) for n in
                                    ("eval.json", "eval.png", "outputs.jsonl"))
    r = run(m, "eval", "--model", model, "--tasks", "ppl," + ",".join(TASKS), "--lengths",
            "256,320", "--depths", "0,1", "--samples", "4", "--ppl-windows", "3", "--json",
            out_json, "--plot", out_png, "--outputs", out_lines, env=env)
    check(r.returncode == 0, f"eval exits 0 (stderr: {r.stderr[-800:]})")
    table = r.stdout.splitlines()
    check(table and table[0].split() == ["task", "256", "320"], f"table header: {table[:1]}")
    for name in ["ppl"] + TASKS:
        check(any(line.split()[:1] == [name] for line in table), f"table has a row for {name}")
    check(any(line.split()[:2] == ["copy", "nll"] for line in table), "table has a copy nll row")

    if os.path.exists(out_json):
        result = json.load(open(out_json))
        check(result["lengths"] == [256, 320] and result["samples"] == 4, "JSON echoes the run")
        check(result["layout"].startswith("F S F>0"), f"JSON layout {result['layout']!r}")
        check(set(result["kv_bytes_per_sequence"]) == {"256", "320"}, "KV bytes per length")
        check(result["kv_bytes_per_sequence"]["320"] > result["kv_bytes_per_sequence"]["256"],
              "KV bytes grow with length")
        ppl = result["perplexity"]
        check([p["length"] for p in ppl] == [256, 320], "perplexity per length")
        for p in ppl:
            check(p["windows"] == 3 and p["tokens"] == 3 * p["length"], "ppl windows and tokens")
            check(abs(p["ppl"] - math.exp(p["nll"])) < 1e-6 * p["ppl"], "ppl = exp(nll)")
            check(p["ppl_low"] <= p["ppl"] <= p["ppl_high"], "ppl inside its interval")
            # The default model's validation loss is 3.975 nats (perplexity 53) at 512 tokens.
            check(10 < p["ppl"] < 200, f"default model's perplexity is plausible: {p['ppl']:.1f}")
        rows = result["tasks"]
        check(sorted((t["task"], t["length"]) for t in rows) ==
              sorted((t, n) for t in TASKS for n in (256, 320)), "one row per task x length")
        for t in rows:
            check(t["samples"] == 4 and 0 <= t["ci_low"] <= t["accuracy"] <= t["ci_high"] <= 1,
                  f"{t['task']}@{t['length']}: samples and interval")
            check(("nll" in t) == (t["task"] == "copy"), f"{t['task']}: copy rows alone have nll")
            if t["task"] == "copy":
                check(t["nll_low"] <= t["nll"] <= t["nll_high"], "copy nll inside its interval")
        depth_rows = [t for t in result["by_depth"] if t["task"] == "niah_single"]
        check(sorted((t["length"], t["depth"]) for t in depth_rows) ==
              [(256, 0.0), (256, 1.0), (320, 0.0), (320, 1.0)], "niah_single per depth")
        far = [t["mean_distance"] for t in depth_rows if t["depth"] == 0.0]
        near = [t["mean_distance"] for t in depth_rows if t["depth"] == 1.0]
        check(min(far) > 150 and max(near) == 0, f"depth 0 is far ({far}), depth 1 adjacent ({near})")
        check(all("depth" not in t for t in result["by_depth"] if t["task"] in ("cwe", "fwe")),
              "cwe and fwe have no depth")
    size = png_size(out_png) if os.path.exists(out_png) else None
    check(size is not None and size[0] > 300 and size[1] > 200, f"heat map PNG written ({size})")
    if os.path.exists(out_lines):
        lines = [json.loads(l) for l in open(out_lines)]
        check(len(lines) == len(TASKS) * 2 * 4, f"one output line per sample ({len(lines)})")
        for line in lines:
            if line["task"] == "copy":
                # Teacher-forced: the score is a share of 15 predicted tokens.
                check(abs(line["score"] * 15 - round(line["score"] * 15)) < 1e-9,
                      f"copy score {line['score']} counts 15 tokens")
                check(0 < line["nll"] < 30, f"copy line has its loss in nats ({line['nll']})")
                continue
            words = [w.strip(".,") for w in line["output"].split()]
            found = sum(a in words for a in line["answers"]) / len(line["answers"])
            check(abs(found - line["score"]) < 1e-9,
                  f"score {line['score']} = share of answers in {line['output']!r}")

    empty = os.path.join(work, "empty")
    os.makedirs(empty)
    bad_cases = [
        (["--tasks", "niah"], "unknown task 'niah'"),
        (["--tasks", "niah_multikey", "--lengths", "100"], "too short for niah_multikey"),
        (["--lengths", "8000"], "exceeds the model's context of 4096"),
        (["--depths", "1.5"], "--depths: 1.5 is not in [0, 1]"),
        (["--plot", os.path.join(work, "x.svg")], "must end in .png"),
        (["--data", empty], "val.bin does not exist"),
        (["--model", empty], "config.json"),
        (["--samples", "0"], "--samples"),
    ]
    for extra, expected_text in bad_cases:
        argv = ["eval", "--model", model, "--lengths", "256", "--samples", "1", *extra]
        if "--model" in extra:
            argv = ["eval", *extra]
        r = run(m, *argv, env=env)
        check(r.returncode != 0 and r.returncode < 128,
              f"{' '.join(extra)}: non-zero exit without a crash ({r.returncode})")
        check(expected_text in r.stderr,
              f"{' '.join(extra)}: stderr mentions {expected_text!r}; got {r.stderr.strip()[-400:]!r}")

    r = run(m, "eval", "--help")
    check(r.returncode == 0 and "--lengths" in r.stdout and "niah_multivalue" in r.stdout,
          "eval --help lists flags and tasks")
    return summary()


if __name__ == "__main__":
    sys.exit(main())
