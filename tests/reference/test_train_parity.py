"""Training parity of the C++ trainer with PyTorch autograd (issue 3, "Proof of correctness").

  /usr/bin/python3 test_train_parity.py --mixattn PATH --train-steps PATH --workdir DIR

Per case (every preset of PRESETS.md, tied and untied, GQA and MQA): `mixattn init` writes a
random model; `train_steps` (tests/tools) computes the loss and gradients of one batch of B
sequences in f32 and then takes 3 steps of gradient clipping + AdamW; the PyTorch reference model
(mixattn_ref.py, float64) does the same with torch.autograd, torch.nn.utils.clip_grad_norm_ and
torch.optim.AdamW (weight decay on the blocks' linear matrices only). Loss and every gradient
must agree to 1e-4 relative (max |cpp - torch| / max |torch| per tensor), and so must every
weight after the 3 steps, except for the allowance weights_error explains: AdamW normalises each
gradient element, so an element whose gradient is within f32 rounding of zero moves by an amount
rounding decides. The count of such elements is printed.

A negative control runs first: the same comparison with the C++ side told to round its matmuls
to bf16 must fail the 1e-4 gradient bound, so the bound is tight enough to see a real error.

Ends with `N passed, M failed`; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import presets_ref  # noqa: E402

try:
    import numpy as np
    import torch
    import mixattn_ref as ref
except ImportError as e:
    print(f"FAIL  cannot import torch/numpy ({e}); run with Debian's /usr/bin/python3")
    print("0 passed, 1 failed")
    sys.exit(1)

REL_TOLERANCE = 1e-4
HIDDEN, HEADS, HEAD_DIM, FFN, VOCAB, WINDOW = 32, 4, 8, 48, 67, 6
BATCH, SEQ_LEN = 3, 3 * WINDOW + 5
STEPS, LR, CLIP = 3, 1e-3, 1.0
BETAS, EPS, WEIGHT_DECAY = (0.9, 0.95), 1e-8, 0.1


def decays(name: str) -> bool:
    """The trainer's rule (src/train/optimizer.h): only the blocks' linear matrices decay."""
    return name.startswith("model.layers.") and name.endswith("proj.weight")


def torch_steps(config, weights, inputs, targets):
    """Loss and gradients at the initial weights, and the weights after STEPS AdamW steps."""
    params = {n: t.to(torch.float64).clone().requires_grad_(True) for n, t in weights.items()}
    groups = [{"params": [p for n, p in params.items() if decays(n)], "weight_decay": WEIGHT_DECAY},
              {"params": [p for n, p in params.items() if not decays(n)], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    first_loss, first_grads = None, None
    for step in range(STEPS):
        optimizer.zero_grad()
        model = ref.MixAttentionRef(config, params)
        logits = torch.cat([model.forward(seq.tolist()) for seq in inputs])  # [B T, V]
        flat = torch.as_tensor(targets.reshape(-1), dtype=torch.long)
        scored = flat >= 0
        loss = torch.nn.functional.cross_entropy(logits[scored], flat[scored])
        loss.backward()
        if step == 0:
            first_loss = loss.item()
            first_grads = {n: p.grad.detach().clone() for n, p in params.items()}
        torch.nn.utils.clip_grad_norm_(list(params.values()), CLIP)
        optimizer.step()
    return first_loss, first_grads, {n: p.detach() for n, p in params.items()}


def worst_relative(cpp: dict, expected: dict, prefix: str):
    worst, name = 0.0, ""
    for n, e in expected.items():
        c = cpp[prefix + n].to(torch.float64)
        scale = e.abs().max().item()
        rel = (c - e).abs().max().item() / scale if scale > 0 else (c - e).abs().max().item()
        if rel > worst:
            worst, name = rel, n
    return worst, name


def weights_error(cpp: dict, grads: dict, final: dict):
    """Worst relative weight error after the steps, and how many elements needed the allowance.

    AdamW's first step moves every weight by lr * g / (|g| + eps), about lr * sign(g): where a
    gradient is within f32 rounding of zero, the direction is decided by rounding, in PyTorch's
    own f32 as much as here. So each element may differ by 1e-4 of the tensor's scale plus
    STEPS * lr * min(2, 2 delta / (|g| + eps)), with delta the measured difference of that
    tensor's gradients (at 1e-6 of the largest gradient, about 0 for any gradient that is not
    itself near zero, so a wrong update rule still shows)."""
    worst, name, excused = 0.0, "", 0
    for n, e in final.items():
        c = cpp["param/" + n].to(torch.float64)
        g = grads[n]
        delta = (cpp["grad/" + n].to(torch.float64) - g).abs().max().item()
        scale = e.abs().max().item()
        allowance = STEPS * LR * torch.clamp(2 * delta / (g.abs() + EPS), max=2.0)
        excess = ((c - e).abs() - allowance).clamp(min=0).max().item() / scale
        excused += int(((c - e).abs() > REL_TOLERANCE * scale).sum())
        if excess > worst:
            worst, name = excess, n
    return worst, name, excused


def run_case(args, preset, layers, kv_heads, untied, bf16=False):
    name = f"{preset}-L{layers}-kv{kv_heads}{'-untied' if untied else ''}{'-bf16' if bf16 else ''}"
    case_dir = args.workdir / name
    shutil.rmtree(case_dir, ignore_errors=True)
    init = [str(args.mixattn), "init", "--preset", preset, "--layers", str(layers), "--hidden",
            str(HIDDEN), "--heads", str(HEADS), "--kv-heads", str(kv_heads), "--head-dim",
            str(HEAD_DIM), "--ffn", str(FFN), "--vocab", str(VOCAB), "--window", str(WINDOW),
            "--seed", str(layers + kv_heads), "--out", str(case_dir)] + (["--untied"] if untied else [])
    proc = subprocess.run(init, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return name, None, f"mixattn init failed: {proc.stderr.strip()}"
    config = ref.Config.from_dict(json.loads((case_dir / "config.json").read_text()))
    weights, _ = ref.read_safetensors(case_dir / "model.safetensors")

    rng = np.random.default_rng(layers * 10 + kv_heads)
    tokens = rng.integers(0, VOCAB, size=(BATCH, SEQ_LEN + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:].copy()
    targets[0, :4] = -1  # unscored rows (a prompt) count nowhere
    batch_path, out_path = case_dir / "batch.i32", case_dir / "out.safetensors"
    np.concatenate([[BATCH, SEQ_LEN], inputs.reshape(-1), targets.reshape(-1)]).astype("<i4") \
        .tofile(batch_path)
    argv = [str(args.train_steps), str(case_dir), str(batch_path), str(out_path), str(STEPS),
            str(LR), str(CLIP)] + (["bf16"] if bf16 else [])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return name, None, f"train_steps failed: {proc.stderr.strip()}"
    cpp, _ = ref.read_safetensors(out_path)

    loss, grads, final = torch_steps(config, weights, inputs, targets)
    loss_rel = abs(cpp["loss"].item() - loss) / abs(loss)
    grad_rel, grad_name = worst_relative(cpp, grads, "grad/")
    param_rel, param_name, excused = weights_error(cpp, grads, final)
    return name, (loss_rel, grad_rel, grad_name, param_rel, param_name, excused), None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mixattn", type=Path, required=True)
    parser.add_argument("--train-steps", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--presets", default=",".join(presets_ref.PRESET_NAMES))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    passed = failed = 0

    def report(ok, line):
        nonlocal passed, failed
        passed, failed = passed + ok, failed + (not ok)
        print(("ok    " if ok else "FAIL  ") + line, flush=True)

    # Negative control: bf16-rounded matmuls must be caught by the gradient bound.
    name, result, error = run_case(args, "ma-pairs", 8, 2, False, bf16=True)
    report(error is None and result[1] > REL_TOLERANCE,
           f"{name:<40} control: bf16 gradients differ by {result[1]:.1e} > {REL_TOLERANCE:.0e}"
           if result else f"{name}: {error}")

    cases = [(p, 8, 2, False) for p in args.presets.split(",")]
    cases += [(p, 13, 1, True) for p in args.presets.split(",")]
    for preset, layers, kv_heads, untied in cases:
        name, result, error = run_case(args, preset, layers, kv_heads, untied)
        if error:
            report(False, f"{name}: {error}")
            continue
        loss_rel, grad_rel, grad_name, param_rel, param_name, excused = result
        ok = max(loss_rel, grad_rel, param_rel) <= REL_TOLERANCE
        report(ok, f"{name:<40} loss {loss_rel:.1e}  grads {grad_rel:.1e} ({grad_name})  "
                   f"after {STEPS} AdamW steps {param_rel:.1e} ({param_name}; "
                   f"{excused} near-zero-gradient elements beyond 1e-4)")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
