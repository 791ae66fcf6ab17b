"""The student's optimizer: AdamW with warmup + decay, clipping, and a frozen shared front-end."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import optax

from stackdistill.stacking import Stage

DECAYS = ("linear", "cosine", "constant")
DECAY_ON = ("kernels", "not_bias")


def default_config() -> ml_collections.ConfigDict:
    """AdamW 2e-4, 7% warmup, linear decay to 0 (s3prl's DistilHuBERT lr and schedule).

    The rest is not s3prl's: betas (0.9, 0.999), eps 1e-8, no weight decay, clip 10 (see
    `distilhubert_config` for the recipe s3prl runs).
    """
    c = ml_collections.ConfigDict()
    c.learning_rate = 2e-4
    c.warmup_fraction = 0.07
    c.decay = "linear"  # "linear" | "cosine" | "constant"
    c.end_fraction = 0.0  # final lr as a fraction of the peak
    c.rewarm_each_stage = False  # False: one schedule over the run; True: one per stage
    c.weight_decay = 0.0
    c.weight_decay_on = "kernels"  # "kernels" | "not_bias" (every tensor but the biases)
    c.b1 = 0.9
    c.b2 = 0.999
    c.eps = 1e-8
    c.clip_norm = 10.0
    return c


def distilhubert_config() -> ml_collections.ConfigDict:
    """The optimizer s3prl's distiller runner builds (pretrain/distiller/config_runner.yaml).

    `AdamW_with_schedule` (s3prl/optimizers.py): lr 2e-4, 7% linear warmup, linear decay to
    0, betas (0.9, 0.98), eps 1e-6, gradient clipping 5. Weight decay: the yaml's 1e-6 never
    acts, since `get_grouped_parameters` gives every group its own `weight_decay` (0.01 on all
    tensors whose name has no "bias", 0 on biases) and a torch param group overrides the
    optimizer default; 0.01 on the non-bias tensors is what s3prl trains with. Not mirrored:
    s3prl adds eps before the bias correction and scales the decay by it (the first ~100
    steps differ slightly), and decays the positional conv's weight-norm g and v (ours: the
    folded kernel).
    """
    c = default_config()
    c.update(b2=0.98, eps=1e-6, weight_decay=0.01, weight_decay_on="not_bias", clip_norm=5.0)
    return c


def _warmup_decay(c: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    warmup = int(round(c.warmup_fraction * num_steps))
    peak, end = c.learning_rate, c.learning_rate * c.end_fraction
    rest = max(num_steps - warmup, 1)
    if c.decay == "linear":
        decay = optax.linear_schedule(peak, end, rest)
    elif c.decay == "cosine":
        decay = optax.cosine_decay_schedule(peak, rest, alpha=c.end_fraction)
    elif c.decay == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(f"config.optim.decay must be one of {DECAYS}, got {c.decay!r}")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def make_schedule(c: ml_collections.ConfigDict, stages: Sequence[Stage]) -> optax.Schedule:
    """Learning rate by global step: one warmup+decay over the run, or one per stage."""
    if not c.rewarm_each_stage:
        return _warmup_decay(c, stages[-1].end_step)
    return optax.join_schedules(
        [_warmup_decay(c, s.num_steps) for s in stages], [s.start_step for s in stages[1:]]
    )


def _is_kernel(path: tuple, _) -> bool:
    return getattr(path[-1], "key", None) == "kernel"


def _is_not_bias(path: tuple, _) -> bool:
    return getattr(path[-1], "key", None) != "bias"


def decay_mask(params: Any, decay_on: str = "kernels") -> Any:
    """True on the leaves weight decay applies to: kernels only, or all but the biases."""
    test = _is_kernel if decay_on == "kernels" else _is_not_bias
    return jax.tree_util.tree_map_with_path(test, params)


def _labels(params: Any) -> Any:
    """'frozen' for the student's CNN front-end, 'train' for everything else."""

    def label(path, _):
        keys = [getattr(k, "key", None) for k in path]
        return "frozen" if keys[:2] == ["encoder", "feature_extractor"] else "train"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(
    c: ml_collections.ConfigDict, schedule: optax.Schedule, frozen_frontend: bool
) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW (decay per `weight_decay_on`); optionally freeze the CNN."""
    decay_on = c.get("weight_decay_on", "kernels")
    if decay_on not in DECAY_ON:
        raise ValueError(
            f"config.optim.weight_decay_on must be one of {DECAY_ON}, got {decay_on!r}"
        )
    adamw = optax.adamw(
        schedule,
        b1=c.b1,
        b2=c.b2,
        eps=c.eps,
        weight_decay=c.weight_decay,
        mask=lambda p: decay_mask(p, decay_on),
    )
    tx = optax.chain(optax.clip_by_global_norm(c.clip_norm), adamw)
    if frozen_frontend:
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, _labels)
    return tx
