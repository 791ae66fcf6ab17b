"""The CNN front-end and what sits between it and the layers: conv stack, projection, the
convolutional positional embedding, gradient scaling; shared helpers of the encoder.

Parameter names follow transformers' HubertModel / WavLMModel / Wav2Vec2Model (converted by
stackdistill/convert.py); `encoder.py` assembles these with the transformer layers.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from stackdistill.models.config import EncoderConfig
from stackdistill.models.first_conv import Params, first_conv_matmul, strided_conv_matmul

Array = jax.Array


def _gelu(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=False)  # transformers' "gelu" is the exact erf form


def _layer_norm(cfg: EncoderConfig, name: str, eps: float | None = None) -> nn.Module:
    eps = cfg.layer_norm_eps if eps is None else eps
    if cfg.layer_norm == "recompute":
        return LayerNorm(epsilon=eps, dtype=cfg.dtype, name=name)
    return nn.LayerNorm(epsilon=eps, dtype=cfg.dtype, use_fast_variance=False, name=name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x: Array, scale: Array, bias: Array, eps: float, dtype) -> Array:
    """flax's LayerNorm over the last axis (float32 statistics, two-pass variance, the
    normalisation in float32, the result in `dtype`), whose backward recomputes the
    normalised input from `x` and the per-frame statistics: autodiff of flax's saves three
    float32 (..., D) tensors for its backward, this saves `x` as it came (bf16 in training)
    and two float32 numbers per frame. Same forward, same gradients up to float32 rounding."""
    return _layer_norm_fwd(x, scale, bias, eps, dtype)[0]


def _layer_norm_fwd(x, scale, bias, eps, dtype):
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    rstd = jax.lax.rsqrt(var + eps)
    y = (x32 - mean) * (rstd * scale) + bias  # flax's _normalize, in its order
    return y.astype(dtype), (x, mean, rstd, scale)


def _layer_norm_bwd(eps, dtype, res, g):
    del eps, dtype
    x, mean, rstd, scale = res
    x_hat = (x.astype(mean.dtype) - mean) * rstd
    g = g.astype(mean.dtype)
    axes = tuple(range(g.ndim - 1))
    g_hat = g * scale
    dx = rstd * (
        g_hat - g_hat.mean(-1, keepdims=True) - x_hat * (g_hat * x_hat).mean(-1, keepdims=True)
    )
    return dx.astype(x.dtype), (g * x_hat).sum(axes), g.sum(axes)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
    """`fastpath.layer_norm="recompute"`: flax's nn.LayerNorm (same params, same forward) with
    `layer_norm`'s backward, which keeps the input instead of three float32 copies of it."""

    epsilon: float
    dtype: str

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale, bias = _scale_bias(self, x.shape[-1])
        return layer_norm(x, scale, bias, self.epsilon, jnp.dtype(self.dtype))


def _scale_bias(module: nn.Module, channels: int) -> tuple[Array, Array]:
    """A norm's params as flax's LayerNorm declares them: "scale" (ones), "bias" (zeros)."""
    scale = module.param("scale", nn.initializers.ones, (channels,))
    return scale, module.param("bias", nn.initializers.zeros, (channels,))


def _dense(cfg: EncoderConfig, features: int, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=cfg.dtype, name=name)


class FrontendNorm(nn.Module):
    """LayerNorm over channels (axis -1) or GroupNorm with a group per channel (axis 1, time).

    Statistics in float32 (two-pass variance, as flax's), the normalisation itself in the
    compute dtype (flax's runs it in float32); params "scale"/"bias" as flax's LayerNorm.
    """

    epsilon: float
    axis: int
    dtype: str

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale, bias = _scale_bias(self, x.shape[-1])
        x32 = x.astype(jnp.float32)
        mean = x32.mean(self.axis, keepdims=True)
        inv = jax.lax.rsqrt(jnp.square(x32 - mean).mean(self.axis, keepdims=True) + self.epsilon)
        x = x.astype(self.dtype)
        if self.axis == 1:  # per channel: fold scale into the (B, 1, C) factor
            return (x - mean.astype(x.dtype)) * (inv * scale).astype(x.dtype) + bias.astype(x.dtype)
        y = (x - mean.astype(x.dtype)) * inv.astype(x.dtype)
        return y * scale.astype(x.dtype) + bias.astype(x.dtype)


class ConvLayer(nn.Module):
    """One conv of the front-end, with its norm (GroupNorm on conv 0 or LayerNorm) and GELU."""

    cfg: EncoderConfig
    index: int

    @nn.compact
    def __call__(self, x_btc: Array) -> Array:
        cfg, i = self.cfg, self.index
        if i == 0 and cfg.first_conv == "matmul":
            # Same params (names, shapes, inits) as nn.Conv and the norm below.
            k, c = cfg.conv_kernel[0], cfg.conv_dim[0]
            specs = (("kernel", (k, 1, c), "lecun"),) + cfg.conv_bias * (("bias", (c,), "zeros"),)
            conv = Params(specs, name="conv")()
            group = cfg.feat_extract_norm == "group"
            norm_specs = (("scale", (c,), "ones"), ("bias", (c,), "zeros"))
            norm = Params(norm_specs, name="layer_norm")() if group else None
            x_btc = first_conv_matmul(cfg, x_btc[..., 0], conv, norm)
            if group:  # the norm is folded into the matmul
                return _gelu(x_btc)
        elif i > 0 and cfg.strided_conv == "matmul":
            k, c_in, c = cfg.conv_kernel[i], x_btc.shape[-1], cfg.conv_dim[i]
            specs = (("kernel", (k, c_in, c), "lecun"),) + cfg.conv_bias * (
                ("bias", (c,), "zeros"),
            )
            conv = Params(specs, name="conv")()  # nn.Conv's names, shapes and inits
            x_btc = strided_conv_matmul(
                x_btc, conv["kernel"], conv.get("bias"), cfg.conv_stride[i], cfg.dtype
            )
        else:
            x_btc = nn.Conv(
                cfg.conv_dim[i],
                kernel_size=(cfg.conv_kernel[i],),
                strides=(cfg.conv_stride[i],),
                padding="VALID",
                use_bias=cfg.conv_bias,
                dtype=cfg.dtype,
                name="conv",
            )(x_btc.astype(cfg.dtype))
        if cfg.frontend_norm == "compute" and (cfg.feat_extract_norm == "layer" or i == 0):
            axis = -1 if cfg.feat_extract_norm == "layer" else 1  # LayerNorm | GroupNorm
            x_btc = FrontendNorm(1e-5, axis, cfg.dtype, name="layer_norm")(x_btc)
        elif cfg.feat_extract_norm == "layer":
            x_btc = _layer_norm(cfg, "layer_norm", eps=1e-5)(x_btc)
        elif i == 0:
            # One group per channel: normalises each channel over time, padding included,
            # exactly as transformers does (its GroupNorm never sees the attention mask).
            x_btc = nn.GroupNorm(
                num_groups=cfg.conv_dim[0],
                epsilon=1e-5,
                dtype=cfg.dtype,
                use_fast_variance=False,
                name="layer_norm",
            )(x_btc)
        return _gelu(x_btc)


class FeatureExtractor(nn.Module):
    """The CNN front-end: waveform (B, S) -> features (B, T, C)."""

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, wav_bs: Array) -> Array:
        x_btc = wav_bs[:, :, None]  # conv 0 casts to the compute dtype (the matmul form later)
        for i in range(len(self.cfg.conv_dim)):
            x_btc = ConvLayer(self.cfg, i, name=f"conv_layers_{i}")(x_btc)
        if self.cfg.feature_scale:  # DPHuBERT's dummy_weight (their components.py L184)
            scale = self.param("feature_scale", nn.initializers.ones, (x_btc.shape[-1],))
            x_btc = x_btc * scale.astype(x_btc.dtype)
        return x_btc


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def scale_gradient(x: Array, scale: float) -> Array:
    """Identity forward; the gradient times `scale` backward (fairseq's GradMultiply)."""
    return x


def _scale_gradient_fwd(x, scale):
    return x, None


def _scale_gradient_bwd(scale, _, dy):
    return (dy * jnp.asarray(scale, dy.dtype),)


scale_gradient.defvjp(_scale_gradient_fwd, _scale_gradient_bwd)


@jax.custom_vjp
def scale_gradient_by(x: Array, scale: Array) -> Array:
    """`scale_gradient` with a traced scale (per-layer data inside a scan); no grad to scale."""
    return x


def _scale_gradient_by_fwd(x, scale):
    return x, scale


def _scale_gradient_by_bwd(scale, dy):
    return dy * scale.astype(dy.dtype), jnp.zeros_like(scale)


scale_gradient_by.defvjp(_scale_gradient_by_fwd, _scale_gradient_by_bwd)


class FeatureProjection(nn.Module):
    """[LayerNorm] + Linear from the CNN width to the transformer width.

    HuBERT makes the LayerNorm optional (`feat_proj_layer_norm`; DistilHuBERT has none);
    WavLM and wav2vec2 always have it. `feat_proj=False` keeps the LayerNorm and drops the
    Linear, as fairseq does when the CNN width equals the encoder's (ARMHuBERT's
    models/armhubert/model.py L270-274 `post_extract_proj`, L286 and L405 its LayerNorm).
    """

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x_btc: Array) -> Array:
        if self.cfg.feat_proj_layer_norm or self.cfg.model_type != "hubert":
            x_btc = _layer_norm(self.cfg, "layer_norm")(x_btc)
        if not self.cfg.feat_proj:
            return x_btc
        return _dense(self.cfg, self.cfg.hidden_size, "projection")(x_btc)


def _conv_nwc(x, w, padding, groups):
    return jax.lax.conv_general_dilated(
        x, w, (1,), [padding], dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=groups
    )


def _grouped_kernel_grad(x_btc, dy_btd, padding, groups):
    """d(loss)/d(kernel) of a stride-1 grouped 1-D conv, written as a forward grouped conv.

    dW[k, c, (g, d)] = sum_{b,t} x_pad[b, t + k, (g, c)] dy[b, t, (g, d)] is a conv whose batch
    is c, whose features are (g, b) and whose kernel is dy over time. XLA's CPU backend lowers
    the transposed conv it would emit for this (batch_group_count) ~18x slower than this form.
    """
    b, _, d_in = x_btc.shape
    c = d_in // groups
    x_pad = jnp.pad(x_btc, ((0, 0), padding, (0, 0)))
    lhs = x_pad.reshape(b, -1, groups, c).transpose(3, 1, 2, 0).reshape(c, -1, groups * b)
    rhs = dy_btd.transpose(1, 0, 2)  # (T_out, B, D): the "kernel" runs over time
    return _conv_nwc(lhs, rhs, (0, 0), groups).transpose(1, 0, 2)  # (K, C, D)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _grouped_conv(x_btc, w_kcd, padding, groups):
    return _conv_nwc(x_btc, w_kcd, padding, groups)


def _grouped_conv_fwd(x_btc, w_kcd, padding, groups):
    return _conv_nwc(x_btc, w_kcd, padding, groups), (x_btc, w_kcd)


def _grouped_conv_bwd(padding, groups, res, dy_btd):
    x_btc, w_kcd = res
    conv = functools.partial(_conv_nwc, padding=padding, groups=groups)
    dx = jax.vjp(lambda x: conv(x, w_kcd), x_btc)[1](dy_btd)[0]  # XLA's: fast everywhere
    dw = jax.lax.platform_dependent(
        x_btc,
        dy_btd,
        cpu=lambda x, dy: _grouped_kernel_grad(x, dy, padding, groups).astype(w_kcd.dtype),
        default=lambda x, dy: jax.vjp(lambda w: conv(x, w), w_kcd)[1](dy)[0],
    )
    return dx, dw


_grouped_conv.defvjp(_grouped_conv_fwd, _grouped_conv_bwd)


def _pos_conv_general_dilated(
    lhs, rhs, window_strides, padding, *, lhs_dilation, rhs_dilation, feature_group_count, **_
):
    """`lax.conv_general_dilated` as nn.Conv calls it, for the 1-D stride-1 positional conv."""
    if any(s != 1 for s in (*window_strides, *(lhs_dilation or ()), *(rhs_dilation or ()))):
        raise NotImplementedError("positional conv: only stride 1 without dilation")
    return _grouped_conv(lhs, rhs, tuple(padding[0]), feature_group_count)


class PositionalConvEmbedding(nn.Module):
    """Grouped conv over time (weight norm folded into the kernel), same-padded, GELU."""

    cfg: EncoderConfig

    @nn.compact
    def __call__(self, x_btd: Array) -> Array:
        k = self.cfg.num_conv_pos_embeddings
        y_btd = nn.Conv(
            self.cfg.hidden_size,
            kernel_size=(k,),
            padding=[(k // 2, k // 2)],
            feature_group_count=self.cfg.num_conv_pos_embedding_groups,
            dtype=self.cfg.dtype,
            conv_general_dilated=_pos_conv_general_dilated,
            name="conv",
        )(x_btd)
        if k % 2 == 0:  # an even kernel yields one frame too many; transformers drops the last
            y_btd = y_btd[:, :-1]
        return _gelu(y_btd)
