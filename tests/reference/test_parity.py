"""End-to-end parity of the C++ reference forward with the PyTorch reference (CONVENTIONS.md 5).

  /usr/bin/python3 test_parity.py --mixattn PATH --dump-logits PATH --workdir DIR [--presets a,b]
  /usr/bin/python3 test_parity.py --selftest

Parity mode, per case (preset x shape): `mixattn init` writes a random model; its config.json
must carry presets_ref.preset_layers(preset, L) and the requested shape, its safetensors exactly
the tensors the spec names (readers have no k/v); `dump_logits` runs the C++ forward over a random
token sequence longer than three windows; the logits must match the PyTorch forward:
max|cpp - torch| / max|torch| <= 1e-4.

Self-test mode checks the PyTorch model on its own (no C++): properties the spec implies, an
independent loop-based attention, and negative controls showing that the 1e-4 tolerance catches
the plausible mistakes (off-by-one window, other RoPE layout, recomputed reader KV, ...).

Both modes end with a line `N passed, M failed` and exit 1 on any failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import presets_ref  # noqa: E402  (no torch needed)

try:
    import numpy as np
    import torch
    import mixattn_ref as ref
except ImportError as e:  # a clear message instead of a traceback
    print(f"FAIL  cannot import torch/numpy ({e}); install Debian's python3-torch and "
          f"python3-numpy and run with /usr/bin/python3")
    print("0 passed, 1 failed")
    sys.exit(1)

REL_TOLERANCE = 1e-4

# The model shape every parity case uses (only L, kv-heads and tying vary).
HIDDEN, HEADS, HEAD_DIM, FFN, VOCAB, WINDOW = 64, 4, 16, 96, 97, 8
SEQ_LEN = 3 * WINDOW + 7  # 31: longer than three windows


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max |actual - expected|, that / max |expected|)."""
    max_abs = (actual.to(torch.float64) - expected.to(torch.float64)).abs().max().item()
    scale = expected.abs().max().item()
    return max_abs, (max_abs / scale if scale > 0 else math.inf)


class Tally:
    def __init__(self):
        self.passed, self.failed = 0, 0

    def record(self, ok: bool, line: str, details: list[str] = ()) -> None:
        self.passed += ok
        self.failed += not ok
        print(f"{line} {'PASS' if ok else 'FAIL'}", flush=True)
        if not ok:
            for d in details:
                print(f"    {d}", flush=True)

    def finish(self) -> int:
        print(f"{self.passed} passed, {self.failed} failed")
        return 0 if self.failed == 0 else 1


# ----------------------------------------------------------------------------------------------
# Parity against the C++ tools


@dataclass
class Case:
    preset: str
    layers: int
    kv_heads: int
    untied: bool

    @property
    def name(self) -> str:
        return (f"{self.preset}-L{self.layers}-kv{self.kv_heads}-"
                f"{'untied' if self.untied else 'tied'}")

    @property
    def seed(self) -> int:  # stable whatever --presets selects
        return zlib.crc32(self.name.encode()) % 1_000_000 + 1


def parity_cases(presets: list[str]) -> list[Case]:
    cases = [Case(p, 8, 2, False) for p in presets]           # L=8, GQA (NH=4, NKV=2), tied
    cases += [Case(p, 13, 1, True) for p in presets]          # L=13, MQA, untied
    extras = [Case("ma", 8, 4, True),                          # MHA
              Case("ma-offset-slideshare", 24, 2, False),      # the paper-scale layout
              Case("characterai", 24, 1, True)]
    return cases + [c for c in extras if c.preset in presets]


def run_tool(argv: list[str], what: str) -> str | None:
    """Runs a C++ tool; returns None on success, else a description of the failure."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return f"{what} timed out after 120 s: {' '.join(argv)}"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return f"{what} exited {proc.returncode}: {' '.join(argv)}\n      " + "\n      ".join(tail)
    return None


def check_config(case: Case, config_dict: dict, config: ref.Config) -> list[str]:
    problems = []
    expected_shape = {"hidden_size": HIDDEN, "num_hidden_layers": case.layers,
                      "num_attention_heads": HEADS, "num_key_value_heads": case.kv_heads,
                      "head_dim": HEAD_DIM, "intermediate_size": FFN, "vocab_size": VOCAB,
                      "tie_word_embeddings": not case.untied}
    for field, want in expected_shape.items():
        if config_dict.get(field) != want:
            problems.append(f"config.json {field} = {config_dict.get(field)!r}, expected {want!r}")
    plan = presets_ref.preset_layers(case.preset, case.layers)
    got = [("F" if l.kind == "full" else "S", l.kv_source) for l in config.layers]
    if got != plan:
        problems.append(f"config.json layer plan  {presets_ref.layout_string(got)}")
        problems.append(f"presets_ref expects     {presets_ref.layout_string(plan)}")
    for i, layer in enumerate(config.layers):
        if layer.kind == "sliding" and layer.window != WINDOW:
            problems.append(f"config.json layer {i}: sliding_window {layer.window}, "
                            f"expected {WINDOW}")
    if config.max_position_embeddings < SEQ_LEN:
        problems.append(f"config.json max_position_embeddings {config.max_position_embeddings} "
                        f"< test length {SEQ_LEN}")
    return problems


def run_case(case: Case, args, tally: Tally) -> None:
    case_dir = args.workdir / case.name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    args.workdir.mkdir(parents=True, exist_ok=True)
    line = f"{case.name:<36}"
    init = [str(args.mixattn), "init", "--preset", case.preset, "--layers", str(case.layers),
            "--hidden", str(HIDDEN), "--heads", str(HEADS), "--kv-heads", str(case.kv_heads),
            "--head-dim", str(HEAD_DIM), "--ffn", str(FFN), "--vocab", str(VOCAB),
            "--window", str(WINDOW), "--seed", str(case.seed)]
    init += ["--untied"] if case.untied else []
    init += ["--out", str(case_dir)]
    error = run_tool(init, "mixattn init")
    if error:
        return tally.record(False, f"{line} max_abs=      n/a rel=      n/a", [error])

    try:
        config_dict = json.loads((case_dir / "config.json").read_text())
        config = ref.Config.from_dict(config_dict, str(case_dir / "config.json"))
        weights, _ = ref.read_safetensors(case_dir / "model.safetensors")
    except (OSError, ValueError, KeyError, TypeError, ref.ReferenceError) as e:
        return tally.record(False, f"{line} max_abs=      n/a rel=      n/a", [f"{e}"])
    problems = check_config(case, config_dict, config)
    problems += [f"model.safetensors: {p}" for p in ref.check_tensor_names(config, weights)]
    if problems:
        return tally.record(False, f"{line} max_abs=      n/a rel=      n/a", problems)

    rng = np.random.default_rng(case.seed)
    tokens = rng.integers(0, VOCAB, size=SEQ_LEN).astype("<i4")
    tokens_path, logits_path = case_dir / "tokens.i32", case_dir / "logits.f32"
    tokens.tofile(tokens_path)
    error = run_tool([str(args.dump_logits), str(case_dir), str(tokens_path), str(logits_path)],
                     "dump_logits")
    if error:
        return tally.record(False, f"{line} max_abs=      n/a rel=      n/a", [error])
    cpp = np.fromfile(logits_path, dtype="<f4")
    if cpp.size != SEQ_LEN * VOCAB:
        return tally.record(False, f"{line} max_abs=      n/a rel=      n/a",
                            [f"{logits_path}: {cpp.size} floats, expected {SEQ_LEN} x {VOCAB}"])
    cpp = torch.from_numpy(cpp.reshape(SEQ_LEN, VOCAB).astype(np.float64))

    expected = ref.MixAttentionRef(config, weights).forward(tokens.tolist())
    max_abs, rel = relative_error(cpp, expected)
    ok = bool(torch.isfinite(cpp).all()) and rel <= REL_TOLERANCE
    details = []
    if not ok:
        per_pos = (cpp - expected).abs().max(dim=1).values
        first_bad = int((per_pos > REL_TOLERANCE * expected.abs().max()).nonzero()[0, 0]) \
            if rel > REL_TOLERANCE else -1
        details.append(f"layout {presets_ref.layout_string(presets_ref.preset_layers(case.preset, case.layers))}")
        details.append(f"first position over tolerance: {first_bad} (window {WINDOW}); "
                       f"max |diff| per position: "
                       + " ".join(f"{v:.1e}" for v in per_pos.tolist()))
        if not torch.isfinite(cpp).all():
            details.append("C++ logits contain NaN or Inf")
    tally.record(ok, f"{line} max_abs={max_abs:9.3e} rel={rel:9.3e}", details)


def parity(args) -> int:
    tally = Tally()
    presets = args.presets.split(",") if args.presets else list(presets_ref.PRESET_NAMES)
    unknown = [p for p in presets if p not in presets_ref.PRESET_NAMES]
    if unknown:
        print(f"FAIL  unknown preset(s) {unknown}; known: {presets_ref.PRESET_NAMES}")
        return _failed(1).finish()
    cases = parity_cases(presets)
    missing = [f"{flag} {path}" for flag, path in (("--mixattn", args.mixattn),
                                                   ("--dump-logits", args.dump_logits))
               if path is None or not (path.is_file() and os.access(path, os.X_OK))]
    if missing:
        print(f"FAIL  tool(s) missing or not executable: {', '.join(missing)}")
        return _failed(len(cases)).finish()
    start = time.time()
    for case in cases:
        run_case(case, args, tally)
    print(f"{len(cases)} cases in {time.time() - start:.1f} s (T={SEQ_LEN}, W={WINDOW}, "
          f"tolerance {REL_TOLERANCE:g})")
    return tally.finish()


def _failed(n: int) -> Tally:
    tally = Tally()
    tally.failed = n
    return tally


# ----------------------------------------------------------------------------------------------
# Self-test of the PyTorch model alone


def small_config(plan: list[tuple[str, int]], window: int = 4, kv_heads: int = 2, heads: int = 4,
                 head_dim: int = 8, hidden: int = 32, tied: bool = True) -> ref.Config:
    layers = [ref.LayerSpec("full" if kind == "F" else "sliding", 0 if kind == "F" else window, src)
              for kind, src in plan]
    return ref.Config(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      head_dim=head_dim, intermediate_size=48, vocab_size=53, rope_theta=10000.0,
                      rms_norm_eps=1e-5, max_position_embeddings=64, tie_word_embeddings=tied,
                      layers=layers)


def loop_attention(q, k, v, window):
    """Attention one (position, head) at a time, straight from the definition."""
    T, NH, D = q.shape
    group = NH // k.shape[1]
    out = torch.zeros(T, NH, D, dtype=q.dtype)
    for p in range(T):
        for n in range(NH):
            keys = [j for j in range(p + 1) if window == 0 or p - j < window]
            scores = torch.stack([q[p, n] @ k[j, n // group] for j in keys]) / math.sqrt(D)
            weights = torch.exp(scores - scores.max())
            weights = weights / weights.sum()
            out[p, n] = sum(wt * v[j, n // group] for wt, j in zip(weights, keys))
    return out.reshape(T, NH * D)


@contextlib.contextmanager
def patched(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def interleaved_rope(x, cos, sin):
    """GPT-J / Meta-original layout: rotates pairs (x[2i], x[2i+1]) — the wrong one here."""
    half = x.shape[-1] // 2
    c, s = cos[:, None, :half], sin[:, None, :half]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = even * c - odd * s
    out[..., 1::2] = even * s + odd * c
    return out


def selftest() -> int:
    tally = Tally()
    torch.manual_seed(0)
    T = 3 * 4 + 7  # longer than three windows of 4
    gen = np.random.default_rng(0)
    tokens = gen.integers(0, 53, size=T).tolist()

    def check(ok, what, detail=""):
        tally.record(bool(ok), f"{what:<72}", [detail] if detail else [])

    def logits(config, weights, toks=tokens, **kw):
        return ref.MixAttentionRef(config, weights, **kw).forward(toks)

    # 1. safetensors writer/reader round trip, F32 exact and BF16 truncated.
    with tempfile.TemporaryDirectory() as tmp:
        tensors = {"a": torch.randn(3, 5), "b.c": torch.randn(7), "z": torch.randn(2, 2, 2)}
        path = Path(tmp) / "t.safetensors"
        ref.write_safetensors(path, tensors, {"format": "pt"})
        back, meta = ref.read_safetensors(path)
        check(set(back) == set(tensors) and meta == {"format": "pt"}
              and all(torch.equal(back[n], tensors[n]) for n in tensors),
              "safetensors F32 round trip is exact")
        ref.write_safetensors(path, tensors, dtype="BF16")
        back, _ = ref.read_safetensors(path)
        truncated = {n: torch.from_numpy((t.numpy().view(np.uint32) & 0xFFFF0000).view(np.float32))
                     for n, t in tensors.items()}
        check(all(torch.equal(back[n], truncated[n]) for n in tensors),
              "safetensors BF16 reads as the upper 16 bits of an f32")
        raw = bytearray(path.read_bytes())
        raw[:8] = (len(raw) * 2).to_bytes(8, "little")
        path.write_bytes(bytes(raw))
        try:
            ref.read_safetensors(path)
            check(False, "safetensors with a bad header length is rejected")
        except ref.ReferenceError:
            check(True, "safetensors with a bad header length is rejected")

    # 2. Vectorised masked attention equals attention written one (p, head) at a time.
    plan = presets_ref.preset_layers("ma-pairs", 8)
    config = small_config(plan)
    weights = ref.random_weights(config, seed=1)
    fast = logits(config, weights)
    slow = logits(config, weights, attention_fn=loop_attention)
    check(relative_error(slow, fast)[1] < 1e-12, "masked attention == loop attention (ma-pairs, GQA)",
          f"rel {relative_error(slow, fast)[1]:.2e}")

    # 3. A sliding layer with W >= T is full attention; W = T-1 is not.
    full_cfg = small_config([("F", i) for i in range(3)])
    w3 = ref.random_weights(full_cfg, seed=2)
    full = logits(full_cfg, w3)
    wide = logits(small_config([("S", i) for i in range(3)], window=T), w3)
    narrow = logits(small_config([("S", i) for i in range(3)], window=T - 1), w3)
    check(relative_error(wide, full)[1] < 1e-13, "sliding with W >= T equals full attention")
    check(relative_error(narrow, full)[1] > 1e-6, "sliding with W = T-1 differs from full",
          f"rel {relative_error(narrow, full)[1]:.2e}")

    # 4. Readers: with the owner's q weights and the same input, a reader reproduces the owner's
    #    attention output; a sliding reader of a full owner equals a sliding owner computing the
    #    same K/V; with a live layer in between, reading is not the same as recomputing.
    for reader_kind in ("F", "S"):
        cfg = small_config([("F", 0), (reader_kind, 0)])
        w = ref.random_weights(cfg, seed=3)
        for name in ("input_layernorm.weight", "self_attn.q_proj.weight"):
            w[f"model.layers.1.{name}"] = w[f"model.layers.0.{name}"].clone()
        w["model.layers.0.self_attn.o_proj.weight"].zero_()   # layer 0 leaves x unchanged
        w["model.layers.0.mlp.down_proj.weight"].zero_()
        trace = {}
        ref.MixAttentionRef(cfg, w).forward(tokens, trace)
        if reader_kind == "F":
            diff = (trace[("attn", 1)] - trace[("attn", 0)]).abs().max().item()
            check(diff < 1e-13, "full reader with owner's q weights reproduces owner's attention")
        owner_cfg = small_config([("F", 0), (reader_kind, 1)])
        owner_w = dict(w)
        for name in ("k_proj", "v_proj"):
            owner_w[f"model.layers.1.self_attn.{name}.weight"] = \
                w[f"model.layers.0.self_attn.{name}.weight"]
        same = relative_error(logits(cfg, w), logits(owner_cfg, owner_w))[1]
        check(same < 1e-13, f"{reader_kind}>0 reader == {reader_kind} owner with copied k/v "
              "(same input)", f"rel {same:.2e}")
    live_w = ref.random_weights(cfg, seed=4)
    owner_w = dict(live_w)
    for name in ("k_proj", "v_proj"):
        owner_w[f"model.layers.1.self_attn.{name}.weight"] = \
            live_w[f"model.layers.0.self_attn.{name}.weight"]
    differ = relative_error(logits(cfg, live_w), logits(owner_cfg, owner_w))[1]
    check(differ > 1e-3, "a reader uses the owner's stored KV, not K/V of its own input",
          f"rel {differ:.2e}")

    # 5. Causality: changing token p changes nothing before p, and something at p.
    changed = list(tokens)
    p = 11
    changed[p] = (changed[p] + 1) % 53
    before, after = fast, logits(config, weights, changed)
    check((before[:p] - after[:p]).abs().max().item() < 1e-13
          and (before[p] - after[p]).abs().max().item() > 1e-6,
          f"causal: changing token {p} leaves logits 0..{p - 1} unchanged, changes {p}")

    # 6. Window semantics (W tokens including itself): two sliding layers of W=5 let token 0
    #    reach position 2*(W-1) = 8 and no further.
    cfg = small_config([("S", 0), ("S", 1)], window=5)
    w = ref.random_weights(cfg, seed=5)
    changed = list(tokens)
    changed[0] = (changed[0] + 1) % 53
    delta = (logits(cfg, w) - logits(cfg, w, changed)).abs().max(dim=1).values
    check(delta[8] > 1e-9 and delta[9:].max() < 1e-13,
          "sliding W=5 x 2 layers: token 0 reaches position 8, not 9",
          f"per-position change {delta.tolist()}")

    # 7. RoPE: identity at position 0, preserves norms, scores depend only on p - j, and equals
    #    the complex rotation of pairs (x_i, x_{i+D/2}) by p * theta^(-2i/D).
    D, theta = 16, 10000.0
    cos, sin = ref.rope_cos_sin(40, D, theta)
    x = torch.randn(40, 3, D, dtype=torch.float64)
    rot = ref.apply_rope(x, cos, sin)
    check(torch.allclose(rot[0], x[0], atol=0, rtol=0), "RoPE is the identity at position 0")
    check(torch.allclose(rot.norm(dim=-1), x.norm(dim=-1), rtol=1e-13), "RoPE preserves norms")
    qv, kv = torch.randn(D, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    q_all = ref.apply_rope(qv.expand(40, 1, D), cos, sin)[:, 0]
    k_all = ref.apply_rope(kv.expand(40, 1, D), cos, sin)[:, 0]
    check(abs(q_all[17] @ k_all[5] - q_all[32] @ k_all[20]) < 1e-12,
          "RoPE: q_p . k_j depends only on p - j")
    z = torch.complex(x[..., :D // 2], x[..., D // 2:])
    angle = torch.arange(40, dtype=torch.float64)[:, None] * theta ** (
        -2.0 * torch.arange(D // 2, dtype=torch.float64) / D)
    zr = z * torch.polar(torch.ones_like(angle), angle)[:, None, :]
    check(torch.allclose(rot, torch.cat([zr.real, zr.imag], -1), atol=1e-13),
          "RoPE == complex rotation of (x_i, x_{i+D/2}) by p*theta^(-2i/D)")

    # 8. GQA grouping: head n reads KV head n // (NH/NKV) (not n % NKV).
    gqa_cfg = small_config(presets_ref.preset_layers("ma", 8), kv_heads=2)
    mha_cfg = small_config(presets_ref.preset_layers("ma", 8), kv_heads=4)
    gqa_w = ref.random_weights(gqa_cfg, seed=6)
    mha_w, wrong_w = dict(gqa_w), dict(gqa_w)
    for name, w in gqa_w.items():
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            heads = w.reshape(2, 8, -1)
            mha_w[name] = heads[[0, 0, 1, 1]].reshape(32, -1)     # n // 2
            wrong_w[name] = heads[[0, 1, 0, 1]].reshape(32, -1)   # n % 2
    base = logits(gqa_cfg, gqa_w)
    check(relative_error(logits(mha_cfg, mha_w), base)[1] < 1e-13,
          "GQA == MHA with KV head n // group duplicated")
    check(relative_error(logits(mha_cfg, wrong_w), base)[1] > 1e-3,
          "GQA != MHA with KV head n % NKV (the grouping is observable)")

    # 9. Untied lm_head equal to the embedding gives the tied model's logits.
    untied_cfg = small_config(presets_ref.preset_layers("ma", 8), kv_heads=2, tied=False)
    untied_w = dict(gqa_w)
    untied_w["lm_head.weight"] = gqa_w["model.embed_tokens.weight"].clone()
    check(relative_error(logits(untied_cfg, untied_w), base)[1] < 1e-14,
          "untied with lm_head == embed equals tied")

    # 10. Model files: the loader rejects K/V tensors on a reader and missing tensors, and a
    #     model written to disk (config.json + safetensors) loads back to the same logits.
    extra = dict(gqa_w)
    extra["model.layers.2.self_attn.k_proj.weight"] = torch.zeros(16, 32)  # layer 2 is F>0
    missing = dict(gqa_w)
    del missing["model.layers.1.mlp.up_proj.weight"]
    problems = ref.check_tensor_names(gqa_cfg, extra) + ref.check_tensor_names(gqa_cfg, missing)
    check(len(problems) == 2 and "unexpected tensor model.layers.2.self_attn.k_proj" in problems[0]
          and "missing tensor model.layers.1.mlp.up_proj" in problems[1],
          "tensor-name check flags reader k/v and missing tensors", "; ".join(problems))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(gqa_cfg.to_dict()))
        ref.write_safetensors(Path(tmp) / "model.safetensors", gqa_w)
        loaded = ref.MixAttentionRef.load(tmp).forward(tokens)
        check(torch.equal(loaded, base), "config.json + safetensors on disk load to the same model")
        d = gqa_cfg.to_dict()
        d["kv_source_layers"][2] = 1  # layer 1 is a sliding owner: a full layer may not read it
        (Path(tmp) / "config.json").write_text(json.dumps(d))
        try:
            ref.MixAttentionRef.load(tmp)
            check(False, "config with a full layer reading a sliding cache is rejected")
        except ref.ReferenceError as e:
            check("full layer 2 reads sliding layer 1" in str(e),
                  "config with a full layer reading a sliding cache is rejected", str(e))

    # 11. Negative controls: each plausible implementation mistake moves the logits of an
    #     'ma' model at the parity shape far beyond the 1e-4 tolerance.
    plan = presets_ref.preset_layers("ma", 8)
    cfg = small_config(plan, window=WINDOW, kv_heads=2, heads=HEADS, head_dim=HEAD_DIM,
                       hidden=HIDDEN)
    w = ref.random_weights(cfg, seed=7)
    toks = gen.integers(0, 53, size=SEQ_LEN).tolist()
    good = logits(cfg, w, toks)

    def mistake(what, other):
        rel = relative_error(other, good)[1]
        check(rel > 100 * REL_TOLERANCE, f"control: {what} is caught (rel {rel:.1e})")

    for delta_w in (-1, +1):
        mistake(f"window {WINDOW + delta_w} instead of {WINDOW}",
                logits(small_config(plan, window=WINDOW + delta_w, kv_heads=2, heads=HEADS,
                                    head_dim=HEAD_DIM, hidden=HIDDEN), w, toks))
    with patched(ref, "apply_rope", interleaved_rope):
        mistake("interleaved (GPT-J) RoPE", logits(cfg, w, toks))
    recompute_cfg = small_config([(kind, i) for i, (kind, _) in enumerate(plan)], window=WINDOW,
                                 kv_heads=2, heads=HEADS, head_dim=HEAD_DIM, hidden=HIDDEN)
    recompute_w = dict(w)
    for i, (_, src) in enumerate(plan):
        for name in ("k_proj", "v_proj"):
            recompute_w[f"model.layers.{i}.self_attn.{name}.weight"] = \
                w[f"model.layers.{src}.self_attn.{name}.weight"]
    mistake("readers recompute K/V from their own input", logits(recompute_cfg, recompute_w, toks))
    mistake("softmax scale 1/D instead of 1/sqrt(D)",
            logits(cfg, w, toks, attention_fn=lambda q, k, v, win: ref.masked_attention(
                q * math.sqrt(q.shape[-1]) / q.shape[-1], k, v, win)))
    plain_rope_cos_sin = ref.rope_cos_sin

    def rope_from_position_1(T, D, theta):
        cos, sin = plain_rope_cos_sin(T + 1, D, theta)
        return cos[1:], sin[1:]

    with patched(ref, "rope_cos_sin", rope_from_position_1):
        shifted = relative_error(logits(cfg, w, toks), good)[1]
    check(shifted < 1e-12, "RoPE positions starting at 1: same logits (only p - j matters)",
          f"rel {shifted:.2e}")

    layer_calls = []

    def rotate_reader_keys_again(q, k, v, window):
        i = len(layer_calls) % len(plan)
        layer_calls.append(i)
        if plan[i][1] != i:  # a reader: apply RoPE to the stored (already rotated) keys again
            cos, sin = ref.rope_cos_sin(k.shape[0], k.shape[-1], cfg.rope_theta)
            k = ref.apply_rope(k, cos, sin)
        return ref.masked_attention(q, k, v, window)

    mistake("readers rotate the owner's keys again", logits(cfg, w, toks,
                                                            attention_fn=rotate_reader_keys_again))
    return tally.finish()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixattn", type=Path, help="the mixattn CLI (runs `mixattn init`)")
    parser.add_argument("--dump-logits", type=Path, help="the C++ dump_logits test tool")
    parser.add_argument("--workdir", type=Path, help="scratch folder for the models")
    parser.add_argument("--presets", help="comma-separated subset of presets (default: all)")
    parser.add_argument("--selftest", action="store_true",
                        help="check the PyTorch model alone (no C++ needed)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if args.selftest:
        return selftest()
    if args.workdir is None:
        parser.error("--workdir is required for the parity run (or use --selftest)")
    return parity(args)


if __name__ == "__main__":
    sys.exit(main())
