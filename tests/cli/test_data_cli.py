#!/usr/bin/env python3
"""End-to-end checks of `mixattn data`: the files it writes, their headers, the split, the errors.

Usage: test_data_cli.py --mixattn PATH --workdir DIR
Runs the real binary on a small generated corpus and reads its shards with Python's struct,
following the layout documented in src/train/token_shards.h (independently of the C++ reader).
"""
import argparse
import hashlib
import json
import os
import shutil
import struct
import sys

from clitest import check, run, summary, write_corpus

HEADER = struct.Struct("<8sIIQII32s")  # magic, version, bytes/token, count, vocab, record length, sha
BOS, EOS = 1, 2


def read_shard(path):
    """Returns (header dict, list of ids) of a token shard."""
    with open(path, "rb") as f:
        data = f.read()
    magic, version, width, count, vocab, record, sha = HEADER.unpack_from(data)
    header = {"magic": magic, "version": version, "width": width, "count": count, "vocab": vocab,
              "record_length": record, "sha256": sha.hex(), "bytes": len(data)}
    fmt = "<" + ("H" if width == 2 else "I") * count
    ids = list(struct.unpack_from(fmt, data, 64)) if len(data) == 64 + width * count else []
    return header, ids


def documents(ids):
    """Splits a token stream into BOS ... EOS documents (as tuples)."""
    docs, current = [], None
    for i in ids:
        if i == BOS:
            current = [i]
        else:
            current.append(i)
            if i == EOS:
                docs.append(tuple(current))
                current = None
    return docs


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()



def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mixattn", required=True)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    m = args.mixattn

    a, b = os.path.join(work, "a.txt"), os.path.join(work, "b.txt")
    write_corpus(a, 1, 80)
    write_corpus(b, 2, 40)

    # --- a full run: tokenizer, shards, data.json
    out = os.path.join(work, "out")
    r = run(m, "data", "--in", a, b, "--out", out, "--vocab-size", "400", "--val-fraction", "0.1",
            "--seed", "3")
    check(r.returncode == 0, f"data exits 0 (stderr: {r.stderr[-2000:]})")
    check("tokenizing" in r.stderr, "progress on stderr")
    check(sorted(os.listdir(out)) == ["data.json", "tokenizer.model", "train.bin", "val.bin"],
          f"exactly the documented files, no temporaries: {sorted(os.listdir(out))}")
    data = json.load(open(os.path.join(out, "data.json")))
    tokenizer_sha = sha256_file(os.path.join(out, "tokenizer.model"))
    check(data["tokenizer"]["sha256"] == tokenizer_sha, "data.json has the tokenizer's sha256")
    check(data["tokenizer"]["vocab_size"] == 400, "vocab size in data.json")
    check([i["path"] for i in data["inputs"]] == [a, b], "inputs in order")
    check(data["inputs"][0]["sha256"] == sha256_file(a) and data["inputs"][0]["bytes"] == os.path.getsize(a),
          "input sha256 and bytes")
    check(data["inputs"][0]["documents"] == 80 and data["inputs"][1]["documents"] == 40, "documents per input")
    check(data["split"]["val_documents"] == 12 and data["split"]["train_documents"] == 108,
          f"10% of 120 documents held out: {data['split']}")
    check(data["command"].startswith("mixattn data --in "), "command line recorded")

    train_header, train = read_shard(os.path.join(out, "train.bin"))
    val_header, val = read_shard(os.path.join(out, "val.bin"))
    for name, header, ids in (("train", train_header, train), ("val", val_header, val)):
        check(header["magic"] == b"MXTOKENS" and header["version"] == 1, f"{name}: magic and version")
        check(header["width"] == 2, f"{name}: uint16 ids for vocab 400")
        check(header["vocab"] == 400 and header["record_length"] == 0, f"{name}: vocab, stream of documents")
        check(header["sha256"] == tokenizer_sha, f"{name}: header carries the tokenizer sha256")
        check(header["bytes"] == 64 + 2 * header["count"], f"{name}: size matches the count")
        check(header["count"] == data["shards"][name]["tokens"], f"{name}: count matches data.json")
        check(all(0 <= i < 400 for i in ids), f"{name}: ids inside the vocabulary")
        check(ids[:1] == [BOS] and ids[-1:] == [EOS], f"{name}: starts with BOS, ends with EOS")
    train_docs, val_docs = documents(train), documents(val)
    check(len(train_docs) == 108 and len(val_docs) == 12, "every document is BOS ... EOS")
    check(not set(train_docs) & set(val_docs), "no document in both splits")

    # --- the same seed gives the same bytes; the split partitions the whole corpus
    again = os.path.join(work, "again")
    r = run(m, "data", "--in", a, b, "--out", again, "--tokenizer", os.path.join(out, "tokenizer.model"),
            "--val-fraction", "0.1", "--seed", "3")
    check(r.returncode == 0, f"--tokenizer run exits 0 ({r.stderr[-1000:]})")
    check(sha256_file(os.path.join(again, "tokenizer.model")) == tokenizer_sha, "--tokenizer is copied")
    check(json.load(open(os.path.join(again, "data.json")))["tokenizer"]["trained"] is False, "trained: false")
    for name in ("train.bin", "val.bin"):
        check(sha256_file(os.path.join(again, name)) == sha256_file(os.path.join(out, name)),
              f"same seed, same {name}")
    other = os.path.join(work, "other_seed")
    run(m, "data", "--in", a, b, "--out", other, "--tokenizer", os.path.join(out, "tokenizer.model"),
        "--val-fraction", "0.1", "--seed", "4")
    check(sha256_file(os.path.join(other, "val.bin")) != sha256_file(os.path.join(out, "val.bin")),
          "another seed holds out other documents")
    whole = os.path.join(work, "whole")
    run(m, "data", "--in", a, b, "--out", whole, "--tokenizer", os.path.join(out, "tokenizer.model"),
        "--val-fraction", "0")
    _, all_ids = read_shard(os.path.join(whole, "train.bin"))
    check(sorted(documents(all_ids)) == sorted(train_docs + val_docs),
          "train + val documents are exactly the corpus's documents")
    check(read_shard(os.path.join(whole, "val.bin"))[0]["count"] == 0, "--val-fraction 0: empty val.bin")

    # --- the long-range mix
    long_dir = os.path.join(work, "long")
    r = run(m, "data", "--in", a, b, "--out", long_dir, "--tokenizer", os.path.join(out, "tokenizer.model"),
            "--long-range-ratio", "0.5", "--long-range-length", "512", "--seed", "5")
    check(r.returncode == 0, f"--long-range-ratio run exits 0 ({r.stderr[-1000:]})")
    long_data = json.load(open(os.path.join(long_dir, "data.json")))
    header, ids = read_shard(os.path.join(long_dir, "train_longrange.bin"))
    sequences = long_data["long_range"]["sequences"]
    expected = -(-long_data["shards"]["train"]["tokens"] // 2 // 512)  # ceil(0.5 * train / T)
    check(abs(sequences - expected) <= 1, f"about ratio x train tokens: {sequences} vs {expected}")
    check(header["record_length"] == 512 and header["count"] == 512 * sequences, "records of exactly T tokens")
    check(header["sha256"] == tokenizer_sha, "long-range shard carries the tokenizer sha256")
    records = [ids[i:i + 512] for i in range(0, len(ids), 512)]
    check(all(rec[0] == BOS and rec[-1] == EOS and rec.count(BOS) == 1 for rec in records),
          "each record is BOS ... EOS")
    check(0 <= long_data["long_range"]["distance_min"] <= long_data["long_range"]["distance_max"] < 512,
          f"distances reported: {long_data['long_range']}")
    kinds = long_data["long_range"]["kinds"]
    check(set(kinds) == {"pass_key", "key_value"} and sum(kinds.values()) == sequences,
          f"default kinds pass_key and key_value, counted: {kinds}")

    # --long-range-kinds repeat: every record repeats spans of itself, so many tokens continue an
    # 8-gram seen earlier in the same record; recorded in data.json and the command line.
    repeat_dir = os.path.join(work, "repeat")
    r = run(m, "data", "--in", a, b, "--out", repeat_dir, "--tokenizer", os.path.join(out, "tokenizer.model"),
            "--long-range-ratio", "0.5", "--long-range-length", "256", "--long-range-min-distance", "40",
            "--long-range-kinds", "repeat", "--seed", "5")
    check(r.returncode == 0, f"--long-range-kinds repeat exits 0 ({r.stderr[-1000:]})")
    repeat_data = json.load(open(os.path.join(repeat_dir, "data.json")))
    repeat_info = repeat_data["long_range"]
    check(list(repeat_info["kinds"]) == ["repeat"] and repeat_info["kinds"]["repeat"] == repeat_info["sequences"],
          f"only repeat sequences: {repeat_info}")
    check(repeat_info["distance_min"] >= 40, f"repeats at least --long-range-min-distance later: {repeat_info}")
    check("--long-range-kinds repeat" in repeat_data["command"], "the command records --long-range-kinds")
    _, repeat_ids = read_shard(os.path.join(repeat_dir, "train_longrange.bin"))

    def copied_share(records):
        copied = total = 0
        for rec in records:
            seen = set()
            for i in range(8, len(rec)):
                gram = tuple(rec[i - 8:i + 1])
                copied += gram in seen
                seen.add(gram)
                total += 1
        return copied / total

    repeat_share = copied_share([repeat_ids[i:i + 256] for i in range(0, len(repeat_ids), 256)])
    plain_share = copied_share(records)
    check(repeat_share > plain_share + 0.15,
          f"repeat records copy far more of themselves: {repeat_share:.2f} vs {plain_share:.2f}")

    # --long-range-repeat-spans: more spans per 512-token sequence copy more of it; recorded in
    # data.json and the command line.
    def repeat_run(name, *extra):
        out_dir = os.path.join(work, name)
        r = run(m, "data", "--in", a, b, "--out", out_dir, "--tokenizer", os.path.join(out, "tokenizer.model"),
                "--long-range-ratio", "0.5", "--long-range-length", "512", "--long-range-kinds", "repeat",
                "--seed", "5", *extra)
        check(r.returncode == 0, f"{name} exits 0 ({r.stderr[-1000:]})")
        info = json.load(open(os.path.join(out_dir, "data.json")))
        _, ids = read_shard(os.path.join(out_dir, "train_longrange.bin"))
        return info, copied_share([ids[i:i + 512] for i in range(0, len(ids), 512)])

    default_info, default_share = repeat_run("spans-default")
    dense_info, dense_share = repeat_run("spans-12", "--long-range-repeat-spans", "12")
    check(default_info["long_range"]["repeat_spans"] == 6 and dense_info["long_range"]["repeat_spans"] == 12,
          f"data.json records the spans: {default_info['long_range']}, {dense_info['long_range']}")
    check("--long-range-repeat-spans 12" in dense_info["command"]
          and "--long-range-repeat-spans" not in default_info["command"],
          "the command records --long-range-repeat-spans when it is not the default")
    check(dense_share > default_share + 0.1,
          f"12 spans copy more of a 512-token record than 6: {dense_share:.2f} vs {default_share:.2f}")
    print(f"repeat spans 6 / 12: copied share {default_share:.2f} / {dense_share:.2f}")
    r = run(m, "data", "--in", a, "--out", os.path.join(work, "spans-0"), "--long-range-ratio", "0.5",
            "--long-range-length", "512", "--long-range-repeat-spans", "0")
    check(r.returncode != 0 and "--long-range-repeat-spans" in r.stderr,
          f"--long-range-repeat-spans 0 is refused, naming the flag ({r.stderr[-300:]})")

    # --- errors a user can act on
    empty = os.path.join(work, "empty.txt")
    open(empty, "w").close()
    a_file = os.path.join(work, "a_file")
    open(a_file, "w").write("x")
    missing = os.path.join(work, "missing.txt")
    bad_cases = [
        (["data", "--in", missing, "--out", os.path.join(work, "e1")], f"'{missing}' does not exist"),
        (["data", "--in", empty, "--out", os.path.join(work, "e2")], "is empty"),
        (["data", "--in", a, "--out", a_file], "is not a directory"),
        (["data", "--in", a, "--out", os.path.join(work, "e3"), "--vocab-size", "100"], "too small"),
        (["data", "--in", a, "--out", os.path.join(work, "e4"), "--long-range-ratio", "0.1"],
         "--long-range-length"),
        (["data", "--in", a, "--out", os.path.join(work, "e5"), "--tokenizer", os.path.join(out, "tokenizer.model"),
          "--vocab-size", "500"], "disagrees"),
        (["data", "--in", a, "--out", os.path.join(work, "e6"), "--tokenizer", missing], missing),
        (["data", "--in", a, "--out", os.path.join(work, "e7"), "--tokenizer", os.path.join(out, "tokenizer.model"),
          "--long-range-ratio", "0.1", "--long-range-length", "20"], "too short"),
        (["data", "--in", a, "--out", os.path.join(work, "e8"), "--tokenizer", os.path.join(out, "tokenizer.model"),
          "--long-range-ratio", "0.1", "--long-range-length", "256", "--long-range-kinds", "pass_key,copy"],
         "--long-range-kinds: unknown long-range kind 'copy'"),
    ]
    for argv, expected_text in bad_cases:
        r = run(m, *argv)
        check(r.returncode != 0 and r.returncode < 128, f"{' '.join(argv)}: non-zero exit without a crash ({r.returncode})")
        check(expected_text in r.stderr, f"{' '.join(argv)}: stderr mentions {expected_text!r}; got {r.stderr.strip()[-500:]!r}")

    r = run(m, "data", "--help")
    check(r.returncode == 0 and "--long-range-ratio" in r.stdout and "--val-fraction" in r.stdout,
          "data --help lists the flags")

    return summary()


if __name__ == "__main__":
    sys.exit(main())
