"""SUPERB SD head: an LSTM on the weighted layer sum, PIT binary cross-entropy, DER of RTTMs.

From s3prl 0.4.18 (commit ec8064b5), s3prl/downstream/diarization/:
- model.py `Model` with config.yaml modelrc (rnn_layers 1, hidden_size 512): a unidirectional
  LSTM on the upstream features (no projection), then Linear(512 -> num_speakers 2);
- utils.py `pit_loss`: per utterance, the BCE-with-logits of every speaker column (mean over
  speakers, summed over valid frames) under each permutation of the labels, the smallest kept;
  summed over the batch and divided by its frames;
- dataset.py `_get_labeled_speech`: frame k of a segment [st, et) is 1 from rint(st * 16000 /
  frame_shift) to rint(et * 16000 / frame_shift), frame_shift the upstream's stride
  (expert.py: datarc.frame_shift null -> upstream_rate); training chunks of chunk_size 2000
  frames;
- expert.py + make_rttm.py + score.sh: sigmoid activities, thresholds 0.3 ... 0.7, median
  filters 1 and 11 frames, each turned into RTTM segments and scored by dscore (collar 0);
  the best of those ten DERs is the reported one (score.sh sorts them).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from scipy.signal import medfilt

from stackdistill.superb import detection, heads
from stackdistill.superb.tasks import Task

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)  # score.sh
MEDIANS = (1, 11)  # score.sh
SAMPLE_RATE = 16_000


class DiarizationLSTM(nn.Module):
    """Weighted layer sum (or one layer) -> LSTM -> per-speaker logits (B, T, K)."""

    num_speakers: int = 2
    hidden_size: int = 512
    layer: int | None = None

    @nn.compact
    def __call__(self, hidden: jax.Array, frames: jax.Array, train: bool = False):
        x = heads.featurize(self, hidden, self.layer)
        x = nn.RNN(nn.OptimizedLSTMCell(self.hidden_size), name="lstm")(x, seq_lengths=frames)
        return nn.Dense(self.num_speakers, name="output")(x)


def pit_loss(logits_btk: jax.Array, labels_btk: jax.Array, frames_b: jax.Array) -> jax.Array:
    """s3prl's permutation-invariant BCE: the best label order per utterance."""
    mask = (jnp.arange(logits_btk.shape[1])[None, :] < frames_b[:, None]).astype(jnp.float32)
    per_perm = []
    for perm in itertools.permutations(range(labels_btk.shape[2])):
        bce = optax.sigmoid_binary_cross_entropy(logits_btk, labels_btk[:, :, list(perm)])
        per_perm.append((bce.mean(-1) * mask).sum(1))
    best = jnp.min(jnp.stack(per_perm, axis=1), axis=1)
    return best.sum() / jnp.maximum(frames_b.sum(), 1)


def frame_labels(
    segments: Sequence[tuple[float, float, str]],
    speakers: Sequence[str],
    num_frames: int,
    frame_shift: int,
    num_speakers: int,
) -> np.ndarray:
    """(frames, speakers) 0/1 activity from segments, as dataset.py rounds their bounds."""
    labels = np.zeros((num_frames, num_speakers), np.float32)
    for start, end, speaker in segments:
        k = speakers.index(speaker)
        a = int(np.rint(start * SAMPLE_RATE / frame_shift))
        b = int(np.rint(end * SAMPLE_RATE / frame_shift))
        labels[max(a, 0) : max(min(b, num_frames), 0), k] = 1.0
    return labels


@dataclasses.dataclass
class DiarizationHead:
    """The SD head bound to its task: batches with frame labels, PIT loss, DER scoring."""

    task: Task
    model: DiarizationLSTM
    frame_shift: int  # samples per upstream frame
    chunk_frames: int = 2000

    def batch(self, data: Any, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Frames (first chunk_frames) and each recording's speaker activity."""
        hidden, frames, targets = data.batch(indices)
        hidden = hidden[:, :, : self.chunk_frames]
        frames = np.minimum(frames, self.chunk_frames)
        k = self.model.num_speakers
        labels = np.stack(
            [
                frame_labels(t["segments"], t["speakers"], hidden.shape[2], self.frame_shift, k)
                for t in targets
            ]
        )
        return {"hidden": hidden, "frames": frames.astype(np.int32), "labels": labels}

    def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array) -> jax.Array:
        """PIT BCE of the batch."""
        del rng
        logits = self.model.apply({"params": params}, batch["hidden"], batch["frames"])
        return pit_loss(logits, batch["labels"], batch["frames"])

    @functools.cached_property
    def predict_jit(self) -> Callable:
        """Speaker activity probabilities (B, T, K), jitted once."""

        def predict(params, batch):
            logits = self.model.apply({"params": params}, batch["hidden"], batch["frames"])
            return jax.nn.sigmoid(logits)

        return jax.jit(predict)


def activities(head: DiarizationHead, params: Any, data: Any) -> list[tuple[dict, np.ndarray]]:
    """(target, (frames, K) probabilities) of every recording, whole (chunk by chunk)."""
    out = []
    for i in range(len(data)):
        hidden, frames, (target,) = data.batch([i])
        probs = []
        for start in range(0, int(frames[0]), head.chunk_frames):
            n = min(head.chunk_frames, int(frames[0]) - start)
            chunk = {"hidden": hidden[:, :, start : start + head.chunk_frames],
                     "frames": np.array([n], np.int32)}  # fmt: skip
            probs.append(np.asarray(head.predict_jit(params, chunk))[0, :n])
        out.append((target, np.concatenate(probs)))
    return out


def best_der(
    results: Sequence[tuple[dict, np.ndarray]], frame_shift: int
) -> tuple[float, dict[str, float]]:
    """The lowest DER over score.sh's thresholds and median filters, and every one of them."""
    reference = {t["name"]: t["reference"] for t, _ in results}
    seconds = frame_shift / SAMPLE_RATE
    grid = {}
    for threshold, median in itertools.product(THRESHOLDS, MEDIANS):
        hypothesis = {}
        for target, probs in results:
            active = (probs > threshold).astype(np.int8)
            if median > 1:
                active = medfilt(active, (median, 1)).astype(np.int8)
            hypothesis[target["name"]] = detection.frames_to_segments(
                active, seconds, target["name"]
            )
        grid[f"th{threshold}_med{median}"] = detection.diarization_error_rate(reference, hypothesis)
    return min(grid.values()), grid


def scores(head: DiarizationHead, params: Any, data: Any, batch_size: int) -> dict[str, float]:
    """DER (the best of score.sh's grid) of a split's recordings."""
    del batch_size  # one recording at a time, as s3prl's test loader
    der, _ = best_der(activities(head, params, data), head.frame_shift)
    return {"der": der}


def make_head(
    task: Task, hp: ml_collections.ConfigDict, layer: int | None, frame_shift: int
) -> DiarizationHead:
    """The SD head with its hyper-parameters; labels at the upstream's frame shift."""
    model = DiarizationLSTM(hp.num_speakers, hp.lstm_dim, layer)
    return DiarizationHead(task, model, frame_shift, hp.chunk_frames)
