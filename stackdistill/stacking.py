"""Depth growth of scanned layer stacks, layer lineage, and the stage schedule.

The layer stack is every subtree under a dict key named `layers`; its leaves have the
layer axis first. Growth is a gather on that axis with the indices from `grow_indices`,
so the same call grows params and any optax state that mirrors them (`mu`, `nu`, ...).

Which layers each method copies (depth d, n = num_new, copies always follow their originals):
- interleaved: with b = d // n (d % n == 0 required), copies layers b-1, 2b-1, ..., d-1 --
  the last layer of each block of b -- each right after itself. 3->6: [0,0,1,1,2,2];
  6->9: [0,1,1,2,3,3,4,5,5]. The top layer is always copied.
- top (gradual stacking / StackBERT): copies the last n layers on top. 3->6: [0,1,2,0,1,2].
- middle (MIDAS): copies the block of n layers starting at s = (d - n) // 2 and inserts it
  right after itself; when d - n is odd the block sits one layer below centre.
  6->9: [0,1,2,3,1,2,3,4,5].

Reuse blocks (ARMHuBERT, `block` = k > 1): the scanned unit is one attending layer followed by
k - 1 layers that reuse its attention map, so the layer axis counts blocks and growth copies
whole blocks (interleaved [B0, B1] -> [B0, B0, B1, B1]). Copying a reuse layer alone would
move it away from the layer whose map it reads, or leave two attending layers in a row; a
whole block keeps the published pattern ([T, F] * n) at every depth and every reuse layer's
source right before it. Depths and num_new stay in layers and must be multiples of k.

Lineage maps each layer of the grown stack to the initial-stack layer it descends from.
With interleaved growth whose blocks line up with the lineage blocks (e.g. 3->6->9->12
with n=3, or any doubling), every initial layer i owns one contiguous block of equal size,
so its last descendant sits at relative depth (i+1)/n_initial; with top growth it does not.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

METHODS = ("interleaved", "top", "middle")
SCHEDULE_METHODS = (*METHODS, "none")
STAGE_LENGTHS = ("equal", "proportional", "equal_compute")
FOLLOW = ("last", "first")
LAYERS_KEY = "layers"


# ---------------------------------------------------------------- index maps


def _resolve_num_new(depth: int, method: str, num_new: int | None) -> int:
    """Checks the growth arguments and returns the number of layers to add."""
    if method not in METHODS:
        raise ValueError(f"stacking method must be one of {METHODS}, got {method!r}")
    if depth < 1:
        raise ValueError(f"cannot grow a stack of depth {depth}")
    num_new = depth if num_new is None else num_new
    if isinstance(num_new, bool) or not isinstance(num_new, int | np.integer):
        raise ValueError(f"num_new must be an int or None, got {num_new!r}")
    num_new = int(num_new)
    if not 1 <= num_new <= depth:
        raise ValueError(f"num_new must be in [1, depth={depth}], got {num_new}")
    if method == "interleaved" and depth % num_new:
        raise ValueError(
            f"interleaved growth copies one layer every depth // num_new layers: "
            f"depth={depth} is not divisible by num_new={num_new}"
        )
    return num_new


def _growth_plan(depth: int, method: str, num_new: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Source index and is-copy flag for every layer of the grown stack."""
    num_new = _resolve_num_new(depth, method, num_new)
    if method == "interleaved":
        spacing = depth // num_new
        pairs = []
        for j in range(depth):
            pairs.append((j, False))
            if j % spacing == spacing - 1:  # last layer of its block of `spacing`
                pairs.append((j, True))
    elif method == "top":
        pairs = [(j, False) for j in range(depth)]
        pairs += [(j, True) for j in range(depth - num_new, depth)]
    else:  # middle
        start = (depth - num_new) // 2
        end = start + num_new
        pairs = [(j, False) for j in range(end)]
        pairs += [(j, True) for j in range(start, end)]
        pairs += [(j, False) for j in range(end, depth)]
    indices, is_new = zip(*pairs, strict=True)
    return np.asarray(indices, dtype=np.int32), np.asarray(is_new, dtype=bool)


def grow_indices(depth: int, method: str, num_new: int | None = None) -> np.ndarray:
    """Source layer of each layer of the grown stack (interleaved 3->6: [0,0,1,1,2,2])."""
    return _growth_plan(depth, method, num_new)[0]


def _in_blocks(depth: int | None, num_new: int | None, block: int) -> tuple[Any, Any]:
    """(depth, num_new) in layers -> in blocks of `block` layers; refuses non-multiples."""
    for name, value in (("depth", depth), ("num_new", num_new)):
        if value is not None and (not isinstance(value, int | np.integer) or value % block):
            raise ValueError(
                f"{name}={value!r} is not a multiple of the reuse block of {block} layers: "
                "stacking grows whole blocks (config.stacking, config.student.reuse_pattern)"
            )
    return (
        None if depth is None else int(depth) // block,
        None if num_new is None else int(num_new) // block,
    )


def layer_grow_indices(
    depth: int, method: str, num_new: int | None = None, block: int = 1
) -> np.ndarray:
    """Source layer of each layer of the grown stack when whole blocks of `block` layers grow."""
    blocks, new_blocks = _in_blocks(depth, num_new, block)
    block_indices = grow_indices(blocks, method, new_blocks)
    return (block_indices[:, None] * block + np.arange(block)).reshape(-1)


def new_layer_mask(depth: int, method: str, num_new: int | None = None) -> np.ndarray:
    """True for the layers of the grown stack that are inserted copies, not originals."""
    return _growth_plan(depth, method, num_new)[1]


# ---------------------------------------------------------------- pytree growth


def under_layers(path: tuple[Any, ...]) -> bool:
    """Whether a key path passes through a dict key named `layers`."""
    return any(isinstance(k, jax.tree_util.DictKey) and k.key == LAYERS_KEY for k in path)


def stack_depth(tree: Any) -> int:
    """The layer-axis length shared by all leaves under `layers` keys."""
    leaves = [
        (jax.tree_util.keystr(path), leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if under_layers(path)
    ]
    if not leaves:
        raise ValueError(f"no leaves under a {LAYERS_KEY!r} key in this pytree")
    depths = {name: (np.shape(leaf)[0] if np.ndim(leaf) else None) for name, leaf in leaves}
    if len(set(depths.values())) != 1 or None in depths.values():
        raise ValueError(f"layer leaves disagree on the leading (layer) axis: {depths}")
    return next(iter(depths.values()))


def _map_layer_leaves(fn, tree: Any) -> Any:
    """Applies fn to every leaf under a `layers` key; other leaves pass through as they are."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: fn(leaf) if under_layers(path) else leaf, tree
    )


def grow(tree: Any, method: str = "interleaved", num_new: int | None = None, block: int = 1) -> Any:
    """Grows every subtree under a `layers` key along axis 0; num_new=None doubles the depth.

    With `block` = k > 1 axis 0 counts reuse blocks of k layers and num_new counts layers.
    """
    _, num_new = _in_blocks(None, num_new, block)
    indices = grow_indices(stack_depth(tree), method, num_new)
    return _map_layer_leaves(lambda leaf: leaf[indices], tree)


def grow_opt_state(
    opt_state: Any,
    method: str,
    num_new: int | None = None,
    reset_new: bool = False,
    block: int = 1,
) -> Any:
    """Grows the layer leaves of an optax state; reset_new zeroes the copies' moments.

    Non-layer leaves (`count`, moments of non-layer params) are untouched. Zero is the
    initial value of Adam-style moments; bias correction still uses the global `count`.
    `block` as in `grow`.
    """
    _, num_new = _in_blocks(None, num_new, block)
    depth = stack_depth(opt_state)
    indices, is_new = _growth_plan(depth, method, num_new)

    def grow_leaf(leaf):
        grown = leaf[indices]
        if not reset_new:
            return grown
        keep = is_new.reshape((-1,) + (1,) * (np.ndim(leaf) - 1))
        return jnp.where(keep, jnp.zeros_like(grown), grown)

    return _map_layer_leaves(grow_leaf, opt_state)


# ---------------------------------------------------------------- lineage


def lineage_after(
    lineage: np.ndarray, method: str, num_new: int | None = None, block: int = 1
) -> np.ndarray:
    """Lineage of the grown stack: each new layer inherits its source layer's ancestor."""
    lineage = np.asarray(lineage)
    return lineage[layer_grow_indices(len(lineage), method, num_new, block)]


def supervised_layers(
    lineage: np.ndarray, initial_layer_ids: Sequence[int], follow: str = "last"
) -> list[int]:
    """0-based stack index where each initial layer's target sits now.

    follow="last" picks the last descendant (for interleaved, the last layer of the block);
    follow="first" picks the first, which is the original layer (copies are always inserted
    after their originals). Stack index i is hidden_states[i + 1] of the encoder output.
    The output target is not covered here: it always sits on the last layer.
    """
    if follow not in FOLLOW:
        raise ValueError(f"follow must be one of {FOLLOW}, got {follow!r}")
    lineage = np.asarray(lineage)
    positions = []
    for layer_id in initial_layer_ids:
        found = np.flatnonzero(lineage == layer_id)
        if found.size == 0:
            raise ValueError(f"initial layer {layer_id} has no descendant in lineage {lineage}")
        positions.append(int(found[-1] if follow == "last" else found[0]))
    return positions


# ---------------------------------------------------------------- schedule


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage at fixed depth; num_new is the growth that led to it (0 first)."""

    index: int
    depth: int
    start_step: int
    num_steps: int
    num_new: int

    @property
    def end_step(self) -> int:
        """First step after this stage."""
        return self.start_step + self.num_steps


def default_config() -> ml_collections.ConfigDict:
    """The paper's schedule: interleaved 3 -> 6 -> 9 -> 12, equal stage lengths."""
    cfg = ml_collections.ConfigDict()
    cfg.method = "interleaved"  # "interleaved" | "top" | "middle" | "none" (full depth)
    cfg.start_depth = 3
    cfg.num_new = ml_collections.FieldReference(3, field_type=object)  # int, tuple, None
    cfg.stage_lengths = "equal"  # "equal" | "proportional" (to depth) | "equal_compute"
    cfg.follow = "last"  # targets follow their layer's "last" or "first" descendant
    cfg.reset_new_moments = False  # zero Adam moments of inserted copies at growth
    return cfg


def _stage_depths(
    cfg: ml_collections.ConfigDict, final_depth: int, block: int = 1
) -> list[tuple[int, int]]:
    """(depth, num_new) of every stage in layers; raises ValueError naming the bad field."""
    if block > 1:
        if final_depth % block:
            raise ValueError(
                f"the student's {final_depth} layers are not whole reuse blocks of {block} "
                "(config.student.num_layers, config.student.reuse_pattern)"
            )
        blocks = _stage_depths(_cfg_in_blocks(cfg, block), final_depth // block)
        return [(d * block, n * block) for d, n in blocks]
    if cfg.method == "none":
        return [(final_depth, 0)]
    depth = cfg.start_depth
    if not isinstance(depth, int) or not 1 <= depth <= final_depth:
        raise ValueError(
            f"config.stacking.start_depth must be an int in [1, final depth {final_depth}], "
            f"got {depth!r}"
        )
    per_growth = cfg.num_new
    if isinstance(per_growth, Sequence) and not isinstance(per_growth, str):
        per_growth = list(per_growth)
    elif per_growth is not None and not isinstance(per_growth, int):
        raise ValueError(f"config.stacking.num_new must be int, tuple or None, got {per_growth!r}")
    stages = [(depth, 0)]
    growth = 0
    while depth < final_depth:
        if isinstance(per_growth, list):
            if growth >= len(per_growth):
                raise ValueError(
                    f"config.stacking.num_new={tuple(per_growth)} grows "
                    f"{cfg.start_depth} only to {depth}, not to the final depth {final_depth}"
                )
            num_new = per_growth[growth]
        else:
            num_new = depth if per_growth is None else per_growth
        try:
            num_new = _resolve_num_new(depth, cfg.method, num_new)
        except (ValueError, TypeError) as err:
            raise ValueError(f"config.stacking.num_new (growth {growth + 1}): {err}") from None
        depth += num_new
        growth += 1
        stages.append((depth, num_new))
    if depth != final_depth:
        raise ValueError(
            f"config.stacking.num_new={cfg.num_new!r} grows {cfg.start_depth} to {depth}, "
            f"past the final depth {final_depth}"
        )
    if isinstance(per_growth, list) and growth != len(per_growth):
        raise ValueError(
            f"config.stacking.num_new={tuple(per_growth)} lists {len(per_growth)} growths; "
            f"the final depth {final_depth} is reached after {growth}"
        )
    return stages


def _cfg_in_blocks(cfg: ml_collections.ConfigDict, block: int) -> ml_collections.ConfigDict:
    """The stacking section with start_depth and num_new counted in reuse blocks."""
    if cfg.method == "none":
        return cfg
    c = ml_collections.ConfigDict(cfg.to_dict())
    fields = {"start_depth": cfg.start_depth}
    per_growth = cfg.num_new
    if isinstance(per_growth, Sequence) and not isinstance(per_growth, str):
        fields.update({f"num_new[{i}]": n for i, n in enumerate(per_growth)})
    elif per_growth is not None:
        fields["num_new"] = per_growth
    for name, value in fields.items():
        if not isinstance(value, int) or value % block:
            raise ValueError(
                f"config.stacking.{name}={value!r} is not a multiple of the reuse block of "
                f"{block} layers set by config.student.reuse_pattern: stacking grows whole "
                f"blocks (e.g. start_depth={2 * block}, num_new={2 * block})"
            )
    c.start_depth = cfg.start_depth // block
    if isinstance(per_growth, Sequence) and not isinstance(per_growth, str):
        c.num_new = tuple(n // block for n in per_growth)
    elif per_growth is not None:
        c.num_new = per_growth // block
    return c


def _stage_weights(stage_lengths: str, depths: list[int]) -> list[int]:
    """Integer weights of the stage lengths."""
    if stage_lengths == "equal":
        return [1] * len(depths)
    if stage_lengths == "proportional":  # steps proportional to depth (MIDAS "Prop")
        return list(depths)
    if stage_lengths == "equal_compute":  # steps proportional to 1 / depth
        common = math.lcm(*depths)
        return [common // d for d in depths]
    raise ValueError(
        f"config.stacking.stage_lengths must be one of {STAGE_LENGTHS}, got {stage_lengths!r}"
    )


def plan_stages(
    stacking_cfg: ml_collections.ConfigDict, total_steps: int, final_depth: int, block: int = 1
) -> list[Stage]:
    """Validates the stacking config and splits total_steps into stages of growing depth.

    Depths are in layers; with reuse blocks of `block` layers they step by whole blocks.
    """
    cfg = stacking_cfg
    if cfg.method not in SCHEDULE_METHODS:
        raise ValueError(
            f"config.stacking.method must be one of {SCHEDULE_METHODS}, got {cfg.method!r}"
        )
    if cfg.get("follow", "last") not in FOLLOW:
        raise ValueError(f"config.stacking.follow must be one of {FOLLOW}, got {cfg.follow!r}")
    if not isinstance(final_depth, int) or final_depth < 1:
        raise ValueError(f"final depth must be a positive int, got {final_depth!r}")
    depths_and_growths = _stage_depths(cfg, final_depth, block)
    depths = [d for d, _ in depths_and_growths]
    weights = _stage_weights(cfg.stage_lengths, depths)
    if total_steps < len(depths):
        raise ValueError(f"total_steps={total_steps} is fewer than the {len(depths)} stages")
    # Integer boundaries from cumulative weights: lengths sum exactly to total_steps.
    cumulative = np.cumsum([0, *weights])
    bounds = [int(total_steps * c // cumulative[-1]) for c in cumulative]
    stages = []
    for index, (depth, num_new) in enumerate(depths_and_growths):
        num_steps = bounds[index + 1] - bounds[index]
        if num_steps < 1:
            raise ValueError(f"total_steps={total_steps} leaves stage {index} with no steps")
        stages.append(Stage(index, depth, bounds[index], num_steps, num_new))
    return stages
