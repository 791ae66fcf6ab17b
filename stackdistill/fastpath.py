"""The GPU/TPU fast path in one place: its config section, XLA's GPU flags, remat by size.

Every option is selectable from the config; off by default on CPUs and GPUs (the path the CPU
tests pin down), and "auto" turns on, on a TPU, the ones that win by XLA's TPU cost model
(`AUTO`; --mode=compile resolves it for its compile target); benchmarks/gpu.sh times each
against the default on a GPU (benchmarks/RESULTS.md):

- `fastpath.attention="cudnn"`: attention by key lengths through cuDNN's fused kernel
  (models/encoder.py `attention`; CPU, float32 and WavLM's bias stay on XLA);
- `fastpath.attention="flash"`: Pallas's TPU flash attention kernel (models/flash_attention.py;
  elsewhere as "cudnn"), never writing the (T, T) probabilities to HBM; "auto" on a TPU;
- `fastpath.frontend_norm="compute"`: the CNN front-end's norms normalise in the compute
  dtype with float32 statistics (the GELUs already run in the compute dtype);
- `fastpath.first_conv="matmul"`: conv 0 (one input channel) as a matmul over strided
  windows, its GroupNorm folded into the matmul (models/encoder.py `first_conv_matmul`);
  "auto" on a TPU;
- `fastpath.strided_conv="matmul"`: the strided convs after conv 0 as matmuls over groups of
  stride frames (models/first_conv.py `strided_conv_matmul`); "auto" on a TPU;
- `fastpath.layer_norm="recompute"`: the transformer's LayerNorms (flax's forward) with a
  backward that recomputes the normalised input from the saved input and per-frame statistics
  instead of keeping three float32 copies of it (models/frontend.py `layer_norm`); "auto"
  on a TPU;
- `fastpath.xla_gpu_flags=True`: the XLA flags MaxText sets on GPUs (`GPU_FLAGS`), put in
  XLA_FLAGS by main.py before the backend starts, only where a GPU is present;
- `config.remat="auto"`: per model size, the cheapest policy whose saved activations fit in
  `fastpath.remat_memory_fraction` of one device's memory (`remat_policy`).
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any

import ml_collections

log = logging.getLogger("stackdistill")

# MaxText's GPU settings (its GPU docs and launch scripts): the latency-hiding scheduler,
# cuBLAS over Triton GEMMs, no command buffers, larger/pipelined collectives for multi-GPU
# runs, and no HLO rematerialisation pass (remat is chosen explicitly, config.remat).
GPU_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_enable_triton_gemm=false",
    "--xla_gpu_enable_command_buffer=",
    "--xla_gpu_enable_highest_priority_async_stream=true",
    "--xla_gpu_all_reduce_combine_threshold_bytes=134217728",
    "--xla_gpu_all_gather_combine_threshold_bytes=134217728",
    "--xla_gpu_reduce_scatter_combine_threshold_bytes=67108864",
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
    "--xla_gpu_enable_while_loop_double_buffering=true",
    "--xla_gpu_enable_all_gather_combine_by_dim=false",
    "--xla_gpu_enable_reduce_scatter_combine_by_dim=false",
    "--xla_disable_hlo_passes=rematerialization",
)
REMAT_ORDER = ("none", "dots_saveable", "nothing_saveable")  # most memory to least


# The encoder options and their values; "auto" resolves by platform (AUTO: TPU, else today's).
CHOICES = {
    "attention": ("auto", "xla", "cudnn", "flash"),
    "frontend_norm": ("float32", "compute"),
    "first_conv": ("auto", "conv", "matmul"),
    "strided_conv": ("auto", "conv", "matmul"),
    "layer_norm": ("auto", "flax", "recompute"),
}
# What "auto" means on a TPU: the levers that win by XLA's TPU cost model (benchmarks/RESULTS.md,
# "TPU by XLA's own cost model"); elsewhere (CPU, GPU) today's path.
AUTO = {
    "tpu": {
        "attention": "flash",
        "first_conv": "matmul",
        "strided_conv": "matmul",
        "layer_norm": "recompute",
    },
    "other": {
        "attention": "xla",
        "first_conv": "conv",
        "strided_conv": "conv",
        "layer_norm": "flax",
    },
}


def default_config() -> ml_collections.ConfigDict:
    """Fast-path options; "auto" is today's path except on a TPU (AUTO)."""
    c = ml_collections.ConfigDict()
    c.attention = "auto"  # "xla"; "cudnn": by key lengths, cuDNN on GPUs; "flash": Pallas on TPU
    c.frontend_norm = "float32"  # "compute": CNN norms in the compute dtype, f32 statistics
    c.first_conv = "auto"  # "conv"; "matmul": conv 0 over strided windows, GroupNorm folded in
    c.strided_conv = "auto"  # "conv"; "matmul": convs 1.. as matmuls over frame groups
    c.layer_norm = "auto"  # "flax"; "recompute": LayerNorms' backward recomputes from the input
    c.xla_gpu_flags = False  # MaxText's XLA GPU flags (GPU_FLAGS), set by main.py
    c.remat_memory_fraction = 0.5  # config.remat="auto": activations' share of device memory
    return c


def encoder_options(
    config: ml_collections.ConfigDict, platform: str | None = None
) -> dict[str, str]:
    """The EncoderConfig fields the fast path sets (teacher and student alike).

    "auto" resolves for `platform` ("tpu", "gpu", "cpu"; None: JAX's default backend).
    """
    f = config.get("fastpath") or default_config()
    out = {}
    for name, choices in CHOICES.items():
        value = f.get(name, choices[0])
        if value not in choices:
            raise ValueError(f"config.fastpath.{name}={value!r}: choose one of {choices}")
        if value == "auto":
            if platform is None:
                import jax

                platform = jax.default_backend()
            value = AUTO["tpu" if platform == "tpu" else "other"][name]
        out[name] = value
    return out


def gpu_present() -> bool:
    """Whether an NVIDIA GPU is visible, without starting a JAX backend."""
    platforms = os.environ.get("JAX_PLATFORMS", "") or os.environ.get("JAX_PLATFORM_NAME", "")
    if platforms and not any(p in platforms for p in ("cuda", "gpu")):
        return False
    return pathlib.Path("/dev/nvidiactl").exists() or pathlib.Path("/proc/driver/nvidia").exists()


def xla_flags(existing: str, flags: tuple[str, ...] = GPU_FLAGS) -> str:
    """XLA_FLAGS with `flags` first: a flag already in `existing` keeps its value there."""
    names = {f.split("=", 1)[0] for f in existing.split()}
    ours = [f for f in flags if f.split("=", 1)[0] not in names]
    return " ".join([*ours, existing]).strip()


def apply_xla_flags(config: ml_collections.ConfigDict) -> bool:
    """Puts GPU_FLAGS in XLA_FLAGS if config.fastpath.xla_gpu_flags and a GPU is present.

    Call before anything starts a JAX backend (XLA reads XLA_FLAGS once). True if applied.
    """
    f = config.get("fastpath")
    if not (f and f.xla_gpu_flags and gpu_present()):
        return False
    os.environ["XLA_FLAGS"] = xla_flags(os.environ.get("XLA_FLAGS", ""))
    log.info("XLA GPU flags: %s", os.environ["XLA_FLAGS"])
    return True


def saved_activation_bytes(cfg: Any, batch: int, frames: int, policy: str) -> int:
    """Rough bytes the backward keeps for the scanned layers of `cfg` under `policy`.

    Per layer and frame: none keeps ~8 D + 2 F values plus the (N, T) attention scores and
    weights; dots_saveable keeps the matmul outputs (4 D + F, the Q K^T scores); nothing_saveable
    keeps the layer input (D).
    """
    d, f, n, t = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, frames
    per_frame = {
        "none": 8 * d + 2 * f + 2 * n * t,
        "dots_saveable": 4 * d + f + n * t,
        "nothing_saveable": d,
    }[policy]
    itemsize = 2 if cfg.dtype == "bfloat16" else 4
    return cfg.num_layers * batch * frames * per_frame * itemsize


def remat_policy(
    config: ml_collections.ConfigDict,
    cfg: Any,
    batch_per_device: int,
    device_bytes: int | None = None,
) -> str:
    """config.remat, with "auto" resolved for this model size, per-device batch and device."""
    if config.remat != "auto":
        return config.remat
    if device_bytes is None:
        device_bytes = _device_bytes()
    if device_bytes is None:  # CPU: no memory limit reported, nothing to save
        return "none"
    frames = cfg.num_frames(config.data.max_samples)
    budget = (config.get("fastpath") or default_config()).remat_memory_fraction * device_bytes
    for policy in REMAT_ORDER:
        if saved_activation_bytes(cfg, batch_per_device, frames, policy) <= budget:
            return policy
    return REMAT_ORDER[-1]


def _device_bytes() -> int | None:
    """Memory of the first local device, if the backend reports it."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")
