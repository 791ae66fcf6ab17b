"""Models: the shared HuBERT/WavLM encoder (`encode`) and the distillation students."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stackdistill.models.config import EncoderConfig
from stackdistill.models.encoder import Encoder, EncoderOutput, frame_lengths, frame_mask

__all__ = [
    "Encoder",
    "EncoderConfig",
    "EncoderOutput",
    "encode",
    "frame_lengths",
    "frame_mask",
    "init_params",
    "param_count",
]

Params = dict[str, Any]


def init_params(cfg: EncoderConfig, rng: jax.Array, num_samples: int = 16000) -> Params:
    """Random float32 params for `cfg` (shapes do not depend on `num_samples`)."""
    wav = jnp.zeros((1, num_samples), jnp.float32)
    lengths = jnp.full((1,), num_samples, jnp.int32)
    return jax.jit(Encoder(cfg).init)(rng, wav, lengths)["params"]


def param_count(params: Params) -> int:
    """Number of scalars in a param tree."""
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))


def _check_inputs(cfg: EncoderConfig, wav: Any, lengths: Any) -> None:
    """Raises ValueError on a bad waveform batch; values are checked only when concrete."""
    if wav.ndim != 2:
        raise ValueError(f"wav must be (batch, samples), got shape {tuple(wav.shape)}")
    if not jnp.issubdtype(wav.dtype, jnp.floating):
        raise ValueError(f"wav must be float (16 kHz, in [-1, 1]), got dtype {wav.dtype}")
    if lengths.shape != wav.shape[:1]:
        raise ValueError(f"lengths must be ({wav.shape[0]},), got shape {tuple(lengths.shape)}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"lengths must be integer sample counts, got dtype {lengths.dtype}")
    if isinstance(lengths, jax.core.Tracer):
        return
    lengths = np.asarray(lengths)
    if (lengths > wav.shape[1]).any():
        raise ValueError(
            f"lengths {lengths.tolist()} exceed the {wav.shape[1]} samples of the wav batch"
        )
    if (lengths < cfg.receptive_field).any():
        raise ValueError(
            f"lengths {lengths.tolist()}: every utterance needs at least {cfg.receptive_field} "
            "samples (one frame of the CNN front-end)"
        )


def encode(
    cfg: EncoderConfig, params: Params, wav: Any, lengths: Any, **apply_kwargs: Any
) -> EncoderOutput:
    """Runs the encoder on float32 `wav` (B, S) at 16 kHz with `lengths` (B,) valid samples.

    Returns `.hidden_states` (L+1, B, T, D) — the entries of transformers'
    `output_hidden_states=True`, in order — `.last_hidden_state`, `.mask` (B, T) and the CNN
    `.features`. The depth is read from `params`, so a grown student needs no new config.
    """
    wav, lengths = jnp.asarray(wav), jnp.asarray(lengths)
    _check_inputs(cfg, wav, lengths)
    cfg = cfg.at_depth_of(params)
    return Encoder(cfg).apply({"params": params}, wav, lengths, **apply_kwargs)
