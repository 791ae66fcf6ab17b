"""The expected number of remaining parameters, a differentiable function of the gates.

Follows DPHuBERT's `get_num_params` (pyf98/DPHuBERT `wav2vec2/components.py`, commit
c18093f): a conv keeps E[channels] = L0 of its gate and costs in * out * k (+ out bias, + 2 out
norm), and its output count is the next conv's input count (L122-134, L187-196: a pruned
channel shrinks the next conv and, through the last conv, the dummy weight, the projection's
LayerNorm and its input, L276-277); attention costs (D+1) * heads * d_head * 3 +
(heads * d_head + 1) * D, times the L0 of its layer gate (L438-449); the FFN (D+1) * F +
(F+1) * D, times its layer gate (L750-761); each layer's two LayerNorms 4D (L859-865); the
positional conv all its params (weight_v, weight_g, bias) + the encoder LayerNorm (L929-934).

Their formula leaves out WavLM's relative-bias table and gating params (SelfAttention's count
is reused by WavLMSelfAttention), while the sparsity denominator is the teacher's full numel
(lightning.py L170): `teacher_num_params` counts them, `count` does not, as theirs.
Where our config differs from their model (HuBERT without the projection LayerNorm), the count
follows our config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from stackdistill.models.config import EncoderConfig
from stackdistill.pruning import hardconcrete

Numeric = float | jnp.ndarray


def count(
    cfg: EncoderConfig,
    conv_channels: Sequence[Numeric] | None = None,
    heads: Numeric | None = None,
    attention_on: Numeric | None = None,
    ffn_units: Numeric | None = None,
    ffn_on: Numeric | None = None,
    layer_copies: int = 1,
) -> jnp.ndarray:
    """Their parameter count for per-unit (expected) sizes; None means the config's full size.

    `conv_channels` has one entry per conv; `heads`, `attention_on`, `ffn_units`, `ffn_on`
    are (L,) arrays (kept heads, attention block kept, FFN units, FFN block kept).
    `layer_copies` = r counts every transformer layer r times: the model the L layers grow
    into by interleaved stacking to depth r * L (each layer and its copies keep its units).
    """
    d, n = cfg.hidden_size, cfg.num_layers
    head_dim = d // cfg.num_heads
    channels = list(cfg.conv_dim) if conv_channels is None else list(conv_channels)
    if len(channels) != len(cfg.conv_dim):
        raise ValueError(f"conv_channels has {len(channels)} entries, the config {cfg.conv_dim}")

    total = jnp.zeros((), jnp.float32)
    c_in: Numeric = 1
    for i, (c_out, k) in enumerate(zip(channels, cfg.conv_kernel)):
        total += c_in * c_out * k
        if cfg.conv_bias:
            total += c_out
        if cfg.feat_extract_norm == "layer" or i == 0:
            total += 2 * c_out
        c_in = c_out
    total += c_in  # their dummy weight (components.py L194)
    if cfg.feat_proj_layer_norm or cfg.model_type != "hubert":
        total += 2 * c_in
    total += (c_in + 1) * d

    k, g = cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups
    total += d * (d // g) * k + k + d  # weight_v, weight_g (weight norm over dim 2), bias
    total += 2 * d

    def full(x, size):
        return jnp.full((n,), size, jnp.float32) if x is None else jnp.asarray(x, jnp.float32)

    heads_l = full(heads, cfg.num_heads)
    attn = (d + 1) * heads_l * head_dim * 3 + (heads_l * head_dim + 1) * d
    attn = attn * full(attention_on, 1)
    ffn_l = full(ffn_units, cfg.intermediate_size)
    ffn = ((d + 1) * ffn_l + (ffn_l + 1) * d) * full(ffn_on, 1)
    return total + layer_copies * jnp.sum(4 * d + attn + ffn)


def expected_num_params(
    cfg: EncoderConfig,
    gates: Mapping[str, jnp.ndarray | list[jnp.ndarray]],
    layer_copies: int = 1,
) -> jnp.ndarray:
    """Expected remaining params of the gated model (their `Wav2Vec2Model.get_num_params`);
    with `layer_copies` = r, of the model its layers grow into (`count`)."""
    conv = gates.get("conv")
    return count(
        cfg,
        conv_channels=None if conv is None else [hardconcrete.l0_norm(c) for c in conv],
        heads=_l0(gates, "head"),
        attention_on=_l0(gates, "attlayer"),
        ffn_units=_l0(gates, "interm"),
        ffn_on=_l0(gates, "ffnlayer"),
        layer_copies=layer_copies,
    )


def _l0(gates, unit):
    return None if unit not in gates else hardconcrete.l0_norm(gates[unit])


def units_of_padded(cfg: EncoderConfig, encoder_params: Mapping) -> dict[str, np.ndarray]:
    """Kept units per layer read off a zero-padded encoder's non-zero structure (`count` kwargs).

    A head is kept when its q rows are not all zero, an FFN unit when its input column is not,
    a block when its output bias is not (a removed block is all zeros, `pruning.checkpoint`).
    """
    layers = jax.tree_util.tree_map(np.asarray, encoder_params["encoder"]["layers"])
    n, h = cfg.num_layers, cfg.hidden_size // cfg.num_heads
    q = layers["attention"]["q_proj"]["kernel"].reshape(n, -1, cfg.num_heads, h)
    w1 = layers["feed_forward"]["intermediate_dense"]["kernel"]
    out_bias = layers["attention"]["out_proj"]["bias"]
    ffn_bias = layers["feed_forward"]["output_dense"]["bias"]
    return dict(
        heads=(np.abs(q).sum((1, 3)) > 0).sum(1),
        attention_on=(np.abs(out_bias).sum(1) > 0).astype(np.float32),
        ffn_units=(np.abs(w1).sum(1) > 0).sum(1),
        ffn_on=(np.abs(ffn_bias).sum(1) > 0).astype(np.float32),
    )


def teacher_num_params(cfg: EncoderConfig) -> int:
    """All params of the unpruned model in their layout: the sparsity's denominator."""
    with jax.ensure_compile_time_eval():  # a constant, also when called under jit
        total = int(count(cfg))
    if cfg.model_type == "wavlm":
        head_dim = cfg.hidden_size // cfg.num_heads
        total += cfg.num_buckets * cfg.num_heads  # rel_attn_embed, layer 0 only
        total += cfg.num_layers * (head_dim * 8 + 8 + cfg.num_heads)  # gru_rel_pos_*
    return total


def expected_sparsity(
    cfg: EncoderConfig,
    gates: Mapping[str, jnp.ndarray | list[jnp.ndarray]],
    layer_copies: int = 1,
) -> jnp.ndarray:
    """1 - expected params / teacher params (lightning.py L269).

    With `layer_copies` = r (a student of the teacher's every r-th layer, grown back by
    interleaved stacking after the prune step): of the grown model, against the teacher
    of r times the student's depth.
    """
    full = cfg.replace(num_layers=cfg.num_layers * layer_copies)
    return 1.0 - expected_num_params(cfg, gates, layer_copies) / teacher_num_params(full)
