"""DPHuBERT's sparsity regulariser: a Lagrangian with two multipliers, target warmed up linearly.

Follows pyf98/DPHuBERT `lightning.py` (commit c18093f; the brief's "distill.py" builds the
module, lightning.py holds the rule): loss_reg = lambda1 (s - t) + lambda2 (s - t)^2 with s
the expected sparsity 1 - E[params] / teacher params and t the current target (L267-271);
lambda1 = lambda2 = 0 at start (L189-192); the gates' log_alpha descend with AdamW at
`reg_lr` and the multipliers ascend with AdamW at `-reg_lr`, both without weight decay
(L211-228); the target rises linearly from 0 to `target_sparsity` over
`sparsity_warmup_updates` steps (L240-243). Their one LR scheduler (warmup then linear decay,
L22-44) scales every group, these two included: pass it as `schedule`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def target_sparsity(step: jnp.ndarray | int, target: float, warmup_steps: int) -> jnp.ndarray:
    """t(step) = target * min(step / warmup_steps, 1) (lightning.py L240-243)."""
    if warmup_steps <= 0:
        return jnp.asarray(target, jnp.float32)
    frac = jnp.minimum(jnp.asarray(step, jnp.float32) / warmup_steps, 1.0)
    return target * frac


def init_multipliers() -> dict[str, jnp.ndarray]:
    """lambda1 = lambda2 = 0 (lightning.py L191-192)."""
    return {"lambda1": jnp.zeros((), jnp.float32), "lambda2": jnp.zeros((), jnp.float32)}


def penalty(
    expected: jnp.ndarray, target: jnp.ndarray, multipliers: dict[str, jnp.ndarray]
) -> jnp.ndarray:
    """lambda1 (s - t) + lambda2 (s - t)^2 (lightning.py L270-271)."""
    gap = expected - target
    return multipliers["lambda1"] * gap + multipliers["lambda2"] * gap**2


def optimizer(reg_lr: float, schedule: Schedule | None = None) -> optax.GradientTransformation:
    """AdamW on {"gates": ..., "multipliers": ...}: descent on gates, ascent on multipliers.

    torch's AdamW with a negative learning rate (lightning.py L220-224) is Adam's update
    added instead of subtracted: here the multipliers' branch uses learning rate -reg_lr.
    `schedule(step)` multiplies both rates (their LinearDecayLRScheduler on every group).
    """

    def lr(sign: float):
        if schedule is None:
            return sign * reg_lr
        return lambda step: sign * reg_lr * schedule(step)

    return optax.multi_transform(
        {
            "gates": optax.adamw(lr(1.0), weight_decay=0.0),
            "multipliers": optax.adamw(lr(-1.0), weight_decay=0.0),
        },
        param_labels=lambda tree: {k: _label(k, v) for k, v in tree.items()},
    )


def _label(key: str, subtree):
    if key not in ("gates", "multipliers"):
        raise ValueError(f"regulariser params are {{'gates', 'multipliers'}}, got key {key!r}")
    return jax.tree_util.tree_map(lambda _: key, subtree)
