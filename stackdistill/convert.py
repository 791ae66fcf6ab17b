"""Conversion between transformers HuBERT/WavLM/wav2vec2 state dicts and our scanned params.

Our params are the Flax tree of `models.Encoder`; transformers keeps one set of tensors per
layer (`encoder.layers.{i}.…`), we keep one stacked tensor per name under `encoder/layers`
with the layer axis first. Both directions are strict: every tensor is used exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from stackdistill.models.config import EncoderConfig

Params = dict[str, Any]

# A task model's heads (wav2vec2's quantizer/project_q/project_hid, CTC's lm_head) sit outside
# its `hubert.`/`wavlm.`/`wav2vec2.` prefix and are dropped with it. The mask vector
# (`masked_spec_embed`, fairseq's `mask_emb`) is optional: kept as params["masked_spec_embed"]
# whenever the checkpoint has it, so the teacher can run on masked input (masking distillation,
# stackdistill/recipes/masking.py); an encoder config without `mask_emb` ignores it.
MASK_EMB = "masked_spec_embed"
_WEIGHT_NORM = {
    "weight_g": "encoder.pos_conv_embed.conv.weight_g",
    "weight_v": "encoder.pos_conv_embed.conv.weight_v",
}
_PARAMETRIZED = {
    "weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
}
_POS_CONV_KERNEL = ("encoder", "pos_conv_embed", "conv", "kernel")


def _param_shapes(cfg: EncoderConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat {path: shape} of the params `cfg` needs, without allocating them."""
    from stackdistill.models.encoder import Encoder

    wav = jax.ShapeDtypeStruct((1, max(cfg.receptive_field, 16000)), np.float32)
    lengths = jax.ShapeDtypeStruct((1,), np.int32)
    shapes = jax.eval_shape(Encoder(cfg).init, jax.random.key(0), wav, lengths)["params"]
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def _torch_name(path: tuple[str, ...]) -> str:
    """transformers name of a (per-layer) tensor: feature_extractor.conv_layers.0.conv.weight."""
    parts = [re.sub(r"^conv_layers_(\d+)$", r"conv_layers.\1", p) for p in path[:-1]]
    if parts[:2] == ["encoder", "rel_attn_embed"]:
        parts = ["encoder", "layers", "0", "attention", "rel_attn_embed"]
    leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(path[-1], path[-1])
    return ".".join(parts + [leaf])


def _to_flax(path: tuple[str, ...], x: np.ndarray) -> np.ndarray:
    """A transformers tensor in our layout (Linear and Conv kernels are transposed)."""
    if path[-1] == "kernel":
        return x.T if x.ndim == 2 else x.transpose(2, 1, 0)  # (out,in[,k]) -> ([k,]in,out)
    return x


def _fold_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """torch weight_norm(dim=2): w = g * v / ||v||, the norm over all but the kernel axis."""
    v64 = v.astype(np.float64)
    norm = np.sqrt((v64**2).sum(axis=(0, 1), keepdims=True))
    return (g.astype(np.float64) * v64 / norm).astype(np.float32)


def _strip_prefix(state: Mapping[str, np.ndarray], model_type: str) -> dict[str, np.ndarray]:
    """Drops the `hubert.`/`wavlm.`/`wav2vec2.` prefix of task models (their heads are not ours)."""
    prefix = f"{model_type}."
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def state_dict_to_params(cfg: EncoderConfig, state: Mapping[str, Any]) -> Params:
    """Converts a transformers state dict (numpy arrays) to our params; strict on both sides."""
    state = _strip_prefix(state, cfg.model_type)
    used: set[str] = set()
    missing: list[str] = []
    bad_shapes: list[str] = []

    def take(name: str) -> np.ndarray | None:
        if name not in state:
            missing.append(name)
            return None
        used.add(name)
        return np.asarray(state[name], dtype=np.float32)

    flat: dict[tuple[str, ...], np.ndarray] = {}
    for path, shape in _param_shapes(cfg).items():
        if path == _POS_CONV_KERNEL:
            names = _PARAMETRIZED if _PARAMETRIZED["weight_g"] in state else _WEIGHT_NORM
            g, v = take(names["weight_g"]), take(names["weight_v"])
            value = None if g is None or v is None else _to_flax(path, _fold_weight_norm(g, v))
        elif path[:2] == ("encoder", "layers"):
            per_layer = [
                take(_torch_name(("encoder", "layers", str(i)) + path[2:]))
                for i in range(cfg.num_layers)
            ]
            ok = all(x is not None for x in per_layer)
            value = np.stack([_to_flax(path, x) for x in per_layer]) if ok else None
        else:
            x = take(_torch_name(path))
            value = None if x is None else _to_flax(path, x)
        if value is None:
            continue
        if value.shape != shape:
            bad_shapes.append(f"{'/'.join(path)}: checkpoint {value.shape}, config {shape}")
            continue
        flat[path] = value

    if MASK_EMB in state and (MASK_EMB,) not in flat and MASK_EMB not in missing:
        x = take(MASK_EMB)
        if x.shape != (cfg.hidden_size,):
            bad_shapes.append(f"{MASK_EMB}: checkpoint {x.shape}, config ({cfg.hidden_size},)")
        else:
            flat[(MASK_EMB,)] = x
    unexpected = sorted(set(state) - used)
    problems = []
    if missing:
        problems.append(f"missing tensors: {missing}")
    if unexpected:
        problems.append(f"unexpected tensors: {unexpected}")
    if bad_shapes:
        problems.append(f"shape mismatches: {bad_shapes}")
    if problems:
        raise ValueError(
            f"{cfg.model_type} checkpoint does not match its config; " + "; ".join(problems)
        )
    return _unflatten(flat)


def params_to_state_dict(cfg: EncoderConfig, params: Params) -> dict[str, np.ndarray]:
    """Inverse of `state_dict_to_params`: a transformers state dict (float32 numpy)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    out: dict[str, np.ndarray] = {}
    for key_path, leaf in flat:
        path = tuple(k.key for k in key_path)
        x = np.asarray(leaf, dtype=np.float32)
        if path == _POS_CONV_KERNEL:
            v = np.ascontiguousarray(x.transpose(2, 1, 0))
            # Store v = w and g = ||w|| so that weight_norm reproduces w exactly.
            g = np.sqrt((v.astype(np.float64) ** 2).sum(axis=(0, 1), keepdims=True))
            out[_PARAMETRIZED["weight_g"]] = g.astype(np.float32)
            out[_PARAMETRIZED["weight_v"]] = v
        elif path[:2] == ("encoder", "layers"):
            for i in range(x.shape[0]):
                name = _torch_name(("encoder", "layers", str(i)) + path[2:])
                out[name] = _from_flax(path, x[i])
        else:
            out[_torch_name(path)] = _from_flax(path, x)
    return out


def _from_flax(path: tuple[str, ...], x: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":
        return np.ascontiguousarray(x.T if x.ndim == 2 else x.transpose(2, 1, 0))
    return x


def _unflatten(flat: Mapping[tuple[str, ...], np.ndarray]) -> Params:
    tree: Params = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree
