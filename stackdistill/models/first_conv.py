"""fastpath.first_conv="matmul": the front-end's first conv as a matmul over strided windows."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from stackdistill.models.config import EncoderConfig

Array = jax.Array


def strided_windows(wav_bs: Array, kernel: int, stride: int) -> Array:
    """(B, S) -> (B, T, kernel): the samples each output frame of a VALID 1-D conv reads.

    With stride dividing kernel (HuBERT's 10 / 5), a reshape into stride-long chunks and
    kernel / stride shifted views of them; otherwise `kernel` strided slices.
    """
    b, s = wav_bs.shape
    t = (s - kernel) // stride + 1
    if t < 1:
        raise ValueError(f"{s} samples are fewer than the first conv's kernel ({kernel})")
    if kernel % stride == 0:
        span = kernel // stride
        chunks = wav_bs[:, : stride * (t + span - 1)].reshape(b, -1, stride)
        return jnp.concatenate([chunks[:, j : j + t] for j in range(span)], axis=-1)
    stop = stride * (t - 1) + 1
    return jnp.stack([wav_bs[:, j : j + stop : stride] for j in range(kernel)], axis=-1)


class Params(nn.Module):
    """Declares params by name, shape and initializer (same names as flax's modules)."""

    specs: tuple[tuple[str, tuple[int, ...], str], ...]  # (name, shape, "lecun" | "zeros" | "ones")

    @nn.compact
    def __call__(self) -> dict[str, Array]:
        inits = {
            "lecun": nn.initializers.lecun_normal(),
            "zeros": nn.initializers.zeros,
            "ones": nn.initializers.ones,
        }
        return {name: self.param(name, inits[init], shape) for name, shape, init in self.specs}


def first_conv_matmul(cfg: EncoderConfig, wav_bs: Array, conv: dict, norm: dict | None) -> Array:
    """Conv 0 (one input channel) as a (B, T, K) x (K, C) matmul over strided windows.

    `fastpath.first_conv="matmul"`. With its GroupNorm (`norm`: one group per channel, over
    time, padding included), the norm is folded into the matmul: channel c's output is
    w_c . x_t, so its mean over time is w_c . m and its variance w_c^T Cov w_c, where m and
    Cov (K x K) are the windows' mean and covariance, in float32. The matmul then runs on the
    centred windows with the kernel scaled by scale_c / std_c, plus the norm's bias: no pass
    over the (B, T, C) output for statistics, forward or backward.
    """
    k, s = cfg.conv_kernel[0], cfg.conv_stride[0]
    x_btk = strided_windows(wav_bs.astype(jnp.float32), k, s)
    w_kc = conv["kernel"][:, 0, :]
    if norm is None:  # a LayerNorm over channels follows (ConvLayer)
        y_btc = x_btk.astype(cfg.dtype) @ w_kc.astype(cfg.dtype)
        return y_btc + conv["bias"].astype(cfg.dtype) if "bias" in conv else y_btc
    hi = jax.lax.Precision.HIGHEST
    m_bk = x_btk.mean(1)
    xc_btk = x_btk - m_bk[:, None, :]  # centred: no cancellation of a DC offset in bf16
    cov_bkk = jnp.einsum("btk,btl->bkl", xc_btk, xc_btk, precision=hi) / x_btk.shape[1]
    var_bc = jnp.einsum("bkl,kc,lc->bc", cov_bkk, w_kc, w_kc, precision=hi)
    gain_bc = jax.lax.rsqrt(var_bc + 1e-5) * norm["scale"]  # the conv bias cancels
    w_bkc = (w_kc[None] * gain_bc[:, None, :]).astype(cfg.dtype)
    y_btc = jnp.einsum("btk,bkc->btc", xc_btk.astype(cfg.dtype), w_bkc)
    return y_btc + norm["bias"].astype(cfg.dtype)[None, None]
