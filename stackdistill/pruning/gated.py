"""The gated forward of DPHuBERT: our unchanged Encoder run on params with the gates folded in.

Every DPHuBERT gate multiplies an activation that next enters a linear map (or is the output
of one), so g * a into W is W with its input rows scaled by g: we scale the weights and run
`models.Encoder` as is (no change to models/, every fast path kept; gradients reach the gates
through the product). Where theirs multiplies (pyf98/DPHuBERT `wav2vec2/components.py`,
commit c18093f) and what we scale:

- conv channel gate, after the conv, its norm and GELU (L107-114): the next conv's kernel
  rows (their prune() folds it the same way, L225); the last conv's gate multiplies the CNN
  output before the projection LayerNorm, so it becomes our `feature_scale` (their
  `dummy_weight`, L184, L220);
- head gate, on each head's attention output before `out_proj` (L424-430): out_proj's input
  rows of that head (their prune(), L479);
- attention layer gate, on out_proj's output, bias included (L432-434): out_proj's kernel
  and bias (L459-460);
- FFN intermediate gate, after GELU and dropout (L733-739): output_dense's input rows (L787);
- FFN layer gate, on output_dense's output (L744-746): output_dense's kernel and bias (L771).

Gate values are in [0, 1] (hardconcrete.sample / deterministic), a dict like
hardconcrete.init_gates: "conv" a list of (C_i,), "head" (L, H), "interm" (L, F),
"attlayer" / "ffnlayer" (L, 1); a unit left out is not gated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from stackdistill.models.config import EncoderConfig

Array = jax.Array
Params = dict[str, Any]
Gates = Mapping[str, Any]


def gated_config(cfg: EncoderConfig, gates: Gates) -> EncoderConfig:
    """The config the gated params run under: a CNN output scale when the convs are gated."""
    return cfg.replace(feature_scale=True) if "conv" in gates else cfg


def check_gates(cfg: EncoderConfig, gates: Gates) -> None:
    """Raises ValueError when a gate set does not fit `cfg` (units, shapes)."""
    if cfg.layers_per_block != 1:
        raise ValueError(
            "DPHuBERT pruning gates a plain layer stack: layers_per_block must be 1 "
            "(config.student.reuse_pattern), reuse blocks have no per-layer attention"
        )
    units = {"conv", "head", "interm", "attlayer", "ffnlayer"}
    unknown = set(gates) - units
    if unknown:
        raise ValueError(f"gates {sorted(unknown)} are not among {sorted(units)}")
    n = cfg.num_layers
    shapes = {
        "head": (n, cfg.num_heads),
        "interm": (n, cfg.intermediate_size),
        "attlayer": (n, 1),
        "ffnlayer": (n, 1),
    }
    for unit, shape in shapes.items():
        if unit in gates and tuple(gates[unit].shape) != shape:
            raise ValueError(f"gate {unit!r} has shape {tuple(gates[unit].shape)}, cfg {shape}")
    if "conv" in gates:
        got = tuple(int(g.shape[0]) for g in gates["conv"])
        if got != tuple(cfg.conv_dim):
            raise ValueError(f"conv gates of sizes {got} for conv_dim {tuple(cfg.conv_dim)}")


def apply_gates(cfg: EncoderConfig, params: Params, gates: Gates) -> Params:
    """Params of `gated_config(cfg, gates)` whose forward is the gated model's (see above)."""
    check_gates(cfg, gates)
    p = jax.tree_util.tree_map(lambda x: x, dict(params))  # new containers, same leaves
    if "conv" in gates:
        fe = dict(p["feature_extractor"])
        convs = gates["conv"]
        for i, g in enumerate(convs[:-1]):
            name = f"conv_layers_{i + 1}"
            layer = dict(fe[name])
            conv = dict(layer["conv"])
            conv["kernel"] = conv["kernel"] * g[None, :, None]  # (K, C_in, C_out)
            layer["conv"] = conv
            fe[name] = layer
        scale = fe.get("feature_scale", jnp.ones_like(convs[-1]))
        fe["feature_scale"] = scale * convs[-1]
        p["feature_extractor"] = fe
    enc = dict(p["encoder"])
    layers = {k: dict(v) for k, v in enc["layers"].items()}
    att, ffn = layers["attention"], layers["feed_forward"]
    out = dict(att["out_proj"])
    w_out, b_out = out["kernel"], out["bias"]  # (L, D_in, D), (L, D)
    if "head" in gates:
        n, d_in, d = w_out.shape
        heads = gates["head"].shape[1]
        per_head = w_out.reshape(n, heads, d_in // heads, d)
        w_out = (per_head * gates["head"][:, :, None, None]).reshape(n, d_in, d)
    if "attlayer" in gates:
        w_out, b_out = w_out * gates["attlayer"][:, :, None], b_out * gates["attlayer"]
    att["out_proj"] = {**out, "kernel": w_out, "bias": b_out}
    dense = dict(ffn["output_dense"])
    w2, b2 = dense["kernel"], dense["bias"]  # (L, F, D), (L, D)
    if "interm" in gates:
        w2 = w2 * gates["interm"][:, :, None]
    if "ffnlayer" in gates:
        w2, b2 = w2 * gates["ffnlayer"][:, :, None], b2 * gates["ffnlayer"]
    ffn["output_dense"] = {**dense, "kernel": w2, "bias": b2}
    enc["layers"] = layers
    p["encoder"] = enc
    return p


def ones_like_gates(gates: Gates) -> dict:
    """All-ones gate values shaped like `gates` (the ungated model)."""
    return jax.tree_util.tree_map(jnp.ones_like, dict(gates))
