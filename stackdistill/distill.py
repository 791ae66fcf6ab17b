"""The distillation step: teacher forward, student forward/backward, optimizer update.

The step is pure: `(state, teacher_params, batch) -> (state, metrics)`. The state is a plain
pytree `{params, opt_state, step, stage, rng}`; the teacher params are a frozen argument,
never differentiated. Which student layer feeds which head is static per stage. With a
teacher-target cache (`cached=True`) the teacher does not run: the batch carries its
supervised layers ("targets", (B, K, T, D)) and, for a shared front-end, its CNN "features".
With `loss="masked"` (MaskHuBERT / ARMHuBERT, stackdistill/recipes/masking.py) the step samples
a span mask, runs the teacher on the unmasked and the masked input and the student on the
masked input.
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
from stackdistill.models.encoder import Encoder, frame_lengths, frame_mask
from stackdistill.recipes import masking, star

State = dict[str, Any]
LOSSES = ("mse", "l1_cos", "masked", "star")
HEADLESS_LOSSES = ("star",)  # losses that read the student's hidden states, no heads
HEADS_ON = ("lineage", "last")
TARGETS = ("fixed", "every_layer")


def default_config() -> ml_collections.ConfigDict:
    """The paper's targets: 3 initial layers <-> teacher layers 4, 8, 12; MSE + 0.5 x layer MSE."""
    c = ml_collections.ConfigDict()
    c.teacher_layers = (4, 8, 12)  # supervised teacher hidden states; the last is the output
    c.student_layers = ml_collections.FieldReference(None, field_type=tuple)  # initial stack
    c.loss = "mse"  # "mse" (paper: output MSE + w * mean intermediate MSE) | "l1_cos" | "star"
    c.intermediate_weight = 0.5
    c.cos_weight = 1.0  # l1_cos only
    c.heads_on = "lineage"  # "lineage": each target follows its layer; "last": DistilHuBERT
    # "fixed": the targets above; "every_layer": every student layer is supervised by the
    # teacher layer at its relative depth (MaskHuBERT/ARMHuBERT; a stack deeper than the teacher:
    # every teacher layer once, at its relative depth; see every_layer_sources)
    c.targets = "fixed"
    # loss="masked" (MaskHuBERT/ARMHuBERT, recipes/masking.py): the span mask (their yaml's
    # `teacher:` block) and calculate_loss's weights: random_layer_weight, rec_loss_weight,
    # rec_loss_type ("mse" | "l1")
    c.masking = masking.default_config()
    c.hint_weight = 0.1
    c.rec_weight = 1.0
    c.rec_loss = "mse"
    c.star = star.default_config()  # loss="star" only: STaR's temporal Gram matrix weights
    return c


def head_layers(c: ml_collections.ConfigDict) -> tuple[int, ...]:
    """Teacher layers that get a prediction head: none for STaR (no extra parameters)."""
    return () if c.loss in HEADLESS_LOSSES else tuple(int(k) for k in c.teacher_layers)


def initial_student_layers(c: ml_collections.ConfigDict, start_depth: int) -> tuple[int, ...]:
    """Initial-stack layer of each target: from config, or evenly spaced ending on the top."""
    if c.get("targets", "fixed") == "every_layer":  # every layer has its target at every depth
        return ()
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
    if c.get("targets", "fixed") == "every_layer":
        return every_layer_sources(depth, int(c.teacher_layers[-1]))
    if c.heads_on == "last":
        return {int(k): depth for k in c.teacher_layers}
    *inner, output = c.teacher_layers
    positions = stacking.supervised_layers(lineage, initial_layers[:-1], follow)
    sources = {int(k): p + 1 for k, p in zip(inner, positions)}
    sources[int(output)] = depth  # the output target always sits on the last layer
    return sources


def every_layer_sources(depth: int, teacher_depth: int) -> dict[int, int]:
    """Teacher layer -> student hidden state when every student layer is supervised.

    Student layer i (0-based) of a depth-d stack reads teacher layer round((i + 1) L / d)
    (halves up), L being the output target layer: at d = L it is their i <-> i + 1 (train.py
    L246-264 with `distil_random_layer: 11` = all 11 intermediate layers, plus the last).

    This is what following the lineage means when every layer is supervised. Interleaved
    growth puts each copy right after its original, so a layer keeps its relative depth: at
    3 -> 6, layer j (at (j+1)/3, target 4(j+1)) becomes layers 2j and 2j+1, and the copy 2j+1
    -- the last layer of the block descending from j, the one `stacking.supervised_layers`
    picks -- sits at (2j+2)/6 = (j+1)/3 and keeps exactly the target its ancestor had, while
    the new in-between slot 2j takes the teacher layer in between. So every target of the
    shallow stack stays on its block's last layer and the added layers get the added
    targets. Under top or middle growth relative depths move; the rule then re-spreads the
    targets by position (the only assignment that supervises every layer once), not by lineage.

    A stack deeper than the teacher (d > L: e.g. a 12-layer student of a 6-layer teacher) has
    more layers than targets: then every teacher layer k is supervised once, on the student
    hidden state at its relative depth, round(k d / L) (halves up; distinct since d / L > 1),
    and the layers in between have none.
    """
    if depth < 1 or teacher_depth < 1:
        raise ValueError(
            f"config.distill.targets='every_layer' needs a student depth (now {depth}) and an "
            f"output teacher layer (now {teacher_depth}) of at least 1 "
            "(config.distill.teacher_layers[-1])"
        )
    if depth > teacher_depth:
        return {
            k: (2 * k * depth + teacher_depth) // (2 * teacher_depth)
            for k in range(1, teacher_depth + 1)
        }
    return {(2 * (i + 1) * teacher_depth + depth) // (2 * depth): i + 1 for i in range(depth)}


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
    if distill.loss == "masked":
        if cached:
            raise ValueError(
                "config.distill.loss='masked' cannot use stored teacher targets "
                "(config.targets.dir): the masked teacher's outputs depend on the mask drawn "
                "at each step; unset config.targets.dir or choose another config.distill.loss"
            )
        return _masked_train_step(
            distill, teacher_cfg, student_cfg, sources, tx, schedule, shared_frontend
        )
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
        return _apply_grads(state, grads, metrics, batch, tx, schedule)

    return train_step


def _apply_grads(state, grads, metrics, batch, tx, schedule):
    """The optimizer update and the step's common metrics."""
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["lr"] = schedule(state["step"])
    metrics["audio_seconds"] = jnp.sum(batch["lengths"]) / 16000.0
    new_state = {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1}
    return new_state, metrics


def _masked_train_step(distill, teacher_cfg, student_cfg, sources, tx, schedule, shared_frontend):
    """The step of masking distillation (their train.py `forward` L128-165).

    One span mask per step (rng: fold_in(step rng, 1); dropout keeps the step rng); the
    teacher runs deterministically (their `self.teacher_model.eval()`, L130) on the unmasked
    input and on the input masked with its pretrained `masked_spec_embed`; the student sees
    the same mask with its own embedding.
    """
    output_layer = int(distill.teacher_layers[-1])
    use_dropout = student_cfg.has_dropout
    masked_teacher_cfg = teacher_cfg.replace(mask_emb=True)

    def teacher_outputs(teacher_params, batch, time_mask_bt):
        if "masked_spec_embed" not in teacher_params:
            raise ValueError(
                "config.distill.loss='masked' runs the teacher on masked input, and the "
                "teacher (config.teacher.name) has no `masked_spec_embed`: use a pre-trained "
                "checkpoint that has one (HuBERT/WavLM/wav2vec2 with mask_time_prob > 0)"
            )
        variables = {"params": teacher_params}
        audio, lengths = batch["audio"], batch["lengths"]
        unmasked = Encoder(teacher_cfg).apply(variables, audio, lengths)
        masked = Encoder(masked_teacher_cfg).apply(variables, audio, lengths, time_mask_bt)
        return unmasked.hidden_states, masked.hidden_states, unmasked.mask, unmasked.features

    def loss_fn(params, teacher_out, batch, time_mask_bt, rng):
        unmasked, masked, frames_bt, features = teacher_out
        out = student.apply_encoder(
            student_cfg,
            params["encoder"],
            batch.get("audio"),
            batch["lengths"],
            features=features.astype(student_cfg.dtype) if shared_frontend else None,
            dropout_rng=rng if use_dropout else None,
            time_mask=time_mask_bt,
        )
        preds = student.predict(params["heads"], out.hidden_states, sources)
        return masking.masked_loss(
            preds,
            unmasked,
            masked,
            frames_bt,
            time_mask_bt,
            output_layer,
            distill.hint_weight,
            distill.rec_weight,
            distill.rec_loss,
        )

    def train_step(state: State, teacher_params: Any, batch: dict[str, jax.Array]):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        num_samples = batch["audio"].shape[1]
        num_frames = teacher_cfg.num_frames(num_samples)
        if student_cfg.num_frames(num_samples) != num_frames:
            raise ValueError(
                "config.distill.loss='masked' hands the teacher's mask to the student: both "
                "front-ends must give the same frame count (their model.py L332 asserts it); "
                "config.student.conv_layers gives a different one"
            )
        lengths_b = frame_lengths(teacher_cfg, batch["lengths"])
        time_mask_bt = masking.sample_mask(
            jax.random.fold_in(rng, 1), lengths_b, num_frames, distill.masking
        )
        teacher_out = jax.lax.stop_gradient(teacher_outputs(teacher_params, batch, time_mask_bt))
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], teacher_out, batch, time_mask_bt, rng
        )
        return _apply_grads(state, grads, metrics, batch, tx, schedule)

    return train_step


def validate(d: ml_collections.ConfigDict) -> None:
    """Refuses distillation settings (`config.distill`) that cannot work, naming the field."""
    if d.loss not in LOSSES:
        raise ValueError(f"config.distill.loss must be one of {LOSSES}, got {d.loss!r}")
    if d.heads_on not in HEADS_ON:
        raise ValueError(f"config.distill.heads_on must be one of {HEADS_ON}, got {d.heads_on!r}")
    if not d.teacher_layers:
        raise ValueError("config.distill.teacher_layers is empty")
    targets = d.get("targets", "fixed")
    if targets not in TARGETS:
        raise ValueError(f"config.distill.targets must be one of {TARGETS}, got {targets!r}")
    if d.loss == "masked":
        masking.validate(d.masking)
        if d.rec_loss not in masking.REC_LOSSES:
            raise ValueError(
                f"config.distill.rec_loss must be one of {masking.REC_LOSSES}, got {d.rec_loss!r}"
            )
        if d.heads_on != "lineage":
            raise ValueError("config.distill.loss='masked' needs config.distill.heads_on='lineage'")
    if d.loss == "star":
        star.validate(d)
