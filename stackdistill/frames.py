"""Frame arithmetic of the CNN front-end: samples in, frames out, for any conv stack.

Each conv layer (kernel k, stride s, no padding) maps L inputs to (L - k) // s + 1 outputs.
The functions take the stack as two sequences, `kernels` and `strides` (an EncoderConfig's
`conv_kernel` and `conv_stride`), so that models, the data pipeline and the FLOP counts share
them without knowing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import jax.numpy as jnp

Length = TypeVar("Length")  # an int or an integer array (one length per utterance)


def layer_lengths(
    num_samples: Length, kernels: Sequence[int], strides: Sequence[int]
) -> list[Length]:
    """Output length of each conv layer in turn for an input of `num_samples` (ints or arrays)."""
    lengths = []
    for kernel, stride in zip(kernels, strides, strict=True):
        num_samples = (num_samples - kernel) // stride + 1
        lengths.append(num_samples)
    return lengths


def num_frames(num_samples: Length, kernels: Sequence[int], strides: Sequence[int]) -> Length:
    """Frames the front-end produces for `num_samples` samples."""
    return layer_lengths(num_samples, kernels, strides)[-1]


def frame_lengths(lengths_b, kernels: Sequence[int], strides: Sequence[int]) -> jnp.ndarray:
    """Valid frames per utterance (int32 array, never negative) from valid samples."""
    return jnp.maximum(num_frames(jnp.asarray(lengths_b, jnp.int32), kernels, strides), 0)


def receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Samples seen by one output frame (400 for HuBERT's front-end)."""
    field = 1
    for kernel, stride in reversed(list(zip(kernels, strides, strict=True))):
        field = (field - 1) * stride + kernel
    return field


def hop(strides: Sequence[int]) -> int:
    """Samples between two output frames (320 for HuBERT: 20 ms at 16 kHz)."""
    step = 1
    for stride in strides:
        step *= stride
    return step
