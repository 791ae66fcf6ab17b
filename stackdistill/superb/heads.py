"""SUPERB downstream heads on frozen features: weighted layer sum, light head, training, scoring.

The featurizer is s3prl's: a softmax over L+1 learnable scalars (initialised to zero, so the
first step averages the layers) weighs every hidden state. s3prl can also layer-norm each hidden
state first (`normalize=True`); its default is off, and so is ours (superb.normalize_layers,
applied at extraction). The heads, as in s3prl's downstream experts:
- utterance tasks: projection to 256, mean pooling, linear (pooled first: see features.py);
  one softmax per label group (Fluent Speech Commands: action, object, location), losses added;
- PR: projection to 256, linear, CTC;  ASR: projection to 1024, 2-layer BiLSTM (1024 per
  direction, dropout 0.2), linear, CTC.
`layer` replaces the weighted sum by one hidden state (layer_selection "last": -1). Training,
scoring and the head checkpoints are in superb/training.py.

The plain-parameter pieces (`linear_params`, `ctc_head`, `ctc_loss`) are shared with the layer
probes (superb/probes.py) and the tiny teacher's own heads.
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

from stackdistill.superb.tasks import Task

Params = dict[str, Any]


def linear_params(rng: jax.Array, fan_in: int, fan_out: int) -> Params:
    """A linear layer as plain params: kernel uniform in +-1/sqrt(fan_in) (torch's), zero bias."""
    bound = 1.0 / np.sqrt(fan_in)
    kernel = jax.random.uniform(rng, (fan_in, fan_out), jnp.float32, -bound, bound)
    return {"kernel": kernel, "bias": jnp.zeros((fan_out,), jnp.float32)}


def ctc_head(rng: jax.Array, fan_in: int, num_labels: int) -> Params:
    """A linear CTC head whose blank (id 0) starts at probability 0.9 on zero input."""
    head = linear_params(rng, fan_in, num_labels)
    # CTC's best paths are mostly blanks; from a zero bias Adam needs hundreds of steps to
    # get there (the plateau of a fresh CTC model).
    head["bias"] = head["bias"].at[0].set(np.log(9.0 * (num_labels - 1)))
    return head


def ctc_loss(
    logits_btv: jax.Array,
    mask_bt: jax.Array,
    ids: jax.Array,
    paddings: jax.Array,
    feasible_b: jax.Array | None = None,
) -> jax.Array:
    """optax CTC (blank 0) per utterance, divided by its token count, averaged over the batch.

    With `feasible_b`, utterances marked 0 (too few frames for their tokens) count zero, as
    torch's CTCLoss(reduction="mean", zero_infinity=True) that s3prl uses.
    """
    per_seq = optax.ctc_loss(logits_btv, 1.0 - mask_bt.astype(jnp.float32), ids, paddings)
    per_token = per_seq / jnp.maximum(jnp.sum(1.0 - paddings, axis=1), 1.0)
    if feasible_b is not None:
        per_token = jnp.where(feasible_b > 0, per_token, 0.0)
    return jnp.mean(per_token)


class BiLSTM(nn.Module):
    """One bidirectional LSTM layer over (B, T, D), reading each utterance's valid frames."""

    features: int

    @nn.compact
    def __call__(self, x_btd: jax.Array, frames_b: jax.Array) -> jax.Array:
        # parent=None: each cell belongs to its RNN (params forward/cell, backward/cell).
        forward = nn.RNN(nn.OptimizedLSTMCell(self.features, parent=None), name="forward")
        backward = nn.RNN(nn.OptimizedLSTMCell(self.features, parent=None), name="backward")
        return nn.Bidirectional(forward, backward)(x_btd, seq_lengths=frames_b)


def featurize(module: nn.Module, hidden: jax.Array, layer: int | None) -> jax.Array:
    """s3prl's featurizer inside `module`: the softmax-weighted sum of the hidden states
    (L+1, B, ...), its L+1 logits the param "layer_logits" (zeros: the first step averages),
    or the one hidden state `layer` when it is set."""
    if layer is not None:
        return hidden[layer]
    layer_logits = module.param("layer_logits", nn.initializers.zeros, (hidden.shape[0],))
    return jnp.tensordot(jax.nn.softmax(layer_logits), hidden, axes=1)


class Downstream(nn.Module):
    """Softmax-weighted sum of hidden states (L+1, B, [T,] D), then the task's head."""

    out_dim: int
    head: str = "linear"  # "linear" | "bilstm"
    proj_dim: int = 256
    lstm_dim: int = 1024
    lstm_layers: int = 2
    dropout: float = 0.2
    layer: int | None = None  # one hidden state (e.g. -1, the last) instead of the weighted sum

    @nn.compact
    def __call__(self, hidden: jax.Array, frames: jax.Array | None = None, train: bool = False):
        x = featurize(self, hidden, self.layer)
        x = nn.Dense(self.proj_dim, name="projector")(x)
        if self.head == "bilstm":
            for i in range(self.lstm_layers):
                x = BiLSTM(self.lstm_dim, name=f"bilstm_{i}")(x, frames)
                x = nn.Dropout(self.dropout)(x, deterministic=not train)
        return nn.Dense(self.out_dim, name="output")(x)


def layer_weights(params: Any, num_hidden: int | None = None, layer: int = -1) -> np.ndarray:
    """The learned softmax weights of the hidden states (L+1,); one-hot for a fixed layer."""
    if "layer_logits" in params:
        return np.asarray(jax.nn.softmax(params["layer_logits"]))
    if num_hidden is None:
        raise ValueError("a head on one hidden state: give num_hidden for its weights")
    weights = np.zeros(num_hidden, np.float32)
    weights[layer] = 1.0
    return weights


def ctc_labels(targets: Sequence[Sequence[int]], multiple: int = 16) -> tuple[np.ndarray, ...]:
    """Token lists -> (labels (B, N) zero-padded, paddings (B, N) 1.0 on padding, lengths)."""
    lengths = np.array([len(t) for t in targets], np.int32)
    n = int(np.ceil(max(lengths.max(), 1) / multiple) * multiple)
    labels = np.zeros((len(targets), n), np.int32)
    for i, t in enumerate(targets):
        labels[i, : len(t)] = t
    paddings = (np.arange(n)[None, :] >= lengths[:, None]).astype(np.float32)
    return labels, paddings, lengths


def ctc_min_frames(targets: Sequence[Sequence[int]]) -> np.ndarray:
    """Frames a CTC alignment needs: one per token, plus a blank between repeated tokens."""
    return np.array([len(t) + sum(a == b for a, b in zip(t, t[1:])) for t in targets], np.int32)


@dataclasses.dataclass
class TaskHead:
    """A task's head bound to its data kind: builds batches, losses and predictions."""

    task: Task
    model: Downstream

    @property
    def group_sizes(self) -> list[int]:
        """Classes per label group (utterance tasks)."""
        return [len(g) for g in self.task.classes]

    def batch(self, data: Any, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """The arrays of one (train or eval) batch."""
        if self.task.kind == "utterance":
            pooled, labels = data
            return {"hidden": pooled[:, indices], "labels": labels[indices]}
        hidden, frames, targets = data.batch(indices)
        labels, paddings, _ = ctc_labels(targets)
        feasible = (frames >= ctc_min_frames(targets)) & (paddings.min(1) == 0)
        return {
            "hidden": hidden,
            "frames": frames.astype(np.int32),
            "labels": labels,
            "label_paddings": paddings,
            "feasible": feasible.astype(np.float32),
        }

    def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array) -> jax.Array:
        """Mean cross-entropy (summed over label groups) or mean CTC loss per target token."""
        logits = self.model.apply(
            {"params": params},
            batch["hidden"],
            batch.get("frames"),
            train=True,
            rngs={"dropout": rng},
        )
        if self.task.kind == "utterance":
            total, start = 0.0, 0
            for g, size in enumerate(self.group_sizes):
                group = logits[:, start : start + size]
                ce = optax.softmax_cross_entropy_with_integer_labels(group, batch["labels"][:, g])
                total, start = total + ce.mean(), start + size
            return total
        mask_bt = jnp.arange(logits.shape[1])[None, :] < batch["frames"][:, None]
        return ctc_loss(
            logits, mask_bt, batch["labels"], batch["label_paddings"], batch["feasible"]
        )

    @functools.cached_property
    def predict_jit(self) -> Callable:
        """`predict`, jitted once per head."""
        return jax.jit(self.predict)

    def predict(self, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
        """Class ids (B, groups) or frame-wise argmax ids (B, T)."""
        logits = self.model.apply({"params": params}, batch["hidden"], batch.get("frames"))
        if self.task.kind == "ctc":
            return logits.argmax(-1)
        bounds = np.cumsum([0, *self.group_sizes])
        return jnp.stack(
            [logits[:, a:b].argmax(-1) for a, b in zip(bounds[:-1], bounds[1:])], axis=1
        )


def make_head(task: Task, hp: ml_collections.ConfigDict, layer: int | None = None) -> TaskHead:
    """The downstream model of a task with its hyper-parameters (`layer`: see Downstream)."""
    out_dim = (
        sum(len(g) for g in task.classes) if task.kind == "utterance" else len(task.classes[0])
    )
    model = Downstream(
        out_dim=out_dim,
        head=task.head,
        proj_dim=hp.proj_dim,
        lstm_dim=hp.get("lstm_dim", 1024),
        lstm_layers=hp.get("lstm_layers", 2),
        dropout=hp.get("dropout", 0.2),
        layer=layer,
    )
    return TaskHead(task, model)
