"""The layer-plan preset rule of shared/PRESETS.md, reimplemented independently of the C++.

preset_layers(name, L) -> [(kind, kv_source), ...] with kind 'F' (full) or 'S' (sliding) and
kv_source the layer whose KV the layer attends over (its own index: it computes its own).

Run as a script (`python3 presets_ref.py [--presets-md PATH]`) it is a self-test: it rebuilds
every 24-layer and 8-layer line of PRESETS.md (layout, owners, kv_token_layers, reduction) and
fails loudly on any difference or if PRESETS.md cannot be found. No torch needed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PRESET_NAMES = [
    "standard", "all-sliding", "ma", "ma-endslide", "ma-offset", "ma-pairs",
    "ma-offset-slideshare", "ma-pairs-slideshare", "characterai",
]

# The repository is two folders up (tests/reference/); shared/ sits beside the repository.
DEFAULT_PRESETS_MD = Path(__file__).resolve().parents[2].parent / "shared" / "PRESETS.md"


def global_positions(L: int) -> list[int]:
    """G = { floor(k*(L-1)/3 + 0.5) : k = 0..3 }, in exact integer arithmetic."""
    return [(2 * k * (L - 1) + 3) // 6 for k in range(4)]


def offset_position(L: int) -> int:
    """ma-offset's first global layer: floor((L-1)/6 + 0.5)."""
    return (L - 1 + 3) // 6


def _sliding_groups(segment: list[int], slideshare: bool) -> list[list[int]]:
    """A segment is one group (slideshare) or consecutive groups of 2 (the last may be 1)."""
    if slideshare:
        return [segment] if segment else []
    return [segment[g:g + 2] for g in range(0, len(segment), 2)]


def _characterai(L: int) -> list[tuple[str, int]]:
    """Blocks of 6: [F S S>. S S>. S>.]; every global layer reads layer 0's KV."""
    layers = []
    for i in range(L):
        block, r = i - i % 6, i % 6
        if r == 0:
            layers.append(("F", 0))           # layer 0 computes; later globals read it
        elif r in (1, 3):
            layers.append(("S", i))           # first layer of a sliding group computes
        elif r == 2:
            layers.append(("S", block + 1))   # the pair
        else:
            layers.append(("S", block + 3))   # the triple
    return layers


def preset_layers(name: str, L: int) -> list[tuple[str, int]]:
    if L < 8:
        raise ValueError(f"the preset rule needs L >= 8 layers, got {L}")
    if name not in PRESET_NAMES:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESET_NAMES)}")
    if name == "standard":
        return [("F", i) for i in range(L)]
    if name == "all-sliding":
        return [("S", i) for i in range(L)]
    if name == "characterai":
        return _characterai(L)

    slideshare = name.endswith("-slideshare")
    base = name.removesuffix("-slideshare")
    G = global_positions(L)
    if base == "ma-endslide":
        G = G[:-1]                             # the last layer joins the last sliding segment
    if base == "ma-offset":
        G = [offset_position(L)] + G[1:]       # layers before it are sliding

    layers: list[tuple[str, int] | None] = [None] * L
    for k, g in enumerate(G):
        if base == "ma-pairs":                 # G[0] computes, G[1] reads it; G[2], G[3] likewise
            owner = G[k - k % 2]
        else:                                  # the first global layer computes, the rest read it
            owner = G[0]
        layers[g] = ("F", owner)

    # Segments: maximal runs of non-global layers.
    segments, current = [], []
    for i in range(L):
        if layers[i] is None:
            current.append(i)
        elif current:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    for segment in segments:
        for group in _sliding_groups(segment, slideshare):
            for i in group:
                layers[i] = ("S", group[0])
    return layers


def layout_string(layers: list[tuple[str, int]]) -> str:
    return " ".join(kind if src == i else f"{kind}>{src}" for i, (kind, src) in enumerate(layers))


def owners(layers: list[tuple[str, int]]) -> int:
    return sum(1 for i, (_, src) in enumerate(layers) if src == i)


def kv_token_layers(layers: list[tuple[str, int]], T: int, W: int) -> int:
    """Token slots held per sequence at length T: each owner keeps what its users need
    (T tokens if a full layer uses it, else min(W, T))."""
    need = {}
    for kind, src in layers:
        need[src] = max(need.get(src, 0), T if kind == "F" else min(W, T))
    return sum(need.values())


def format_line(name: str, L: int, T: int, W: int) -> str:
    layers = preset_layers(name, L)
    kv = kv_token_layers(layers, T, W)
    reduction = kv_token_layers(preset_layers("standard", L), T, W) / kv
    return (f"{name:<22} owners={owners(layers):2d} kv_token_layers@{T}={kv:7d} "
            f"reduction={reduction:5.1f}x  {layout_string(layers)}")


# ----------------------------------------------------------------------------------------------
# Self-test against PRESETS.md

_SECTION = re.compile(r"^## The (\d+)-layer instances \(.*T=(\d+), W=(\d+)\)", re.M)
_LINE = re.compile(r"^(\S+)\s+owners=\s*(\d+)\s+kv_token_layers@(\d+)=\s*(\d+)\s+"
                   r"reduction=\s*([\d.]+)x\s+(.+?)\s*$")


def parse_presets_md(text: str) -> dict[int, tuple[int, int, dict[str, dict]]]:
    """{L: (T, W, {name: {owners, kv, T, reduction, layout}})} for every instance table."""
    tables = {}
    for m in _SECTION.finditer(text):
        L, T, W = int(m.group(1)), int(m.group(2)), int(m.group(3))
        rest = text[m.end():]
        block = re.search(r"```\n(.*?)```", rest, re.S)
        if block is None:
            raise ValueError(f"PRESETS.md: the {L}-layer section has no code block")
        rows = {}
        for line in block.group(1).splitlines():
            if not line.strip():
                continue
            lm = _LINE.match(line)
            if lm is None:
                raise ValueError(f"PRESETS.md: cannot parse line: {line!r}")
            rows[lm.group(1)] = {"owners": int(lm.group(2)), "T": int(lm.group(3)),
                                 "kv": int(lm.group(4)), "reduction": lm.group(5),
                                 "layout": " ".join(lm.group(6).split()), "line": line.rstrip()}
        tables[L] = (T, W, rows)
    return tables


def structural_problems(name: str, L: int) -> list[str]:
    """Rules every plan must obey (docs/ARCHITECTURE.md), checked for any L."""
    layers = preset_layers(name, L)
    problems = []
    if len(layers) != L:
        problems.append(f"{len(layers)} layers, expected {L}")
    for i, (kind, src) in enumerate(layers):
        if not 0 <= src <= i:
            problems.append(f"layer {i} reads layer {src}, outside [0, {i}]")
        elif layers[src][1] != src:
            problems.append(f"layer {i} reads layer {src}, which does not own its KV")
        elif kind == "F" and layers[src][0] == "S":
            problems.append(f"full layer {i} reads sliding layer {src}")
    return problems


def self_test(presets_md: Path) -> int:
    passed, failed = 0, 0

    def report(ok: bool, what: str, detail: str = "") -> None:
        nonlocal passed, failed
        passed, failed = passed + ok, failed + (not ok)
        print(f"{'PASS' if ok else 'FAIL'}  {what}" + (f"\n      {detail}" if detail and not ok else ""))

    if not presets_md.is_file():
        print(f"FAIL  PRESETS.md not found at {presets_md} (pass --presets-md PATH)")
        print("0 passed, 1 failed")
        return 1
    tables = parse_presets_md(presets_md.read_text())
    for L in (24, 8):
        report(L in tables, f"PRESETS.md has the {L}-layer table")
    for L, (T, W, rows) in sorted(tables.items(), reverse=True):
        report(set(rows) == set(PRESET_NAMES), f"L={L}: table names the 9 presets",
               f"table: {sorted(rows)}; expected: {sorted(PRESET_NAMES)}")
        for name in PRESET_NAMES:
            if name not in rows:
                continue
            row, layers = rows[name], preset_layers(name, L)
            ours = {"layout": layout_string(layers), "owners": owners(layers),
                    "kv": kv_token_layers(layers, T, W), "T": T,
                    "reduction": f"{kv_token_layers(preset_layers('standard', L), T, W) / kv_token_layers(layers, T, W):.1f}"}
            diffs = [f"{key}: PRESETS.md {row[key]!r}, ours {ours[key]!r}"
                     for key in ours if row[key] != ours[key]]
            exact = format_line(name, L, T, W) == row["line"]
            report(not diffs, f"L={L:2d} {name:<22} layout/owners/kv/reduction"
                   + ("" if exact else " (fields equal, spacing differs)"), "; ".join(diffs))
    structural = [f"{name} L={L}: {p}" for name in PRESET_NAMES for L in range(8, 65)
                  for p in structural_problems(name, L)]
    report(not structural, "every preset at L=8..64 obeys the KV-source rules",
           "; ".join(structural[:5]))
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets-md", type=Path, default=DEFAULT_PRESETS_MD)
    parser.add_argument("--print", dest="print_L", type=int, metavar="L",
                        help="print every preset's line for L layers (T=32768, W=1024) and exit")
    args = parser.parse_args(argv)
    if args.print_L:
        for name in PRESET_NAMES:
            print(format_line(name, args.print_L, 32768, 1024))
        return 0
    return self_test(args.presets_md)


if __name__ == "__main__":
    sys.exit(main())
