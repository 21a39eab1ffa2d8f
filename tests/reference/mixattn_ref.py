"""An independent PyTorch reference of a MixAttention language model.

Written from the model spec (tests/reference/README.md and docs/ARCHITECTURE.md), not from the
C++ sources, so that the end-to-end parity test (CONVENTIONS.md item 5) compares two
implementations that could only agree by both being right.

Legend: T = tokens, H = hidden_size, V = vocab_size, L = num_hidden_layers,
NH = num_attention_heads, NKV = num_key_value_heads, D = head_dim, F = intermediate_size,
W = a sliding layer's window (tokens a query sees, itself included).

Everything is computed in float64; weights are read as f32 (or bf16 widened to f32).
Only the standard library, numpy and torch are used (no pip packages).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

COMPUTE_DTYPE = torch.float64


class ReferenceError(Exception):
    """A malformed model directory: the message names the file, field or tensor."""


# ----------------------------------------------------------------------------------------------
# safetensors: u64 little-endian header length N, N bytes of JSON header, then the data.
# Header: {name: {"dtype": "F32"|"BF16", "shape": [...], "data_offsets": [begin, end]},
#          "__metadata__": {str: str}}; offsets are relative to the first byte after the header.
# BF16 is the upper 16 bits of an IEEE f32.


def read_safetensors(path) -> tuple[dict[str, torch.Tensor], dict]:
    """Returns ({name: f32 tensor}, metadata)."""
    path = Path(path)
    blob = path.read_bytes()
    if len(blob) < 8:
        raise ReferenceError(f"{path}: shorter than the 8-byte header length")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if 8 + header_len > len(blob):
        raise ReferenceError(f"{path}: header length {header_len} runs past the file end")
    try:
        header = json.loads(blob[8:8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReferenceError(f"{path}: header is not JSON: {e}") from e
    data = memoryview(blob)[8 + header_len:]
    metadata = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, info in header.items():
        dtype, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
        count = math.prod(shape)
        itemsize = {"F32": 4, "BF16": 2}.get(dtype)
        if itemsize is None:
            raise ReferenceError(f"{path}: tensor {name}: unsupported dtype {dtype}")
        if not (0 <= begin <= end <= len(data)) or end - begin != count * itemsize:
            raise ReferenceError(
                f"{path}: tensor {name}: data_offsets [{begin}, {end}] do not hold "
                f"{count} x {dtype} inside {len(data)} data bytes")
        raw = data[begin:end]
        if dtype == "F32":
            values = np.frombuffer(raw, dtype="<f4")
        else:
            values = (np.frombuffer(raw, dtype="<u2").astype("<u4") << 16).view("<f4")
        tensors[name] = torch.from_numpy(values.reshape(shape).astype(np.float32))
    return tensors, metadata


def write_safetensors(path, tensors: dict[str, torch.Tensor], metadata: dict | None = None,
                      dtype: str = "F32") -> None:
    """Writes tensors as F32 or BF16 (BF16 by truncating the low 16 bits of each f32)."""
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        values = tensors[name].detach().to(torch.float32).contiguous().numpy().astype("<f4")
        if dtype == "F32":
            raw = values.tobytes()
        elif dtype == "BF16":
            raw = (values.view("<u4") >> 16).astype("<u2").tobytes()
        else:
            raise ValueError(f"unsupported dtype {dtype}")
        header[name] = {"dtype": dtype, "shape": list(values.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    header_bytes = json.dumps(header).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # align the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for raw in chunks:
            f.write(raw)


# ----------------------------------------------------------------------------------------------
# config.json (Hugging Face field names plus layer_types / sliding_window / kv_source_layers)


@dataclass
class LayerSpec:
    kind: str         # "full" | "sliding"
    window: int       # sliding: tokens a query sees, itself included; 0 for full layers
    kv_source: int    # layer whose K/V this layer attends over; == own index: computes its own


@dataclass
class Config:
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    layers: list[LayerSpec]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def owns_kv(self, i: int) -> bool:
        return self.layers[i].kv_source == i

    @staticmethod
    def from_dict(d: dict, source: str = "config.json") -> "Config":
        def need(field, kind=int):
            if field not in d:
                raise ReferenceError(f"{source}: missing field '{field}'")
            value = d[field]
            if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
                raise ReferenceError(f"{source}: field '{field}' must be an integer, got {value!r}")
            return value

        L = need("num_hidden_layers")
        layer_types = need("layer_types", list)
        kv_sources = need("kv_source_layers", list)
        if len(layer_types) != L or len(kv_sources) != L:
            raise ReferenceError(f"{source}: layer_types and kv_source_layers need {L} entries, "
                                 f"got {len(layer_types)} and {len(kv_sources)}")
        windows = d.get("sliding_window")
        layers = []
        for i, (layer_type, src) in enumerate(zip(layer_types, kv_sources)):
            if layer_type == "full_attention":
                kind, window = "full", 0
            elif layer_type == "sliding_attention":
                kind = "sliding"
                window = windows[i] if isinstance(windows, list) else windows
                if not isinstance(window, int) or isinstance(window, bool) or window < 1:
                    raise ReferenceError(f"{source}: sliding_window for sliding layer {i} must be "
                                         f"an integer >= 1, got {window!r}")
            else:
                raise ReferenceError(f"{source}: layer_types[{i}] = {layer_type!r} is neither "
                                     f"'full_attention' nor 'sliding_attention'")
            layers.append(LayerSpec(kind, window, src))
        if isinstance(windows, list) and len(windows) != L:
            raise ReferenceError(f"{source}: sliding_window list has {len(windows)} entries, "
                                 f"expected {L}")
        config = Config(
            hidden_size=need("hidden_size"), num_attention_heads=need("num_attention_heads"),
            num_key_value_heads=need("num_key_value_heads"), head_dim=need("head_dim"),
            intermediate_size=need("intermediate_size"), vocab_size=need("vocab_size"),
            rope_theta=float(need("rope_theta", float)),
            rms_norm_eps=float(need("rms_norm_eps", float)),
            max_position_embeddings=need("max_position_embeddings"),
            tie_word_embeddings=bool(need("tie_word_embeddings", bool)), layers=layers)
        config.validate(source)
        return config

    def validate(self, source: str = "config") -> None:
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ReferenceError(f"{source}: num_attention_heads {self.num_attention_heads} is not "
                                 f"a multiple of num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim % 2 != 0:
            raise ReferenceError(f"{source}: head_dim {self.head_dim} must be even for RoPE")
        for i, layer in enumerate(self.layers):
            src = layer.kv_source
            if not isinstance(src, int) or not 0 <= src <= i:
                raise ReferenceError(f"{source}: kv_source_layers[{i}] = {src!r} must be in [0, {i}]")
            if self.layers[src].kv_source != src:
                raise ReferenceError(f"{source}: layer {i} reads layer {src}, which does not "
                                     f"compute its own KV (it reads layer "
                                     f"{self.layers[src].kv_source})")
            owner = self.layers[src]
            if layer.kind == "full" and owner.kind == "sliding":
                raise ReferenceError(f"{source}: full layer {i} reads sliding layer {src}'s KV, "
                                     f"whose old tokens are gone")
            if layer.kind == "sliding" and owner.kind == "sliding" and layer.window > owner.window:
                raise ReferenceError(f"{source}: sliding layer {i} (W={layer.window}) reads "
                                     f"sliding layer {src} with a smaller window {owner.window}")

    def to_dict(self) -> dict:
        return {
            "hidden_size": self.hidden_size, "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads, "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size, "vocab_size": self.vocab_size,
            "rope_theta": self.rope_theta, "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "layer_types": [("full_attention" if l.kind == "full" else "sliding_attention")
                            for l in self.layers],
            "sliding_window": [(l.window if l.kind == "sliding" else None) for l in self.layers],
            "kv_source_layers": [l.kv_source for l in self.layers],
        }


def expected_tensor_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Every tensor the model file must hold, and nothing else."""
    H, F, V, D = (config.hidden_size, config.intermediate_size, config.vocab_size,
                  config.head_dim)
    NH, NKV = config.num_attention_heads, config.num_key_value_heads
    shapes = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, H)
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (H,)
        shapes[p + "self_attn.q_proj.weight"] = (NH * D, H)
        if config.owns_kv(i):
            shapes[p + "self_attn.k_proj.weight"] = (NKV * D, H)
            shapes[p + "self_attn.v_proj.weight"] = (NKV * D, H)
        shapes[p + "self_attn.o_proj.weight"] = (H, NH * D)
        shapes[p + "post_attention_layernorm.weight"] = (H,)
        shapes[p + "mlp.gate_proj.weight"] = (F, H)
        shapes[p + "mlp.up_proj.weight"] = (F, H)
        shapes[p + "mlp.down_proj.weight"] = (H, F)
    return shapes


def check_tensor_names(config: Config, weights: dict[str, torch.Tensor]) -> list[str]:
    """Problems with the set of tensors (missing, unexpected, wrong shape); empty if none."""
    expected = expected_tensor_shapes(config)
    problems = []
    for name in sorted(set(expected) - set(weights)):
        problems.append(f"missing tensor {name} {list(expected[name])}")
    for name in sorted(set(weights) - set(expected)):
        problems.append(f"unexpected tensor {name} {list(weights[name].shape)}")
    for name in sorted(set(expected) & set(weights)):
        if tuple(weights[name].shape) != expected[name]:
            problems.append(f"tensor {name}: shape {list(weights[name].shape)}, "
                            f"expected {list(expected[name])}")
    return problems


# ----------------------------------------------------------------------------------------------
# The math


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [T, H] / sqrt(mean(x^2 over H) + eps) * weight [H]."""
    return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def rope_cos_sin(T: int, D: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, D] for absolute positions 0..T-1 (Hugging Face Llama layout: [c, c])."""
    j = torch.arange(D // 2, dtype=COMPUTE_DTYPE)
    inv_freq = theta ** (-2.0 * j / D)                                        # [D/2]
    angle = torch.arange(T, dtype=COMPUTE_DTYPE)[:, None] * inv_freq[None, :]  # [T, D/2]
    return torch.cat([angle.cos(), angle.cos()], -1), torch.cat([angle.sin(), angle.sin()], -1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dim (x1 = first half, x2 = second half)."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, N, D]; cos, sin [T, D]."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


def attention_mask(T: int, window: int) -> torch.Tensor:
    """[T, T] bool, True where query p may see key j: j <= p and (window == 0 or p - j < window)."""
    p = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    allowed = j <= p
    if window > 0:
        allowed = allowed & (p - j < window)
    return allowed


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """q [T, NH, D], k and v [T, NKV, D] -> [T, NH*D]. Query head n uses KV head n // (NH/NKV)."""
    T, NH, D = q.shape
    group = NH // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # [T, NH, D]: heads n*group .. n*group+group-1 share n
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("pnd,jnd->npj", q, k) / math.sqrt(D)  # [NH, T(query), T(key)]
    scores = scores.masked_fill(~attention_mask(T, window), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("npj,jnd->pnd", probs, v).reshape(T, NH * D)


class MixAttentionRef:
    """The forward pass of the spec. weights: {name: tensor} as read from model.safetensors."""

    def __init__(self, config: Config, weights: dict[str, torch.Tensor],
                 attention_fn=masked_attention):
        problems = check_tensor_names(config, weights)
        if problems:
            raise ReferenceError("model.safetensors: " + "; ".join(problems))
        self.config = config
        self.w = {name: t.to(COMPUTE_DTYPE) for name, t in weights.items()}
        self.attention_fn = attention_fn

    @staticmethod
    def load(model_dir) -> "MixAttentionRef":
        model_dir = Path(model_dir)
        config_path = model_dir / "config.json"
        config = Config.from_dict(json.loads(config_path.read_text()), str(config_path))
        weights, _ = read_safetensors(model_dir / "model.safetensors")
        return MixAttentionRef(config, weights)

    def forward(self, tokens, trace: dict | None = None) -> torch.Tensor:
        """tokens: sequence of T ints -> logits [T, V] (float64).

        If trace is a dict it receives per layer i: trace[("attn", i)] = concatenated head outputs
        before o_proj [T, NH*D], and trace[("kv", i)] = the (k_rot, v) the layer attended over.
        """
        c, w = self.config, self.w
        tokens = torch.as_tensor(list(tokens), dtype=torch.long)
        T, NH, NKV, D = len(tokens), c.num_attention_heads, c.num_key_value_heads, c.head_dim
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= c.vocab_size):
            raise ReferenceError(f"token ids must be in [0, {c.vocab_size})")
        cos, sin = rope_cos_sin(T, D, c.rope_theta)
        kv_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # owner -> (k_rot, v)

        x = w["model.embed_tokens.weight"][tokens]  # [T, H]
        for i, layer in enumerate(c.layers):
            p = f"model.layers.{i}."
            h = rms_norm(x, w[p + "input_layernorm.weight"], c.rms_norm_eps)
            q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, NH, D)
            if c.owns_kv(i):
                k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(T, NKV, D)
                v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(T, NKV, D)
                kv_cache[i] = (apply_rope(k, cos, sin), v)
            k_rot, v = kv_cache[layer.kv_source]  # already rotated; a reader recomputes nothing
            heads = self.attention_fn(apply_rope(q, cos, sin), k_rot, v,
                                      layer.window if layer.kind == "sliding" else 0)
            if trace is not None:
                trace[("attn", i)] = heads
                trace[("kv", i)] = (k_rot, v)
            x = x + heads @ w[p + "self_attn.o_proj.weight"].T

            h2 = rms_norm(x, w[p + "post_attention_layernorm.weight"], c.rms_norm_eps)
            gate = torch.nn.functional.silu(h2 @ w[p + "mlp.gate_proj.weight"].T)  # [T, F]
            up = h2 @ w[p + "mlp.up_proj.weight"].T                                # [T, F]
            x = x + (gate * up) @ w[p + "mlp.down_proj.weight"].T

        lm_head = w["model.embed_tokens.weight" if c.tie_word_embeddings else "lm_head.weight"]
        return rms_norm(x, w["model.norm.weight"], c.rms_norm_eps) @ lm_head.T  # [T, V]


def random_weights(config: Config, seed: int, scale: float = 0.1) -> dict[str, torch.Tensor]:
    """Random f32 weights of the right names and shapes (norm weights near 1)."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in expected_tensor_shapes(config).items():
        if name.endswith("norm.weight"):
            weights[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            weights[name] = scale * torch.randn(shape, generator=gen)
    return weights
