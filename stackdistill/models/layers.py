"""One transformer layer and its attention (HuBERT, WavLM, wav2vec2; post- and pre-LN).

The scan body of `encoder.TransformerEncoder` and the attending layer of a reuse block
(`reuse.py`); WavLM's relative position buckets and the attention fast paths live here too.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stackdistill.models import flash_attention
from stackdistill.models.config import EncoderConfig
from stackdistill.models.frontend import _dense, _gelu, _layer_norm, scale_gradient_by

Array = jax.Array


def relative_position_buckets(num_frames: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """WavLM's (T, T) bucket index of key j relative to query i, float32 math as in torch."""
    pos = np.arange(num_frames)
    rel = pos[None, :] - pos[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).astype(np.int64) * half
    rel = np.abs(rel)
    max_exact = half // 2
    with np.errstate(divide="ignore"):
        large = np.log(rel.astype(np.float32) / np.float32(max_exact))
    large = large / np.float32(math.log(max_distance / max_exact))
    large = large * np.float32(half - max_exact)
    large = np.where(rel < max_exact, 0, max_exact + large).astype(np.int64)
    large = np.minimum(large, half - 1)
    return buckets + np.where(rel < max_exact, rel, large)


class Attention(nn.Module):
    """Multi-head self-attention; with `position_bias`, WavLM's gated relative bias.

    `return_probs`: also returns the softmax probabilities (B, N, T, S) in float32, before the
    attention dropout -- the map a reuse layer takes (fairseq's `need_head_weights=True`).
    """

    cfg: EncoderConfig
    return_probs: bool = False

    @nn.compact
    def __call__(self, x_btd, mask_bt, position_bias_ntt, deterministic: bool) -> Array:
        cfg = self.cfg
        b, t, d = x_btd.shape
        n = cfg.num_heads
        h = d // n
        q_btnh = _dense(cfg, d, "q_proj")(x_btd).reshape(b, t, n, h)
        k_btnh = _dense(cfg, d, "k_proj")(x_btd).reshape(b, t, n, h)
        v_btnh = _dense(cfg, d, "v_proj")(x_btd).reshape(b, t, n, h)
        bias_bntt = None
        if position_bias_ntt is not None:
            # WavLM: a per-head, per-query gate from the layer input rescales the shared bias.
            gate_x = nn.Dense(8, dtype=cfg.dtype, name="gru_rel_pos_linear")(
                x_btd.reshape(b, t, n, h)
            )
            gate_x = gate_x.astype(jnp.float32).reshape(b, t, n, 2, 4).sum(-1)
            gate_a, gate_b = jnp.split(jax.nn.sigmoid(gate_x), 2, axis=-1)  # (B, T, N, 1)
            const = self.param("gru_rel_pos_const", nn.initializers.ones, (1, n, 1, 1))
            gate_bnt1 = (gate_a * (gate_b * const.reshape(1, 1, n, 1) - 1.0) + 2.0).transpose(
                0, 2, 1, 3
            )
            bias_bntt = (gate_bnt1 * position_bias_ntt[None]).astype(q_btnh.dtype)
        if self.return_probs:
            probs_bnts = attention_probs(q_btnh, k_btnh, bias_bntt, mask_bt)
            dropped = nn.Dropout(cfg.attention_dropout)(probs_bnts, deterministic=deterministic)
            out_btnh = jnp.einsum("bnts,bsnh->btnh", dropped.astype(v_btnh.dtype), v_btnh)
            return _dense(cfg, d, "out_proj")(out_btnh.reshape(b, t, d)), probs_bnts
        if cfg.attention_dropout > 0.0 and not deterministic:
            # Dropout on the attention weights, element-wise as torch does; softmax in float32.
            out_btnh = nn.dot_product_attention(
                q_btnh,
                k_btnh,
                v_btnh,
                bias=bias_bntt,
                mask=mask_bt[:, None, None, :],
                broadcast_dropout=False,
                dropout_rng=self.make_rng("dropout"),
                dropout_rate=cfg.attention_dropout,
                deterministic=False,
                force_fp32_for_softmax=True,
            )
        else:
            out_btnh = attention(cfg, q_btnh, k_btnh, v_btnh, bias_bntt, mask_bt)
        return _dense(cfg, d, "out_proj")(out_btnh.reshape(b, t, d))


def attention_probs(q_btnh, k_btnh, bias_bntt, mask_bt) -> Array:
    """Softmax(q k^T / sqrt(h) + bias) over the valid keys, float32, (B, N, T, S)."""
    scores = jnp.einsum("btnh,bsnh->bnts", q_btnh, k_btnh).astype(jnp.float32)
    scores = scores / np.sqrt(q_btnh.shape[-1]).astype(np.float32)
    if bias_bntt is not None:
        scores = scores + bias_bntt.astype(jnp.float32)
    scores = jnp.where(mask_bt[:, None, None, :], scores, -jnp.inf)
    return jax.nn.softmax(scores, axis=-1)


def attention(cfg: EncoderConfig, q_btnh, k_btnh, v_btnh, bias_bntt, mask_bt) -> Array:
    """Softmax attention over the valid keys of each utterance (padded queries see them too).

    "xla": today's form, a (B, 1, 1, T) key mask. "cudnn": the same keys as sequence lengths
    (the mask is a prefix), through cuDNN's fused kernel on a GPU in bf16/fp16 without a bias;
    elsewhere (CPU, float32, WavLM's bias) XLA's attention with those lengths. "flash": on a
    TPU without a bias, for at least one 128-frame block, Pallas's flash attention kernel
    (models/flash_attention.py); otherwise as "cudnn".
    """
    if cfg.attention == "xla":
        mask = mask_bt[:, None, None, :]
        return jax.nn.dot_product_attention(q_btnh, k_btnh, v_btnh, bias=bias_bntt, mask=mask)
    if cfg.attention == "flash" and bias_bntt is None and q_btnh.shape[1] >= flash_attention.BLOCK:
        return jax.lax.platform_dependent(
            q_btnh,
            k_btnh,
            v_btnh,
            mask_bt,
            tpu=flash_attention.attention,
            default=lambda q, k, v, m: attention(cfg.replace(attention="cudnn"), q, k, v, None, m),
        )
    lengths_b = mask_bt.sum(-1, dtype=jnp.int32)
    head = q_btnh.shape[-1]
    fused = (
        bias_bntt is None
        and q_btnh.dtype in (jnp.bfloat16, jnp.float16)
        and head % 8 == 0
        and head <= 128
        and jax.default_backend() == "gpu"
    )
    return jax.nn.dot_product_attention(
        q_btnh,
        k_btnh,
        v_btnh,
        bias=bias_bntt,
        key_value_seq_lengths=lengths_b,
        implementation="cudnn" if fused else "xla",
    )


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear."""

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x_btd: Array, deterministic: bool) -> Array:
        y = _gelu(_dense(self.cfg, self.cfg.intermediate_size, "intermediate_dense")(x_btd))
        y = nn.Dropout(self.cfg.activation_dropout)(y, deterministic=deterministic)
        return _dense(self.cfg, self.cfg.hidden_size, "output_dense")(y)


class EncoderLayer(nn.Module):
    """One transformer layer, post-LN (Base) or pre-LN (stable layer norm); scan body.

    Returns (carry, hidden state); with `return_probs`, (carry, (hidden state, attention
    probabilities)). With `grad_scale` m (layer_grad_scale): carry and hidden state scale
    the gradient by m and m (1 - m) (`layer_grad_scale` below).
    """

    cfg: EncoderConfig
    deterministic: bool = True
    return_probs: bool = False

    @nn.compact
    def __call__(self, x_btd, mask_bt, position_bias_ntt, grad_scale=None):
        cfg = self.cfg
        attention = Attention(cfg, self.return_probs, name="attention")
        probs = None
        if self.return_probs:
            attention_fn = attention

            def attention(*args):
                nonlocal probs
                out, probs = attention_fn(*args)
                return out

        x_btd = _layer_body(self, cfg, attention, x_btd, mask_bt, position_bias_ntt)
        carry, hidden = _scaled_outputs(x_btd, grad_scale)
        return carry, ((hidden, probs) if self.return_probs else hidden)


def _layer_body(module, cfg, attention, x_btd, mask_bt, position_bias_ntt):
    """Attention + FFN with residuals, post-LN or pre-LN; defines the shared sub-modules."""
    det = module.deterministic
    drop = nn.Dropout(cfg.dropout, deterministic=det)
    layer_norm = _layer_norm(cfg, "layer_norm")
    feed_forward = FeedForward(cfg, name="feed_forward")
    final_layer_norm = _layer_norm(cfg, "final_layer_norm")
    if cfg.do_stable_layer_norm:
        h = attention(layer_norm(x_btd), mask_bt, position_bias_ntt, det)
        x_btd = x_btd + drop(h)
        return x_btd + drop(feed_forward(final_layer_norm(x_btd), det))
    h = attention(x_btd, mask_bt, position_bias_ntt, det)
    x_btd = layer_norm(x_btd + drop(h))
    return final_layer_norm(x_btd + drop(feed_forward(x_btd, det)))


def _scaled_outputs(x_btd, grad_scale):
    """(carry, hidden state): x itself, or ARMHuBERT's GradMultiply pair for scale m."""
    if grad_scale is None:
        return x_btd, x_btd
    carry = scale_gradient_by(x_btd, grad_scale)  # reusing_module.py L1347-1350
    return carry, scale_gradient_by(carry, 1.0 - grad_scale)  # L1352-1353
