"""Attention-map reuse (ARMHuBERT): layers without q/k that reuse the previous map, blocks.

A reuse model scans blocks (`ReuseBlock`): one attending layer and k - 1 reuse layers, so the
params under `layers` keep one leading axis and stacking grows whole blocks (stacking.py).
Follows sungnyun/ARMHuBERT models/armhubert/reusing_module.py (cited per module).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stackdistill.models.config import EncoderConfig
from stackdistill.models.frontend import _dense
from stackdistill.models.layers import EncoderLayer, _layer_body, _scaled_outputs


class ReuseAttention(nn.Module):
    """Attention with the previous layer's map: no q/k projections, only v_proj and out_proj.

    Follows models/armhubert/reusing_module.py MultiheadAttentionReuse (L158-170: only v_proj
    and out_proj exist; L769-806: the map, padded keys set to -inf, is softmaxed again). The
    map a full layer hands on is fairseq's `need_head_weights` output: softmax probabilities
    (fairseq multihead_attention.py L736, L776), so a reuse layer attends with
    softmax(probabilities) -- the code, not the paper's "reuse the map". No attention dropout
    (reusing_module.py L1111: 0.0 for reuse layers).
    Deviation: their map arrives as (heads, batch, T, S) (fairseq L776-778) and is viewed as
    (batch * heads, T, S) (L769) while v is batch-major, so with batch > 1 slot (b, h) reads
    the map of another utterance/head (index h' B + b' = b H + h). Each utterance here reuses
    its own map, head for head (what the paper describes; the same as theirs at batch 1).
    """

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x_btd, probs_bnts, mask_bt) -> jax.Array:
        cfg = self.cfg
        b, t, d = x_btd.shape
        n = cfg.num_heads
        v_btnh = _dense(cfg, d, "v_proj")(x_btd).reshape(b, t, n, d // n)
        weights = jnp.where(mask_bt[:, None, None, :], probs_bnts, -jnp.inf)
        weights = jax.nn.softmax(weights.astype(jnp.float32), axis=-1)
        out_btnh = jnp.einsum("bnts,bsnh->btnh", weights.astype(v_btnh.dtype), v_btnh)
        return _dense(cfg, d, "out_proj")(out_btnh.reshape(b, t, d))


class ReuseLayer(nn.Module):
    """A layer that reuses an attention map (reusing_module.py L980-1089); scan body."""

    cfg: EncoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_btd, probs_bnts, mask_bt, grad_scale=None):
        cfg = self.cfg
        reuse = ReuseAttention(cfg, name="attention")

        def attention(x, mask, _bias, _deterministic):
            return reuse(x, probs_bnts, mask)

        x_btd = _layer_body(self, cfg, attention, x_btd, mask_bt, None)
        return _scaled_outputs(x_btd, grad_scale)


def layer_grad_scales(num_layers: int) -> np.ndarray:
    """ARMHuBERT's per-layer GradMultiply m_i = (N - i) / (N - i + 1), i = 0..N-1.

    reusing_module.py L1348-1353: layer i's output carried on scales the gradient by m_i, the
    copy the loss reads by m_i (1 - m_i) (its GradMultiply(1 - m_i) sits on the carried one).
    i counts from 0 (the code; its comment says 1). N is the current depth, so a grown stack
    gets the scales of its new depth.
    """
    i = np.arange(num_layers, dtype=np.float32)
    return (num_layers - i) / (num_layers - i + 1)


class ReuseBlock(nn.Module):
    """One attending layer (`attend`) then k - 1 layers reusing its map (`reuse`); scan body.

    The scanned unit of a reuse model, so that params under `layers` keep one leading
    (block) axis: `attend` leaves are (blocks, ...), `reuse` leaves (blocks, k - 1, ...).
    Stacking grows whole blocks, so every reuse layer keeps its source right before it.
    """

    cfg: EncoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_btd, mask_bt, position_bias_ntt, scales_k):
        cfg = self.cfg
        k = cfg.layers_per_block
        x_btd, (first_btd, probs) = EncoderLayer(
            cfg, self.deterministic, return_probs=True, name="attend"
        )(x_btd, mask_bt, position_bias_ntt, None if scales_k is None else scales_k[0])
        reuse = nn.scan(
            ReuseLayer,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast, 0),
            length=k - 1,
        )(cfg, self.deterministic, name="reuse")
        x_btd, rest_kbtd = reuse(x_btd, probs, mask_bt, None if scales_k is None else scales_k[1:])
        return x_btd, jnp.concatenate([first_btd[None], rest_kbtd])
