"""An unscanned pruned encoder: each layer at its own kept widths, a Python loop over layers.

The zero-padded pruned model (`prune.prune`) is one `nn.scan` at the unpruned widths, so it
costs what the unpruned model does. Here every layer keeps only its kept heads and FFN units
(their pruned `EncoderLayer`, pyf98/DPHuBERT `wav2vec2/components.py` L794-857: a removed
block is skipped, post-LN layers still apply both LayerNorms, L852-856), so compute and
params shrink with the pruning; the price is one compiled body per layer instead of one.
HuBERT / wav2vec2 only (WavLM's gated relative bias per kept head is not written here).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stackdistill.models.config import EncoderConfig
from stackdistill.models.encoder import frame_mask
from stackdistill.models.frontend import (
    FeatureExtractor,
    FeatureProjection,
    PositionalConvEmbedding,
)

Array = jax.Array


def narrow_layers(cfg: EncoderConfig, params: Any) -> list[dict]:
    """Per-layer params at the kept widths, read off a zero-padded pruned encoder's params."""
    if cfg.model_type == "wavlm":
        raise ValueError("narrow layers: WavLM's relative position bias is not supported")
    layers = jax.tree_util.tree_map(np.asarray, params["encoder"]["layers"])
    att, ffn = layers["attention"], layers["feed_forward"]
    h = cfg.hidden_size // cfg.num_heads
    out = []
    for i in range(cfg.num_layers):
        q = att["q_proj"]["kernel"][i].reshape(cfg.hidden_size, cfg.num_heads, h)
        rows = np.repeat(np.abs(q).sum((0, 2)) > 0, h)
        units = np.abs(ffn["intermediate_dense"]["kernel"][i]).sum(0) > 0
        layer = {
            "layer_norm": {k: v[i] for k, v in layers["layer_norm"].items()},
            "final_layer_norm": {k: v[i] for k, v in layers["final_layer_norm"].items()},
        }
        if np.abs(att["out_proj"]["bias"][i]).sum() > 0 or rows.any():
            layer["attention"] = {
                **{
                    name: {
                        "kernel": att[name]["kernel"][i][:, rows],
                        "bias": att[name]["bias"][i][rows],
                    }
                    for name in ("q_proj", "k_proj", "v_proj")
                },
                "out_proj": {
                    "kernel": att["out_proj"]["kernel"][i][rows],
                    "bias": att["out_proj"]["bias"][i],
                },
            }
        if np.abs(ffn["output_dense"]["bias"][i]).sum() > 0 or units.any():
            w1, w2 = ffn["intermediate_dense"], ffn["output_dense"]
            layer["feed_forward"] = {
                "w1": w1["kernel"][i][:, units],
                "b1": w1["bias"][i][units],
                "w2": w2["kernel"][i][units],
                "b2": w2["bias"][i],
            }
        out.append(jax.tree_util.tree_map(jnp.asarray, layer))
    return out


def _ln(x, p, eps):
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _attention(cfg, p, x_btd, mask_bt):
    b, t, _ = x_btd.shape
    h = cfg.hidden_size // cfg.num_heads
    q, k, v = (
        (x_btd @ p[n]["kernel"] + p[n]["bias"]).reshape(b, t, -1, h)
        for n in ("q_proj", "k_proj", "v_proj")
    )
    o = jax.nn.dot_product_attention(q, k, v, mask=mask_bt[:, None, None, :])
    return o.reshape(b, t, -1) @ p["out_proj"]["kernel"] + p["out_proj"]["bias"]


def _ffn(p, x_btd):
    y = jax.nn.gelu(x_btd @ p["w1"] + p["b1"], approximate=False)
    return y @ p["w2"] + p["b2"]


def layer_forward(cfg: EncoderConfig, p: dict, x_btd: Array, mask_bt: Array) -> Array:
    """One pruned layer, post-LN or pre-LN; a missing block is skipped (L835-856)."""
    eps = cfg.layer_norm_eps
    if cfg.do_stable_layer_norm:
        if "attention" in p:
            x_btd = x_btd + _attention(
                cfg, p["attention"], _ln(x_btd, p["layer_norm"], eps), mask_bt
            )
        if "feed_forward" in p:
            x_btd = x_btd + _ffn(p["feed_forward"], _ln(x_btd, p["final_layer_norm"], eps))
        return x_btd
    if "attention" in p:
        x_btd = x_btd + _attention(cfg, p["attention"], x_btd, mask_bt)
    x_btd = _ln(x_btd, p["layer_norm"], eps)
    if "feed_forward" in p:
        x_btd = x_btd + _ffn(p["feed_forward"], x_btd)
    return _ln(x_btd, p["final_layer_norm"], eps)


def encode(
    cfg: EncoderConfig, params: Any, layers: list[dict], wav: Array, lengths: Array
) -> tuple[Array, Array]:
    """(hidden states (L+1, B, T, D) as `models.encode`'s, mask): `params` gives the rest."""
    features = FeatureExtractor(cfg).apply({"params": params["feature_extractor"]}, wav)
    mask = frame_mask(cfg, lengths, features.shape[1])
    x = FeatureProjection(cfg).apply({"params": params["feature_projection"]}, features)
    x = jnp.where(mask[..., None], x, 0)
    enc = params["encoder"]
    x = x + PositionalConvEmbedding(cfg).apply({"params": enc["pos_conv_embed"]}, x)
    if not cfg.do_stable_layer_norm:
        x = _ln(x, enc["layer_norm"], cfg.layer_norm_eps)
    states = [x]
    for p in layers:
        x = layer_forward(cfg, p, x, mask)
        states.append(x)
    return jnp.stack(states), mask
