"""The distillation step: teacher forward, student forward/backward, optimizer update.

The step is pure: `(state, teacher_params, batch) -> (state, metrics)`. The state is a plain
pytree `{params, opt_state, step, stage, rng}`; the teacher params are a frozen argument,
never differentiated. Which student layer feeds which head is static per stage. With a
teacher-target cache (`cached=True`) the teacher does not run: the batch carries its
supervised layers ("targets", (B, K, T, D)) and, for a shared front-end, its CNN "features".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from stackdistill import losses, stacking
from stackdistill.models import student
from stackdistill.models.config import EncoderConfig
from stackdistill.models.encoder import Encoder, frame_mask
from stackdistill.recipes import star

State = dict[str, Any]
LOSSES = ("mse", "l1_cos", "star")
HEADLESS_LOSSES = ("star",)  # losses that read the student's hidden states, no heads
HEADS_ON = ("lineage", "last")


def default_config() -> ml_collections.ConfigDict:
    """The paper's targets: 3 initial layers <-> teacher layers 4, 8, 12; MSE + 0.5 x layer MSE."""
    c = ml_collections.ConfigDict()
    c.teacher_layers = (4, 8, 12)  # supervised teacher hidden states; the last is the output
    c.student_layers = ml_collections.FieldReference(None, field_type=tuple)  # initial stack
    c.loss = "mse"  # "mse" (paper: output MSE + w * mean intermediate MSE) | "l1_cos" | "star"
    c.intermediate_weight = 0.5
    c.cos_weight = 1.0  # l1_cos only
    c.heads_on = "lineage"  # "lineage": each target follows its layer; "last": DistilHuBERT
    c.star = star.default_config()  # loss="star" only: STaR's temporal Gram matrix weights
    return c


def head_layers(c: ml_collections.ConfigDict) -> tuple[int, ...]:
    """Teacher layers that get a prediction head: none for STaR (no extra parameters)."""
    return () if c.loss in HEADLESS_LOSSES else tuple(int(k) for k in c.teacher_layers)


def initial_student_layers(c: ml_collections.ConfigDict, start_depth: int) -> tuple[int, ...]:
    """Initial-stack layer of each target: from config, or evenly spaced ending on the top."""
    n = len(c.teacher_layers)
    if c.heads_on == "last":  # DistilHuBERT: every head reads the top layer
        return (start_depth - 1,) * n
    layers = c.student_layers or tuple((j + 1) * start_depth // n - 1 for j in range(n))
    if len(layers) != n:
        raise ValueError(
            f"config.distill.student_layers={tuple(layers)} must pair with "
            f"config.distill.teacher_layers={tuple(c.teacher_layers)}"
        )
    if any(not 0 <= s < start_depth for s in layers) or layers[-1] != start_depth - 1:
        raise ValueError(
            f"config.distill.student_layers={tuple(layers)}: each must be a layer of the "
            f"initial stack of {start_depth}, and the output target on its top layer"
        )
    return tuple(int(s) for s in layers)


def target_sources(
    c: ml_collections.ConfigDict,
    lineage: np.ndarray,
    initial_layers: Sequence[int],
    follow: str,
) -> dict[int, int]:
    """Teacher layer -> student hidden-state index (stack index + 1) for the current stack."""
    depth = len(lineage)
    if c.heads_on == "last":
        return {int(k): depth for k in c.teacher_layers}
    *inner, output = c.teacher_layers
    positions = stacking.supervised_layers(lineage, initial_layers[:-1], follow)
    sources = {int(k): p + 1 for k, p in zip(inner, positions)}
    sources[int(output)] = depth  # the output target always sits on the last layer
    return sources


def init_state(params: Any, tx: optax.GradientTransformation, seed: int) -> State:
    """A fresh train state at step 0, stage 0."""
    return {
        "params": params,
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        "stage": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(jax.random.key(seed)),
    }


def make_train_step(
    distill: ml_collections.ConfigDict,
    teacher_cfg: EncoderConfig,
    student_cfg: EncoderConfig,
    sources: Mapping[int, int],
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    shared_frontend: bool,
    cached: bool = False,
) -> Callable[[State, Any, dict[str, jax.Array]], tuple[State, dict[str, jax.Array]]]:
    """The pure step for one stage (the stack depth and `sources` are fixed inside).

    `cached`: the teacher's targets (and CNN features) come from the batch, not a forward.
    """
    output_layer = int(distill.teacher_layers[-1])
    use_dropout = student_cfg.has_dropout
    if distill.loss == "star" and cached:
        raise ValueError(
            "config.distill.loss='star' needs the teacher's hidden states k - 1 and k of every "
            "supervised layer k; stored targets (config.targets.dir) hold only "
            "config.distill.teacher_layers: run without them"
        )

    def teacher_outputs(teacher_params, batch):
        """(supervised hidden states indexable by teacher layer, frame mask, CNN features)."""
        if not cached:
            out = Encoder(teacher_cfg).apply(
                {"params": teacher_params}, batch["audio"], batch["lengths"]
            )
            return out.hidden_states, out.mask, out.features
        targets_bktd = batch["targets"]
        hidden = {int(k): targets_bktd[:, j] for j, k in enumerate(distill.teacher_layers)}
        mask = frame_mask(teacher_cfg, batch["lengths"], targets_bktd.shape[2])
        features = batch.get("features")
        return hidden, mask, None if features is None else features.astype(student_cfg.dtype)

    def loss_fn(params, teacher_out, batch, rng):
        hidden, mask, features = teacher_out
        out = student.apply_encoder(
            student_cfg,
            params["encoder"],
            batch.get("audio"),  # absent when the cache holds the CNN features
            batch["lengths"],
            features=features if shared_frontend else None,
            dropout_rng=rng if use_dropout else None,
        )
        if distill.loss == "star":
            w = distill.star
            return star.star_loss(
                out.hidden_states, hidden, mask, sources, w.layer_weight, w.intra_weight
            )
        preds = student.predict(params["heads"], out.hidden_states, sources)
        if distill.loss == "mse":
            return losses.paper_loss(preds, hidden, mask, output_layer, distill.intermediate_weight)
        return losses.distilhubert_loss(preds, hidden, mask, distill.cos_weight)

    def train_step(state: State, teacher_params: Any, batch: dict[str, jax.Array]):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        teacher_out = jax.lax.stop_gradient(teacher_outputs(teacher_params, batch))
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], teacher_out, batch, rng
        )
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["lr"] = schedule(state["step"])
        metrics["audio_seconds"] = jnp.sum(batch["lengths"]) / 16000.0
        new_state = {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, metrics

    return train_step


def validate(d: ml_collections.ConfigDict) -> None:
    """Refuses distillation settings (`config.distill`) that cannot work, naming the field."""
    if d.loss not in LOSSES:
        raise ValueError(f"config.distill.loss must be one of {LOSSES}, got {d.loss!r}")
    if d.heads_on not in HEADS_ON:
        raise ValueError(f"config.distill.heads_on must be one of {HEADS_ON}, got {d.heads_on!r}")
    if not d.teacher_layers:
        raise ValueError("config.distill.teacher_layers is empty")
    if d.loss == "star":
        star.validate(d)
