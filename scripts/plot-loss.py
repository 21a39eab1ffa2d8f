#!/usr/bin/env python3
"""Plots a training run's loss curve from its train.jsonl (training loss per step, smoothed, and
validation loss) to a PNG.

  /usr/bin/python3 scripts/plot-loss.py RUN/train.jsonl OUT.png [--title TEXT]
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("log")
    parser.add_argument("png")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    steps, losses, val_steps, val_losses, tokens = [], [], [], [], 0
    with open(args.log) as f:
        for line in f:
            record = json.loads(line)
            if "loss" in record:
                steps.append(record["step"])
                losses.append(record["loss"])
                tokens = record["tokens"]
            elif "val_loss" in record:
                val_steps.append(record["step"])
                val_losses.append(record["val_loss"])
    if not steps:
        raise SystemExit(f"{args.log}: no training steps logged")
    smoothed, average = [], losses[0]
    for loss in losses:  # exponential moving average, as training dashboards show it
        average = 0.9 * average + 0.1 * loss
        smoothed.append(average)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(steps, losses, color="#9ecae1", linewidth=0.8, label="training loss")
    ax.plot(steps, smoothed, color="#2171b5", linewidth=1.6, label="training loss (EMA 0.9)")
    if val_steps:
        ax.plot(val_steps, val_losses, "o-", color="#e6550d", markersize=3.5, label="validation loss")
    ax.set_xlabel(f"step ({tokens:,} tokens each)")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(args.title or args.log)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.png)
    print(f"wrote {args.png}: {len(steps)} steps, final loss {losses[-1]:.3f}"
          + (f", validation {val_losses[-1]:.3f}" if val_losses else ""))


if __name__ == "__main__":
    main()
