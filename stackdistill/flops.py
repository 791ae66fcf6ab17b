"""FLOP counts of a distillation step, analytic and from XLA's cost analysis, and MFU.

The analytic count takes every matrix product and convolution of the encoder (2 FLOPs per
multiply-add) and leaves out the elementwise work (norms, GELU, softmax, the optimizer),
which XLA counts too: on a Base-sized model that part is a few percent (tests/test_flops.py
bounds the gap). A training step is one teacher forward plus three student forwards
(forward + backward, the backward costing two), less the student's CNN when it reuses the
teacher's frozen front-end.
"""

from __future__ import annotations

from typing import Any

from stackdistill import frames
from stackdistill.models.config import EncoderConfig

CPU_PEAK_FLOPS = 230e9  # FP32, 2 cores x 3.6 GHz x 32 FLOP/cycle (AVX-512 FMA), this machine
H100_BF16_PEAK_FLOPS = 989e12  # dense bf16, H100/H200 SXM datasheet


def frontend_flops(cfg: EncoderConfig, batch: int, num_samples: int) -> float:
    """The CNN front-end on `batch` waveforms of `num_samples`: sum of its convolutions."""
    lengths = frames.layer_lengths(num_samples, cfg.conv_kernel, cfg.conv_stride)
    channels_in = (1, *cfg.conv_dim[:-1])
    layers = zip(lengths, cfg.conv_kernel, channels_in, cfg.conv_dim, strict=True)
    return sum(2.0 * batch * length * k * c_in * c_out for length, k, c_in, c_out in layers)


def transformer_flops(cfg: EncoderConfig, batch: int, num_frames: int) -> float:
    """Projection, positional conv and the layers (projections, FFN, attention scores)."""
    d, f, t = cfg.hidden_size, cfg.intermediate_size, num_frames
    projection = 2.0 * batch * t * cfg.conv_dim[-1] * d if cfg.feat_proj else 0.0
    k = cfg.num_conv_pos_embeddings
    pos_frames = t + 1 if k % 2 == 0 else t  # an even kernel computes one frame more
    pos_conv = 2.0 * batch * pos_frames * k * (d // cfg.num_conv_pos_embedding_groups) * d
    per_layer = 2.0 * batch * t * (4 * d * d + 2 * d * f + 2 * t * d)
    # A reuse layer (ARMHuBERT) has no q/k projections and no q k^T: v, out, FFN, probs @ v.
    per_reuse_layer = 2.0 * batch * t * (2 * d * d + 2 * d * f + t * d)
    num_reuse = cfg.num_layers - cfg.num_blocks
    return projection + pos_conv + cfg.num_blocks * per_layer + num_reuse * per_reuse_layer


def encoder_flops(
    cfg: EncoderConfig, batch: int, num_samples: int, with_frontend: bool = True
) -> float:
    """One forward pass of the encoder on a padded (batch, num_samples) waveform batch."""
    frontend = frontend_flops(cfg, batch, num_samples) if with_frontend else 0.0
    return frontend + transformer_flops(cfg, batch, cfg.num_frames(num_samples))


def step_flops(
    teacher_cfg: EncoderConfig,
    student_cfg: EncoderConfig,
    batch: int,
    num_samples: int,
    num_targets: int,
    shared_frontend: bool = False,
    with_teacher: bool = True,
    teacher_passes: int = 1,
    gram_layers: int = 0,
) -> float:
    """Teacher forward(s) (unless its targets are cached) + student forward and backward (3x
    its forward), heads included. Masking distillation runs the teacher twice; `gram_layers`:
    STaR's two T x T Gram matrices per supervised layer on each side (the teacher's forward
    only)."""
    frames = teacher_cfg.num_frames(num_samples)
    heads = 2.0 * batch * frames * student_cfg.hidden_size * teacher_cfg.hidden_size * num_targets
    student = encoder_flops(student_cfg, batch, num_samples, with_frontend=not shared_frontend)
    teacher = encoder_flops(teacher_cfg, batch, num_samples) if with_teacher else 0.0
    teacher *= teacher_passes
    gram = 2.0 * 2.0 * batch * frames * frames * gram_layers  # 2 matrices of 2 B T^2 D each
    return (
        teacher
        + 3.0 * (student + heads + gram * student_cfg.hidden_size)
        + gram * teacher_cfg.hidden_size
    )


def xla_flops(compiled: Any) -> float:
    """FLOPs XLA's cost analysis reports for a compiled computation (0 when it has none)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float((cost or {}).get("flops", 0.0))


def mfu(flops_per_step: float, seconds_per_step: float, peak_flops: float) -> float:
    """Model FLOP utilisation: achieved FLOP/s over the hardware's peak."""
    return flops_per_step / seconds_per_step / peak_flops
