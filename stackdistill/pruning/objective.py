"""DPHuBERT's joint objective and one train step: distillation loss + the sparsity Lagrangian.

Follows pyf98/DPHuBERT (commit c18093f): `distill.py` L84-109 (distill layers in groups,
"layer2layer" heads shared within a group and initialised to the identity, L24-26, or
"predlayer" Linear + GELU heads from the last layer), `lightning.py` L91-139 (`DistillLoss`:
l2 MSE + l1 L1 + cos_weight times -cos, "raw", or -log sigmoid(cos), "log_sig") and L245-275
(`_step`: targets are the teacher's hidden states at the distill layers, loss = distill +
lambda1 (s - t) + lambda2 (s - t)^2, the student's gates sampled in training). Their student
is a copy of the teacher (run.sh L20); the sparsity's denominator is the teacher's size.

Their hidden state 0 is the projection output (padded frames zeroed; components.py
L973-980, L1001-1003), not our `hidden_states[0]` (after the positional conv): `dp_states`
builds their list. One deviation: every mean here is over valid frames only (our
`losses.py` convention); theirs also averages over padding (L125-133 on padded batches).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stackdistill import losses
from stackdistill.models.config import EncoderConfig
from stackdistill.models.encoder import Encoder, EncoderOutput
from stackdistill.models.frontend import FeatureProjection
from stackdistill.pruning import gated, hardconcrete, lagrangian, params

Array = jax.Array
DISTILL_MODES = ("layer2layer", "predlayer")
COS_TYPES = ("raw", "log_sig")


@dataclasses.dataclass(frozen=True)
class DistillSpec:
    """Their distill flags (distill.py L266-303; defaults as run.sh L21-26)."""

    layer_groups: tuple[tuple[int, ...], ...] = ((0,), (4, 8, 12))  # "0.4,8,12"
    mode: str = "layer2layer"
    l2_weight: float = 0.0
    l1_weight: float = 1.0
    cos_weight: float = 1.0
    cos_type: str = "raw"

    def __post_init__(self):
        if self.mode not in DISTILL_MODES:
            raise ValueError(f"distill mode {self.mode!r} is not one of {DISTILL_MODES}")
        if self.cos_type not in COS_TYPES:
            raise ValueError(f"cos_type {self.cos_type!r} is not one of {COS_TYPES}")
        if not self.layers:
            raise ValueError("distill layers are empty (their --distill_layers, e.g. '0.4,8,12')")

    @classmethod
    def parse_layers(cls, text: str, **kwargs: Any) -> DistillSpec:
        """From their --distill_layers string: '.' separates groups, ',' layers (L85)."""
        groups = tuple(tuple(int(x) for x in g.split(",")) for g in text.split("."))
        return cls(layer_groups=groups, **kwargs)

    @property
    def layers(self) -> tuple[int, ...]:
        """The distill layers in order, groups concatenated (distill.py L87-89)."""
        return tuple(x for g in self.layer_groups for x in g)

    def head_index(self) -> tuple[int, ...]:
        """Which head predicts each distill layer: its group's (layer2layer) or its own."""
        if self.mode == "predlayer":
            return tuple(range(len(self.layers)))
        return tuple(i for i, g in enumerate(self.layer_groups) for _ in g)


def init_heads(key: Array, spec: DistillSpec, d_student: int, d_teacher: int) -> list[dict]:
    """Their distill heads: identity + zero bias per group, or torch-default Linear per layer."""
    if spec.mode == "layer2layer":
        eye = jnp.eye(d_student, d_teacher, dtype=jnp.float32)  # torch.eye(out) on (out, in)
        zero = jnp.zeros((d_teacher,), jnp.float32)
        return [{"kernel": eye, "bias": zero} for _ in spec.layer_groups]
    heads = []
    bound = 1.0 / math.sqrt(d_student)  # nn.Linear's reset_parameters: U(-1/sqrt(in), ..)
    for k in jax.random.split(key, len(spec.layers)):
        kw, kb = jax.random.split(k)
        heads.append(
            {
                "kernel": jax.random.uniform(
                    kw, (d_student, d_teacher), jnp.float32, -bound, bound
                ),
                "bias": jax.random.uniform(kb, (d_teacher,), jnp.float32, -bound, bound),
            }
        )
    return heads


def dp_states(cfg: EncoderConfig, encoder_params: Any, out: EncoderOutput) -> Array:
    """Their extract_features list (L+1, B, T, D): projection output, then every layer's."""
    proj = FeatureProjection(cfg).apply(
        {"params": encoder_params["feature_projection"]}, out.features
    )
    proj = jnp.where(out.mask[..., None], proj, 0).astype(out.hidden_states.dtype)
    return jnp.concatenate([proj[None], out.hidden_states[1:]])


def predict(spec: DistillSpec, heads: Sequence[dict], states_lbtd: Array) -> Array:
    """Student predictions (K, B, T, D_teacher) of the K distill layers (lightning.py L255-263)."""
    preds = []
    for layer, h in zip(spec.layers, spec.head_index()):
        x = states_lbtd[layer] if spec.mode == "layer2layer" else states_lbtd[-1]
        y = x.astype(jnp.float32) @ heads[h]["kernel"] + heads[h]["bias"]
        preds.append(jax.nn.gelu(y, approximate=False) if spec.mode == "predlayer" else y)
    return jnp.stack(preds)


def distill_loss(
    spec: DistillSpec, preds_kbtd: Array, targets_kbtd: Array, mask_bt: Array | None = None
) -> tuple[Array, dict[str, Array]]:
    """Their DistillLoss (lightning.py L116-139) over the valid frames of every distill layer."""
    k, b, t, _ = preds_kbtd.shape
    mask = jnp.ones((b, t), bool) if mask_bt is None else mask_bt
    mask_kbt = jnp.broadcast_to(mask, (k, b, t)).reshape(k * b, t)
    pred = preds_kbtd.reshape(k * b, t, -1)
    target = targets_kbtd.reshape(k * b, t, -1)
    mse = losses.masked_mse(pred, target, mask_kbt)
    l1 = losses.masked_l1(pred, target, mask_kbt)
    cos = losses.frame_cosine(pred, target)
    cos_term = cos if spec.cos_type == "raw" else jax.nn.log_sigmoid(cos)
    loss_cos = -losses.masked_mean(cos_term, mask_kbt)
    loss = spec.l2_weight * mse + spec.l1_weight * l1 + spec.cos_weight * loss_cos
    return loss, {"loss_mse": mse, "loss_l1": l1, "loss_cos": loss_cos}


class PruneState(NamedTuple):
    """Trainables {"student", "heads", "gates", "multipliers"}, both optimizer states, step."""

    trainable: dict
    opt_main: Any
    opt_reg: Any
    step: Array


def init_state(
    student_params: Any,
    heads: Sequence[dict],
    log_alpha: dict,
    tx_main: optax.GradientTransformation,
    tx_reg: optax.GradientTransformation,
) -> PruneState:
    """Step-0 state; lambda1 = lambda2 = 0 (lightning.py L189-192)."""
    trainable = {
        "student": student_params,
        "heads": list(heads),
        "gates": log_alpha,
        "multipliers": lagrangian.init_multipliers(),
    }
    main = {k: trainable[k] for k in ("student", "heads")}
    reg = {k: trainable[k] for k in ("gates", "multipliers")}
    return PruneState(trainable, tx_main.init(main), tx_reg.init(reg), jnp.zeros((), jnp.int32))


def joint_loss(
    trainable: dict,
    targets_kbtd: Array,
    wav: Array,
    lengths: Array,
    key: Array,
    step: Array,
    *,
    student_cfg: EncoderConfig,
    spec: DistillSpec,
    target_sparsity: float,
    sparsity_warmup: int,
    layer_copies: int = 1,
) -> tuple[Array, dict[str, Array]]:
    """Distill loss of the gate-sampled student + the Lagrangian term (lightning.py L245-275).

    `layer_copies` > 1: the sparsity is the grown model's (`params.expected_sparsity`).
    """
    gate_key, drop_key = jax.random.split(key)
    gates = hardconcrete.sample_gates(gate_key, trainable["gates"])
    gcfg = gated.gated_config(student_cfg, gates)
    p = gated.apply_gates(student_cfg, trainable["student"], gates)
    out = Encoder(gcfg, deterministic=not gcfg.has_dropout).apply(
        {"params": p}, wav, lengths, rngs={"dropout": drop_key}
    )
    preds = predict(spec, trainable["heads"], dp_states(gcfg, p, out))
    distill, metrics = distill_loss(spec, preds, targets_kbtd, out.mask)
    expected = params.expected_sparsity(student_cfg, trainable["gates"], layer_copies)
    target = lagrangian.target_sparsity(step, target_sparsity, sparsity_warmup)
    reg = lagrangian.penalty(expected, target, trainable["multipliers"])
    metrics.update(
        loss=distill + reg,
        loss_distill=distill,
        loss_reg=reg,
        sparsity_expected=expected,
        sparsity_target=target,
        **trainable["multipliers"],
    )
    return distill + reg, metrics


def teacher_targets(
    teacher_cfg: EncoderConfig, teacher_params: Any, spec: DistillSpec, wav: Array, lengths: Array
) -> Array:
    """The teacher's hidden states at the distill layers (K, B, T, D), no gradient (L247-252)."""
    out = Encoder(teacher_cfg).apply({"params": teacher_params}, wav, lengths)
    states = dp_states(teacher_cfg, teacher_params, out)
    return jax.lax.stop_gradient(states[jnp.asarray(spec.layers)])


def make_train_step(
    teacher_cfg: EncoderConfig,
    student_cfg: EncoderConfig,
    spec: DistillSpec,
    tx_main: optax.GradientTransformation,
    tx_reg: optax.GradientTransformation,
    target_sparsity: float,
    sparsity_warmup: int,
    clip_norm: float | None = 10.0,
    target_spec: DistillSpec | None = None,
    layer_copies: int = 1,
):
    """step(state, teacher_params, wav, lengths, key) -> (state, metrics), jit-able.

    `tx_main` updates student + heads (their AdamW at `learning_rate`), `tx_reg` is
    `lagrangian.optimizer(reg_lr, schedule)` on gates + multipliers. The gradient norm is
    clipped over all four (Lightning's gradient_clip_val, distill.py L48, run.sh clip 10).
    `target_spec`: the teacher layers each of `spec`'s student layers learns (default the
    same layers); `layer_copies`: the sparsity counts every student layer that many times
    (a shallow student grown after the prune step, `pipeline`).
    """
    target_spec = spec if target_spec is None else target_spec
    if len(target_spec.layers) != len(spec.layers):
        raise ValueError(f"{len(spec.layers)} student layers, {len(target_spec.layers)} targets")
    for name, sp, cfg in (("student", spec, student_cfg), ("teacher", target_spec, teacher_cfg)):
        for layer in sp.layers:
            if not 0 <= layer <= cfg.num_layers:
                raise ValueError(f"distill layer {layer} outside the {name}'s 0..{cfg.num_layers}")

    def step(state: PruneState, teacher_params: Any, wav: Array, lengths: Array, key: Array):
        targets = teacher_targets(teacher_cfg, teacher_params, target_spec, wav, lengths)
        grads, metrics = jax.grad(joint_loss, has_aux=True)(
            state.trainable,
            targets,
            wav,
            lengths,
            key,
            state.step,
            student_cfg=student_cfg,
            spec=spec,
            target_sparsity=target_sparsity,
            sparsity_warmup=sparsity_warmup,
            layer_copies=layer_copies,
        )
        metrics["grad_norm"] = optax.global_norm(grads)
        if clip_norm is not None:
            scale = jnp.minimum(1.0, clip_norm / (metrics["grad_norm"] + 1e-6))
            grads = jax.tree_util.tree_map(lambda g: g * scale, grads)
        t = state.trainable
        main = {k: t[k] for k in ("student", "heads")}
        reg = {k: t[k] for k in ("gates", "multipliers")}
        up_main, opt_main = tx_main.update({k: grads[k] for k in main}, state.opt_main, main)
        up_reg, opt_reg = tx_reg.update({k: grads[k] for k in reg}, state.opt_reg, reg)
        new = {**optax.apply_updates(main, up_main), **optax.apply_updates(reg, up_reg)}
        return PruneState(new, opt_main, opt_reg, state.step + 1), metrics

    return step


def linear_decay_schedule(warmup_updates: int, max_updates: int):
    """Their LinearDecayLRScheduler factor (lightning.py L37-44) at optax's 0-based count.

    torch's scheduler has stepped once at construction, so update s runs at step count s+1.
    """

    def schedule(count):
        c = jnp.asarray(count, jnp.float32) + 1.0
        warm = c / max(warmup_updates, 1)
        decay = (max_updates - c) / max(max_updates - warmup_updates, 1)
        return jnp.where(c <= warmup_updates, warm, jnp.where(c >= max_updates, 0.0, decay))

    return schedule


class DistillState(NamedTuple):
    """The final distillation's trainables {"student", "heads"}, optimizer state, step."""

    trainable: dict
    opt: Any
    step: Array


def init_distill_state(
    student_params: Any, heads: Sequence[dict], tx: optax.GradientTransformation
) -> DistillState:
    """Step-0 state of the final distillation (final_distill.py L61-93: pruned model + heads)."""
    trainable = {"student": student_params, "heads": list(heads)}
    return DistillState(trainable, tx.init(trainable), jnp.zeros((), jnp.int32))


def make_distill_step(
    teacher_cfg: EncoderConfig,
    student_cfg: EncoderConfig,
    spec: DistillSpec,
    tx: optax.GradientTransformation,
    clip_norm: float | None = 10.0,
    student_mask: Any = None,
):
    """step(state, teacher_params, wav, lengths, key) -> (state, metrics) of final_distill.py.

    The same DistillLoss and targets as the joint step, no gates and no regulariser
    (final_distill.py L115-118, use_reg=False; lightning.py L267-275 then adds nothing).
    `student_mask` (`prune.removed_blocks_mask`) multiplies the student's gradients, before
    the clipping norm: a removed block stays removed, as in their pruned model.
    """

    def loss_fn(trainable, targets, wav, lengths, key):
        p = trainable["student"]
        out = Encoder(student_cfg, deterministic=not student_cfg.has_dropout).apply(
            {"params": p}, wav, lengths, rngs={"dropout": key}
        )
        preds = predict(spec, trainable["heads"], dp_states(student_cfg, p, out))
        loss, metrics = distill_loss(spec, preds, targets, out.mask)
        metrics.update(loss=loss, loss_distill=loss)
        return loss, metrics

    def step(state: DistillState, teacher_params: Any, wav: Array, lengths: Array, key: Array):
        targets = teacher_targets(teacher_cfg, teacher_params, spec, wav, lengths)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(
            state.trainable, targets, wav, lengths, key
        )
        if student_mask is not None:
            student = jax.tree_util.tree_map(jnp.multiply, grads["student"], student_mask)
            grads = {**grads, "student": student}
        metrics["grad_norm"] = optax.global_norm(grads)
        if clip_norm is not None:
            scale = jnp.minimum(1.0, clip_norm / (metrics["grad_norm"] + 1e-6))
            grads = jax.tree_util.tree_map(lambda g: g * scale, grads)
        updates, opt = tx.update(grads, state.opt, state.trainable)
        new = optax.apply_updates(state.trainable, updates)
        return DistillState(new, opt, state.step + 1), metrics

    return step
