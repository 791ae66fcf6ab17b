"""Hard concrete gates (Louizos et al. 2018) as DPHuBERT parameterises them, as pure functions.

Follows pyf98/DPHuBERT `wav2vec2/hardconcrete.py` (commit c18093f): temperature beta = 2/3 and
stretch interval (-0.1, 1.1) (L33-34, L58-59), log_alpha ~ N(log(1 - p) - log(p), 0.01) from
the "init_mean" p (L70-74), the sampled gate in training (L92-99), the expected L0 norm
sum sigmoid(log_alpha - beta log(-l / r)) (L64, L76-83) and the deterministic gate at eval
(L101-114). A gate set is a dict of float32 log_alpha arrays; the layer gates carry a
leading layer axis (L, ...) like our scanned params, the conv gates are one array per conv.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

TEMPERATURE = 2.0 / 3.0  # hardconcrete.py L33 ("from CoFi")
LIMIT_L, LIMIT_R = -0.1, 1.1  # stretch 0.1: hardconcrete.py L34, L58-59
EPS = 1e-6  # the uniform noise is drawn in (eps, 1 - eps): L35, L96
INIT_STD = 0.01  # L32
EVAL_SHARPNESS = 0.8  # "an empirically validated magic number": L107-109
UNITS = ("conv", "head", "interm", "attlayer", "ffnlayer")  # distill.py L72-76, L308
# init_mean of each unit's HardConcrete: components.py L90 (conv), L370 (heads), L375
# (attention layer), L715-716 (FFN intermediate), L722 (FFN layer).
INIT_MEAN = {"conv": 0.01, "head": 0.01, "attlayer": 0.01, "interm": 0.5, "ffnlayer": 0.01}


def l0_bias(temperature: float = TEMPERATURE) -> float:
    """-beta log(-l / r): the shift that makes sigmoid(log_alpha + bias) = P(gate != 0) (L64)."""
    return -temperature * math.log(-LIMIT_L / LIMIT_R)


def init_log_alpha(key: Array, shape: Sequence[int], init_mean: float) -> Array:
    """log_alpha ~ N(log(1 - init_mean) - log(init_mean), INIT_STD) (hardconcrete.py L70-74)."""
    mean = math.log(1 - init_mean) - math.log(init_mean)
    return mean + INIT_STD * jax.random.normal(key, tuple(shape), jnp.float32)


def prob_nonzero(log_alpha: Array, temperature: float = TEMPERATURE) -> Array:
    """P(gate != 0) per unit, the closed form whose sum is their `l0_norm` (L76-83)."""
    return jax.nn.sigmoid(log_alpha + l0_bias(temperature))


def l0_norm(log_alpha: Array, temperature: float = TEMPERATURE) -> Array:
    """Expected number of non-zero gates over the last axis (their `l0_norm`, L83)."""
    return prob_nonzero(log_alpha, temperature).sum(-1)


def sample(key: Array, log_alpha: Array, temperature: float = TEMPERATURE) -> Array:
    """A training gate in [0, 1]: stretched, clamped binary-concrete sample (L92-99)."""
    u = jax.random.uniform(key, log_alpha.shape, jnp.float32, EPS, 1 - EPS)
    s = jax.nn.sigmoid((jnp.log(u / (1 - u)) + log_alpha) / temperature)
    return jnp.clip(s * (LIMIT_R - LIMIT_L) + LIMIT_L, 0.0, 1.0)


def deterministic(log_alpha: Array, temperature: float = TEMPERATURE) -> Array:
    """The eval gate over the last axis (L101-114): soft values, the round(n - L0) lowest zeroed.

    Kept units keep the soft value sigmoid(0.8 log_alpha / beta), not 1 (their prune() folds
    it into the next layer's weights). Rounding is half-to-even, as Python's `round` (L106).
    """
    n = log_alpha.shape[-1]
    num_zeros = jnp.round(n - l0_norm(log_alpha, temperature))[..., None]
    soft = jax.nn.sigmoid(log_alpha / temperature * EVAL_SHARPNESS)
    rank = jnp.argsort(jnp.argsort(soft, axis=-1, stable=True), axis=-1, stable=True)
    return jnp.where(rank < num_zeros, 0.0, soft)


def init_gates(
    key: Array,
    conv_dim: Sequence[int],
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    units: Sequence[str] = ("conv", "head", "interm"),
) -> dict[str, Array | list[Array]]:
    """log_alpha of every gated unit: "conv" a list of (C_i,), the others (L, n) arrays.

    `units` are their `--pruning_units` names (run.sh L32 uses conv,head,interm); a unit left
    out has no gate and counts at full size.
    """
    unknown = set(units) - set(UNITS)
    if unknown:
        raise ValueError(f"pruning units {sorted(unknown)} are not among {UNITS}")
    sizes = {"head": num_heads, "interm": intermediate_size, "attlayer": 1, "ffnlayer": 1}
    keys = dict(zip(UNITS, jax.random.split(key, len(UNITS))))
    gates: dict[str, Array | list[Array]] = {}
    for unit in units:
        if unit == "conv":
            conv_keys = jax.random.split(keys["conv"], len(conv_dim))
            gates["conv"] = [
                init_log_alpha(k, (c,), INIT_MEAN["conv"]) for k, c in zip(conv_keys, conv_dim)
            ]
        else:
            gates[unit] = init_log_alpha(keys[unit], (num_layers, sizes[unit]), INIT_MEAN[unit])
    return gates


def sample_gates(key: Array, gates: Mapping[str, Array | list[Array]]) -> dict:
    """One training sample of every gate (independent noise per gate)."""
    leaves, treedef = jax.tree_util.tree_flatten(dict(gates))
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(treedef, [sample(k, x) for k, x in zip(keys, leaves)])


def deterministic_gates(gates: Mapping[str, Array | list[Array]]) -> dict:
    """The eval gates of every gate set (each layer's row decided on its own, as theirs)."""
    return jax.tree_util.tree_map(deterministic, dict(gates))
