"""Frame arithmetic against a real conv stack: which samples change which output frames."""

import numpy as np
import pytest

from stackdistill import frames

STACKS = [
    ((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)),  # HuBERT / WavLM
    ((5, 2), (3, 2)),
    ((4, 4, 3), (1, 2, 3)),
]


def _conv_stack(x: np.ndarray, kernels, strides, rng: np.random.Generator) -> np.ndarray:
    """A valid (unpadded) strided 1-D conv stack with random weights, in plain numpy."""
    for kernel, stride in zip(kernels, strides, strict=True):
        windows = np.lib.stride_tricks.sliding_window_view(x, kernel)[::stride]
        x = windows @ rng.standard_normal(kernel)
    return x


@pytest.mark.parametrize("kernels,strides", STACKS)
def test_frames_match_a_numpy_conv_stack(kernels, strides):
    rng = np.random.default_rng(0)
    num_samples = 3 * frames.receptive_field(kernels, strides) + 17
    x = rng.standard_normal(num_samples)
    weights_seed = 1
    out = _conv_stack(x, kernels, strides, np.random.default_rng(weights_seed))
    assert frames.num_frames(num_samples, kernels, strides) == len(out)
    lengths = frames.layer_lengths(num_samples, kernels, strides)
    assert lengths[-1] == len(out) and len(lengths) == len(kernels)
    # Perturb each sample alone: the frames it reaches give receptive field and hop.
    reaches = np.zeros((num_samples, len(out)), bool)
    for i in range(num_samples):
        bumped = x.copy()
        bumped[i] += 1.0
        changed = _conv_stack(bumped, kernels, strides, np.random.default_rng(weights_seed))
        reaches[i] = ~np.isclose(changed, out, rtol=0, atol=1e-12)
    field, hop = frames.receptive_field(kernels, strides), frames.hop(strides)
    for t in range(len(out)):
        seen = np.flatnonzero(reaches[:, t])
        assert (seen[0], seen[-1] + 1) == (hop * t, hop * t + field), t


def test_frame_lengths_clip_short_inputs_to_zero():
    kernels, strides = STACKS[0]
    lengths = np.array([0, 1, 399, 400, 719, 720, 16000])
    expected = [max(frames.num_frames(int(n), kernels, strides), 0) for n in lengths]
    got = frames.frame_lengths(lengths, kernels, strides)
    assert got.dtype == np.int32 and got.tolist() == expected == [0, 0, 0, 1, 1, 2, 49]
