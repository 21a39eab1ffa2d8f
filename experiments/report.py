#!/usr/bin/env python3
"""Tables and figures of the paper comparison (experiments/paper-comparison.sh) for docs/results.md.

  /usr/bin/python3 experiments/report.py --experiment docs/results/runs --out docs/results

--experiment is the directory of kept results (paper-comparison.sh `keep` copies them there from
out/, so that they survive losing out/) or an experiment's output directory itself. Reads, for
every preset directory under it that holds eval.json: the evaluation
(`mixattn eval --json`), the training log (train.jsonl) and config.json; and bench.json
(`mixattn bench --json`) if present. Writes into --out:
  table.md         one row per preset: validation perplexity, each task's accuracy at each length
                   (with its 95% interval in a second table), KV bytes per sequence at the longest
                   length, decode tokens/s
  compact.md       the table docs/results.md shows: per preset, at the longest length only,
                   perplexity and the main tasks with their 95% intervals, copy loss, KV bytes per
                   sequence, and the copying stage's final training loss
  accuracy.png     accuracy against context length, one panel per task, one line per preset
  depth.png        niah_single accuracy and copy loss (nats on the repeated tokens) by distance at
                   the longest length, per preset, with all-sliding's receptive field marked
  loss.png         validation loss curves of all presets (stage 2), and the training loss of the
                   copying stage (copy/PRESET/train.jsonl, smoothed): when each layout leaves the
                   plateau before in-context copying
  summary.json     everything above as numbers
Presets missing an eval.json are listed as not run yet.
"""
import argparse
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PRESETS = ["standard", "all-sliding", "ma", "ma-endslide", "ma-offset", "ma-pairs",
           "ma-offset-slideshare", "ma-pairs-slideshare", "characterai"]
TASKS = ["niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe",
         "copy"]


def copy_stage_loss(experiment, preset, window=250):
    """(step, mean training loss over the `window` steps up to it) of the copying stage, if it ran.

    The kept logs (paper-comparison.sh `keep`) hold every 5th step of this stage, so the mean is
    over the steps present in the window, not a fixed count of records."""
    path = os.path.join(experiment, "copy", preset, "train.jsonl")
    if not os.path.exists(path):
        return []
    losses = []
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if "loss" in record:
                losses.append((record["step"], record["loss"]))
    losses.sort()
    points = []
    begin = 0
    mark = window  # a point at the first step at or past each multiple of window / 2
    for end, (step, _) in enumerate(losses):
        while losses[begin][0] <= step - window:
            begin += 1
        if step >= mark:
            points.append((step, sum(l for _, l in losses[begin:end + 1]) / (end + 1 - begin)))
            mark = step + window // 2
    return points


def load(experiment):
    runs = {}
    for preset in PRESETS:
        path = os.path.join(experiment, preset)
        if not os.path.exists(os.path.join(path, "eval.json")):
            continue
        with open(os.path.join(path, "eval.json")) as f:
            evaluation = json.load(f)
        val = []
        with open(os.path.join(path, "train.jsonl")) as f:
            for line in f:
                record = json.loads(line)
                if "val_loss" in record:
                    val.append((record["step"], record["val_loss"]))
        runs[preset] = {"eval": evaluation, "val": val,
                        "copy_loss": copy_stage_loss(experiment, preset)}
    bench = {}
    bench_path = os.path.join(experiment, "bench.json")
    if os.path.exists(bench_path):
        with open(bench_path) as f:
            rows = json.load(f)
        for row in rows if isinstance(rows, list) else rows.get("results", []):
            bench.setdefault(row["preset"], []).append(row)
    return runs, bench


def human_bytes(n):
    for unit in ["B", "KiB", "MiB", "GiB"]:
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def decode_rate(bench_rows, context):
    rows = [r for r in bench_rows if r.get("context") == context]
    return max((r["decode_tokens_per_s"] for r in rows), default=None)


def write_compact(path, runs, bench, length):
    """compact.md: one row per evaluated preset at `length`, with the intervals inline, and the
    decode speed of every context the bench measured."""
    tasks = ["niah_single", "niah_multikey", "vt", "cwe", "copy"]
    contexts = sorted({r["context"] for rows in bench.values() for r in rows})
    header = (["preset", "layout", f"ppl @{length}"] + [f"{t} @{length}" for t in tasks] +
              [f"copy nll @{length}", f"KV/seq @{length}"] +
              [f"decode tok/s @{c}" for c in contexts] + ["stage 1 final loss"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for preset in PRESETS:
        if preset not in runs:
            continue
        e = runs[preset]["eval"]
        ppl = next(p for p in e["perplexity"] if p["length"] == length)
        acc = {t["task"]: t for t in e["tasks"] if t["length"] == length}
        row = [preset, "`" + e.get("layout", "") + "`",
               f"{ppl['ppl']:.0f} [{ppl['ppl_low']:.0f}, {ppl['ppl_high']:.0f}]"]
        for t in tasks:
            a = acc.get(t)
            row.append(f"{a['accuracy']:.2f} [{a['ci_low']:.2f}, {a['ci_high']:.2f}]" if a else "-")
        nll = acc.get("copy", {}).get("nll")
        row.append(f"{nll:.2f}" if nll is not None else "-")
        row.append(human_bytes(e["kv_bytes_per_sequence"][str(length)]))
        for c in contexts:
            rate = decode_rate(bench.get(preset, []), c)
            row.append(f"{rate:,.0f}" if rate else "-")
        stage1 = runs[preset]["copy_loss"]
        row.append(f"{stage1[-1][1]:.2f}" if stage1 else "-")
        lines.append("| " + " | ".join(row) + " |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="docs/results/runs")
    parser.add_argument("--out", default="docs/results")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    runs, bench = load(args.experiment)
    if not runs:
        raise SystemExit(f"no evaluated run under {args.experiment} (run the eval stage first)")
    lengths = next(iter(runs.values()))["eval"]["lengths"]
    longest = max(lengths)
    bench_context = max((r["context"] for rows in bench.values() for r in rows), default=None)

    summary = {"lengths": lengths, "presets": {}, "missing": [p for p in PRESETS if p not in runs]}
    header = ["preset", "layout", "val ppl"]
    header += [f"{t} @{n}" for t in TASKS for n in lengths]
    header += [f"copy nll @{n}" for n in lengths]
    header += [f"KV/seq @{longest}", f"decode tok/s @{bench_context}" if bench_context else
               "decode tok/s"]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    intervals = ["| preset | " + " | ".join(f"{t} @{n}" for t in TASKS for n in lengths) + " |",
                 "|---|" + "---|" * (len(TASKS) * len(lengths))]
    for preset in PRESETS:
        if preset not in runs:
            continue
        e = runs[preset]["eval"]
        ppl = {p["length"]: p for p in e["perplexity"]}
        acc = {(t["task"], t["length"]): t for t in e["tasks"]}
        rate = decode_rate(bench.get(preset, []), bench_context) if bench_context else None
        kv = e["kv_bytes_per_sequence"][str(longest)]
        row = [preset, "`" + e.get("layout", "") + "`", f"{ppl[longest]['ppl']:.2f}"]
        irow = [preset]
        for t in TASKS:
            for n in lengths:
                a = acc.get((t, n))
                row.append(f"{a['accuracy']:.2f}" if a else "-")
                irow.append(f"[{a['ci_low']:.2f}, {a['ci_high']:.2f}]" if a else "-")
        copy_nll = {n: acc[("copy", n)].get("nll") for n in lengths if ("copy", n) in acc}
        row += [f"{copy_nll[n]:.2f}" if copy_nll.get(n) is not None else "-" for n in lengths]
        row += [human_bytes(kv), f"{rate:,.0f}" if rate else "-"]
        table.append("| " + " | ".join(row) + " |")
        intervals.append("| " + " | ".join(irow) + " |")
        summary["presets"][preset] = {
            "layout": e.get("layout"), "ppl": ppl[longest]["ppl"],
            "ppl_interval": [ppl[longest]["ppl_low"], ppl[longest]["ppl_high"]],
            "final_val_loss": runs[preset]["val"][-1][1] if runs[preset]["val"] else None,
            "accuracy": {f"{t}@{n}": acc[(t, n)]["accuracy"] for t in TASKS for n in lengths
                         if (t, n) in acc},
            "copy_nll": {f"copy@{n}": v for n, v in copy_nll.items() if v is not None},
            "kv_bytes_per_sequence": kv, "decode_tokens_per_s": rate}
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write("\n".join(table) + "\n\n95% intervals (Wilson) of the accuracies above:\n\n")
        f.write("\n".join(intervals) + "\n")
        if summary["missing"]:
            f.write("\nNot run yet: " + ", ".join(summary["missing"]) + "\n")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    write_compact(os.path.join(args.out, "compact.md"), runs, bench, longest)

    colours = plt.cm.tab10.colors
    styles = {p: (colours[i % 10], "-" if i < 10 else "--") for i, p in enumerate(PRESETS)}

    fig, axes = plt.subplots(3, 3, figsize=(15, 11), sharey=True)
    for ax, task in zip(axes.flat, TASKS):
        for preset, run in runs.items():
            rows = sorted((t for t in run["eval"]["tasks"] if t["task"] == task),
                          key=lambda t: t["length"])
            if not rows:
                continue
            x = [r["length"] for r in rows]
            ax.errorbar(x, [r["accuracy"] for r in rows],
                        yerr=[[r["accuracy"] - r["ci_low"] for r in rows],
                              [r["ci_high"] - r["accuracy"] for r in rows]],
                        label=preset, color=styles[preset][0], marker="o", capsize=2, alpha=0.85)
        ax.set_title(task)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes.flat[-1].axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    axes.flat[-1].legend(handles, labels, loc="center")
    fig.supxlabel("context length (tokens)")
    fig.supylabel("accuracy (95% interval)")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "accuracy.png"), dpi=90)
    plt.close(fig)

    config_path = os.path.join(args.experiment, next(iter(runs)), "config.json")
    with open(config_path) as f:
        config = json.load(f)
    windows = [w for w in config["sliding_window"] if w]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    for ax, task in zip(axes, ["niah_single", "copy"]):
        for preset, run in runs.items():
            rows = sorted((t for t in run["eval"]["by_depth"]
                           if t["task"] == task and t["length"] == longest),
                          key=lambda t: t["mean_distance"])
            if rows:
                value = "accuracy" if task == "niah_single" else "nll"
                ax.plot([r["mean_distance"] for r in rows], [r.get(value) for r in rows],
                        marker="o", label=preset, color=styles[preset][0])
        if windows:
            field = config["num_hidden_layers"] * (windows[0] - 1)
            ax.axvline(field, color="grey", linestyle=":")
            ax.text(field, 0.98, " all-sliding receptive field", color="grey", fontsize=8,
                    transform=ax.get_xaxis_transform(), va="top")
        what = "the pass key and the question" if task == "niah_single" else "the span and its repeat"
        ax.set_xlabel(f"tokens between {what} (length {longest})")
        if task == "niah_single":
            ax.set_ylabel("niah_single accuracy")
            ax.set_ylim(-0.05, 1.1)
        else:
            vocab = config["vocab_size"]
            ax.axhline(math.log(vocab), color="grey", linestyle="--")
            ax.text(0, math.log(vocab), f" ln V = {math.log(vocab):.2f}: no copying", color="grey",
                    fontsize=8, va="bottom")
            ax.set_ylabel("copy loss on the repeated tokens (nats; lower = more copying)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "depth.png"), dpi=90)
    plt.close(fig)

    fig, (ax, ax_copy) = plt.subplots(1, 2, figsize=(14, 5))
    for preset, run in runs.items():
        if run["val"]:
            ax.plot(*zip(*run["val"]), label=preset, color=styles[preset][0])
        if run["copy_loss"]:
            ax_copy.plot(*zip(*run["copy_loss"]), label=preset, color=styles[preset][0])
    ax.set_xlabel("step of stage 2 (the mix)")
    ax.set_ylabel("validation loss (nats/token)")
    lows = [v for run in runs.values() for _, v in run["val"][1:]]
    if lows:
        ax.set_ylim(min(lows) - 0.1, min(lows) + 1.5)
    ax_copy.set_xlabel("step of stage 1 (periodic and random_repeat spans only)")
    ax_copy.set_ylabel("training loss, mean of 250 steps (nats/token)")
    ax_copy.set_title("the drop is the model starting to copy", fontsize=9)
    for a in (ax, ax_copy):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "loss.png"), dpi=90)
    plt.close(fig)
    print(f"report: {len(runs)} presets -> {args.out} (table.md, compact.md, accuracy.png, depth.png, "
          f"loss.png, summary.json)" + (f"; not run yet: {', '.join(summary['missing'])}"
                                        if summary["missing"] else ""))


if __name__ == "__main__":
    main()
