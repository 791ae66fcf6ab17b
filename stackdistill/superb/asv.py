"""SUPERB ASV head: s3prl's x-vector on the weighted layer sum, AM-softmax, cosine-scored trials.

From s3prl 0.4.18 (commit ec8064b5), s3prl/downstream/sv_voxceleb1/ (config.yaml is a link to
configs/amsoftmax.yaml):
- expert.py: `connector` Linear(upstream dim -> modelrc.input_dim 512) on the frames;
- model.py `XVector`: five TDNN layers (a Linear over context frames, then ReLU; no batch norm,
  no dropout: module_config.XVector) with (context, dilation) (5, 1), (3, 2), (3, 3), (1, 1),
  (1, 1), 512 wide, the last agg_dim 1500 wide; they shorten a sequence by 14 frames;
- `SP` statistics pooling: the mean and the (unbiased) std over valid frames, concatenated;
- `UtteranceExtractor`: Linear(3000 -> 512) + ReLU, Linear(512 -> 512) + ReLU for training; the
  embedding scored at test time is the first Linear + ReLU only (`inference`);
- `AMSoftmaxLoss` (s 30, m 0.4): cosine logits of the L2-normalised embedding against
  L2-normalised class weights (xavier-normal init), the target's minus m, all times s;
- expert.py `log_records`: trial score = cosine similarity of the two L2-normalised embeddings;
  EER as sv_voxceleb1/utils.py (superb/detection.py).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from stackdistill.superb import detection, heads
from stackdistill.superb.tasks import Task

TDNN_LAYERS = ((5, 1), (3, 2), (3, 3), (1, 1), (1, 1))  # (context size, dilation)
TDNN_SHRINK = sum((c - 1) * d for c, d in TDNN_LAYERS)  # 14 frames


class XVector(nn.Module):
    """Weighted layer sum -> connector -> TDNN -> statistics pooling -> embedding layers."""

    num_classes: int
    input_dim: int = 512
    agg_dim: int = 1500
    layer: int | None = None

    @nn.compact
    def __call__(self, hidden: jax.Array, frames: jax.Array, train: bool = False):
        x = heads.featurize(self, hidden, self.layer)
        x = nn.Dense(self.input_dim, name="connector")(x)
        for i, (context, dilation) in enumerate(TDNN_LAYERS):
            width = self.agg_dim if i == len(TDNN_LAYERS) - 1 else self.input_dim
            conv = nn.Conv(width, (context,), kernel_dilation=(dilation,), padding="VALID")
            x = nn.relu(conv(x))
        valid = jnp.maximum(frames - TDNN_SHRINK, 2)  # (B,)
        mask = (jnp.arange(x.shape[1])[None, :] < valid[:, None]).astype(x.dtype)[..., None]
        count = valid.astype(x.dtype)[:, None]
        mean = (x * mask).sum(1) / count
        var = (((x - mean[:, None]) ** 2) * mask).sum(1) / (count - 1.0)
        # floored: a channel constant over time (ReLU at 0) would give sqrt's gradient at 0
        stats = jnp.concatenate([mean, jnp.sqrt(jnp.maximum(var, 1e-10))], axis=-1)
        embedding = nn.relu(nn.Dense(self.input_dim, name="utterance_1")(stats))
        if not train:
            return embedding
        hidden_2 = nn.relu(nn.Dense(self.input_dim, name="utterance_2")(embedding))
        weights = self.param(
            "am_softmax", nn.initializers.xavier_normal(), (self.input_dim, self.num_classes)
        )
        return hidden_2, weights


def am_softmax_loss(x_bh, weights_hc, labels_b, s: float = 30.0, m: float = 0.4) -> jax.Array:
    """Additive-margin softmax cross-entropy (s3prl's AMSoftmaxLoss), mean over the batch."""
    x = x_bh / jnp.maximum(jnp.linalg.norm(x_bh, axis=1, keepdims=True), 1e-12)
    w = weights_hc / jnp.maximum(jnp.linalg.norm(weights_hc, axis=0, keepdims=True), 1e-12)
    cosine = x @ w
    logits = s * (cosine - m * jax.nn.one_hot(labels_b, cosine.shape[1]))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels_b).mean()


@dataclasses.dataclass
class VerificationHead:
    """The x-vector head bound to its task: batches, AM-softmax loss, embeddings, trial EER."""

    task: Task
    model: XVector
    margin: float = 0.4
    scale: float = 30.0

    def batch(self, data: Any, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Frames of a few utterances and their speaker ids."""
        hidden, frames, targets = data.batch(indices)
        minimum = TDNN_SHRINK + 2
        if hidden.shape[2] < minimum:  # too short for the TDNN: pad (frames stay as they are)
            pad = [(0, 0), (0, 0), (0, minimum - hidden.shape[2]), (0, 0)]
            hidden = np.pad(hidden, pad)
        labels = np.array([t[0] for t in targets], np.int32)
        return {"hidden": hidden, "frames": frames.astype(np.int32), "labels": labels}

    def init(self, key: jax.Array, batch: dict[str, np.ndarray]) -> Any:
        """Parameters, the training-only layers included."""
        return self.model.init(key, batch["hidden"], batch["frames"], train=True)["params"]

    def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array) -> jax.Array:
        """AM-softmax loss of the training embeddings."""
        del rng  # no dropout (module_config.XVector.dropout_p 0)
        x, weights = self.model.apply(
            {"params": params}, batch["hidden"], batch["frames"], train=True
        )
        return am_softmax_loss(x, weights, batch["labels"], self.scale, self.margin)

    @functools.cached_property
    def predict_jit(self) -> Callable:
        """L2-normalised test embeddings, jitted once."""

        def predict(params, batch):
            e = self.model.apply({"params": params}, batch["hidden"], batch["frames"])
            return e / jnp.maximum(jnp.linalg.norm(e, axis=1, keepdims=True), 1e-12)

        return jax.jit(predict)


def embeddings(head: VerificationHead, params: Any, data: Any, batch_size: int) -> np.ndarray:
    """(N, 512) normalised embeddings of every utterance of `data`, in order."""
    n, out = len(data), []
    for start in range(0, n, batch_size):
        chunk = np.arange(start, min(start + batch_size, n))
        padded = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - len(chunk))])
        out.append(np.asarray(head.predict_jit(params, head.batch(data, padded)))[: len(chunk)])
    return np.concatenate(out)


def scores(head: VerificationHead, params: Any, data: Any, batch_size: int) -> dict[str, float]:
    """EER of the task's trials, each scored by the cosine of its two embeddings."""
    e = embeddings(head, params, data, batch_size)
    index = {r["name"]: i for i, r in enumerate(head.task.splits["test"])}
    labels = [label for label, _, _ in head.task.trials]
    cosines = [float(e[index[a]] @ e[index[b]]) for _, a, b in head.task.trials]
    return {"eer": detection.equal_error_rate(labels, cosines)}


def make_head(task: Task, hp: ml_collections.ConfigDict, layer: int | None = None):
    """The x-vector head of the ASV task with its hyper-parameters."""
    model = XVector(len(task.classes[0]), hp.proj_dim, hp.agg_dim, layer)
    return VerificationHead(task, model, hp.am_margin, hp.am_scale)
