"""What the command-line tests share: a pass/fail tally, running the binary, and a small corpus."""
import argparse
import os
import random
import subprocess

failures = []
passes = 0


def check(condition, what):
    """Records one check; prints the failed ones as they happen."""
    global passes
    if condition:
        passes += 1
    else:
        failures.append(what)
        print(f"FAIL: {what}")


def parse_args():
    """The arguments every command-line test takes: --mixattn PATH --workdir DIR (created)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--mixattn", required=True)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    return args


def summary():
    """Prints the tally; returns the exit status (1 if anything failed)."""
    print(f"{passes} passed, {len(failures)} failed")
    return 1 if failures else 0


def run(mixattn, *args, env=None, timeout=300, cwd=None):
    return subprocess.run([mixattn, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd)


def write_corpus(path, seed, documents_count):
    """Documents of 2-6 lines of plain words, each with a unique serial so none repeats."""
    words = ("the river was cold and clear in the morning they walked along old road toward town "
             "where market stood bread costs twelve coins she said nothing more than that a small "
             "house on hill with green door").split()
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for d in range(documents_count):
            for _ in range(rng.randint(2, 6)):
                line = " ".join(rng.choice(words) for _ in range(rng.randint(5, 14)))
                f.write(line.capitalize() + ".\n")
            f.write(f"Document {seed}-{d} ends here.\n\n")
