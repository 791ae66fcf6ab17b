"""One Flax encoder for teacher and student: CNN front-end, projection, conv positions, layers.

The front-end, projection and positional conv are in `frontend.py`, one layer and its
attention in `layers.py`, reuse blocks in `reuse.py`; this module holds the scanned stack and
the `Encoder` that assembles them.

Covers the HuBERT and WavLM families of transformers (post-LN Base and pre-LN "stable layer
norm" Large variants; WavLM's gated relative position bias). The transformer layers are one
`nn.scan` over a leading layer axis: the params under `encoder/layers` have shape (N, ...).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from stackdistill import frames
from stackdistill.models.config import EncoderConfig
from stackdistill.models.frontend import (
    FeatureExtractor,
    FeatureProjection,
    PositionalConvEmbedding,
    _layer_norm,
    scale_gradient,
)
from stackdistill.models.layers import EncoderLayer, relative_position_buckets
from stackdistill.models.reuse import ReuseBlock, layer_grad_scales

Array = jax.Array


_REMAT = {
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
}


class TransformerEncoder(nn.Module):
    """Positional conv, norm, and the scanned layer stack; returns every hidden state."""

    cfg: EncoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_btd: Array, mask_bt: Array) -> tuple[Array, Array]:
        cfg = self.cfg
        x_btd = jnp.where(mask_bt[..., None], x_btd, 0)  # padded frames enter as zeros
        x_btd = x_btd + PositionalConvEmbedding(cfg, name="pos_conv_embed")(x_btd)
        layer_norm = _layer_norm(cfg, "layer_norm")
        if not cfg.do_stable_layer_norm:
            x_btd = layer_norm(x_btd)
        x_btd = nn.Dropout(cfg.dropout)(x_btd, deterministic=self.deterministic)

        position_bias_ntt = None
        if cfg.model_type == "wavlm":
            # Computed once (transformers: by layer 0) and shared by every layer.
            t = x_btd.shape[1]
            buckets = relative_position_buckets(t, cfg.num_buckets, cfg.max_bucket_distance)
            table = nn.Embed(cfg.num_buckets, cfg.num_heads, name="rel_attn_embed")
            position_bias_ntt = table(jnp.asarray(buckets)).transpose(2, 0, 1)

        top_btd, layer_outs_lbtd = _scanned_layers(self, x_btd, mask_bt, position_bias_ntt)
        # transformers 5 records the input of the first layer and the raw output of every layer;
        # for stable-layer-norm models the final LayerNorm only enters last_hidden_state.
        hidden_lbtd = jnp.concatenate([x_btd[None], layer_outs_lbtd])
        last_btd = layer_norm(top_btd) if cfg.do_stable_layer_norm else top_btd
        return hidden_lbtd, last_btd


def _scanned_layers(module: nn.Module, x_btd, mask_bt, position_bias_ntt):
    """The scanned stack (`layers`): layers, or reuse blocks; returns (top, (L, B, T, D))."""
    cfg = module.cfg
    k = cfg.layers_per_block
    layer_cls = EncoderLayer if k == 1 else ReuseBlock
    if cfg.remat != "none":
        layer_cls = nn.remat(layer_cls, policy=_REMAT[cfg.remat], prevent_cse=False)
    args = (x_btd, mask_bt, position_bias_ntt)
    in_axes = (nn.broadcast, nn.broadcast)
    if k > 1 or cfg.layer_grad_scale:
        scales = None
        if cfg.layer_grad_scale:
            scales = jnp.asarray(layer_grad_scales(cfg.num_layers).reshape(cfg.num_blocks, k))
            scales = scales[:, 0] if k == 1 else scales
        args, in_axes = (*args, scales), (*in_axes, 0)
    stack = nn.scan(
        layer_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=in_axes,
        length=cfg.num_blocks,
    )(cfg, module.deterministic, name="layers")
    top_btd, outs = stack(*args)
    return top_btd, outs.reshape(-1, *outs.shape[-3:])


class EncoderOutput(NamedTuple):
    """Every hidden state (L+1, B, T, D), the final output (B, T, D) and the frame mask (B, T)."""

    hidden_states: Array
    last_hidden_state: Array
    mask: Array
    features: Array  # CNN front-end output (B, T, C), before the projection


class Encoder(nn.Module):
    """The whole encoder: waveform + lengths -> EncoderOutput."""

    cfg: EncoderConfig
    deterministic: bool = True

    def setup(self):
        self.feature_extractor = FeatureExtractor(self.cfg)
        self.feature_projection = FeatureProjection(self.cfg)
        self.dropout_input = nn.Dropout(self.cfg.dropout_input)
        if self.cfg.mask_emb:
            # fairseq/ARMHuBERT: torch.FloatTensor(D).uniform_() (models/maskhubert/model.py
            # L275-277, models/armhubert/model.py L288-290): uniform on [0, 1).
            self.masked_spec_embed = self.param(
                "masked_spec_embed", nn.initializers.uniform(1.0), (self.cfg.hidden_size,)
            )
        self.encoder = TransformerEncoder(self.cfg, self.deterministic)

    def __call__(
        self, wav_bs: Array, lengths_b: Array, time_mask_bt: Array | None = None
    ) -> EncoderOutput:
        features_btc = self.feature_extractor(wav_bs)
        if self.cfg.feature_grad_mult != 1.0:
            features_btc = scale_gradient(features_btc, self.cfg.feature_grad_mult)
        return self.from_features(features_btc, lengths_b, time_mask_bt)

    def from_features(
        self, features_btc: Array, lengths_b: Array, time_mask_bt: Array | None = None
    ) -> EncoderOutput:
        """Runs everything after the CNN front-end (for a shared, precomputed front-end).

        `time_mask_bt` (B, T) bool: frames replaced by `masked_spec_embed` after the projection
        and `dropout_input`, before the positional conv -- fairseq HuBERT's `forward` order
        (dropout_input, then apply_mask) and transformers' (`_mask_hidden_states` after the
        feature projection). Needs `cfg.mask_emb`.
        """
        mask_bt = frame_mask(self.cfg, lengths_b, features_btc.shape[1])
        x_btd = self.feature_projection(features_btc)
        x_btd = self.dropout_input(x_btd, deterministic=self.deterministic)
        if time_mask_bt is not None:
            if not self.cfg.mask_emb:
                raise ValueError(
                    "a time mask needs a mask embedding: set config.student.mask_emb=True "
                    "(a teacher needs `masked_spec_embed` in its checkpoint)"
                )
            if time_mask_bt.shape != mask_bt.shape:
                raise ValueError(
                    f"time mask of shape {tuple(time_mask_bt.shape)} for "
                    f"{tuple(mask_bt.shape)} frames"
                )
            embed = self.masked_spec_embed.astype(x_btd.dtype)
            x_btd = jnp.where(time_mask_bt[..., None], embed, x_btd)
        hidden_lbtd, last_btd = self.encoder(x_btd, mask_bt)
        return EncoderOutput(hidden_lbtd, last_btd, mask_bt, features_btc)


def frame_lengths(cfg: EncoderConfig, lengths_b: Array) -> Array:
    """Valid frames per utterance from valid samples (see stackdistill/frames.py)."""
    return frames.frame_lengths(lengths_b, cfg.conv_kernel, cfg.conv_stride)


def frame_mask(cfg: EncoderConfig, lengths_b: Array, num_frames: int) -> Array:
    """(B, T) bool, True on valid frames."""
    return jnp.arange(num_frames)[None, :] < frame_lengths(cfg, lengths_b)[:, None]
