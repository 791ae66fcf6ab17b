"""The front-end's convs as matmuls: conv 0 over strided windows (fastpath.first_conv="matmul"),
the strided convs after it over groups of frames (fastpath.strided_conv="matmul")."""

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


def strided_conv_matmul(x_btc: Array, kernel_kio: Array, bias: Array | None, stride: int, dtype):
    """A VALID 1-D conv (kernel k, stride s, any channels) as matmuls over s-frame groups.

    `fastpath.strided_conv="matmul"`. The frames are grouped s at a time, (B, L, C) ->
    (B, G, s C) (a reshape); output frame t reads groups t, t + 1, ..., so the conv is
    ceil(k / s) matmuls (B, T, rows C) x (rows C, O) on shifted views of the groups, the last
    reading the first k - (ceil(k / s) - 1) s frames of its group: the conv's own flops,
    accumulated in float32. Frames past L that complete the last group (zeros) are never
    read by a kernel tap. Same params as nn.Conv: `kernel_kio` (k, C, O), `bias` (O,).
    """
    b, length, c = x_btc.shape
    k, _, o = kernel_kio.shape
    t = (length - k) // stride + 1
    if t < 1:
        raise ValueError(f"{length} frames are fewer than the conv's kernel ({k})")
    span = -(-k // stride)
    need = stride * (t + span - 1)
    if length >= need:
        x_btc = x_btc[:, :need]
    else:
        x_btc = jnp.pad(x_btc, ((0, 0), (0, need - length), (0, 0)))
    groups = x_btc.astype(dtype).reshape(b, t + span - 1, stride * c)
    w = kernel_kio.astype(dtype)
    y = None
    for j in range(span):
        rows = min(stride, k - j * stride)
        w_j = w[j * stride : j * stride + rows].reshape(rows * c, o)
        part = jnp.einsum(
            "btc,co->bto", groups[:, j : j + t, : rows * c], w_j,
            preferred_element_type=jnp.float32,
        )  # fmt: skip
        y = part if y is None else y + part
    y = y.astype(dtype)
    return y if bias is None else y + bias.astype(dtype)
