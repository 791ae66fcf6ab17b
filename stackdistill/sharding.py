"""Device mesh and partition rules: batch over ('data', 'fsdp'), params replicated or FSDP.

Rules work on any pytree (params, optax states): a leaf is sharded over `fsdp` on its
largest dimension that `fsdp` divides, never on the layer axis (axis 0 below a `layers`
key), so stacking growth never reshards the layer axis. Small leaves stay replicated.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stackdistill import stacking

AXES = ("data", "fsdp")
BATCH_AXES = AXES  # the batch is split over every device
MIN_SHARDED_SIZE = 2**14  # leaves smaller than this are replicated (norms, biases)


def default_config() -> ml_collections.ConfigDict:
    """Mesh shape (-1: all remaining devices) and how params are laid out."""
    c = ml_collections.ConfigDict()
    c.data = -1
    c.fsdp = 1
    c.params = "replicated"  # "replicated" | "fsdp"
    return c


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices: list | None = None) -> Mesh:
    """A ('data', 'fsdp') mesh over all devices; raises naming config.mesh on a bad shape."""
    devices = jax.devices() if devices is None else devices
    n = len(devices)
    data, fsdp = mesh_cfg.data, mesh_cfg.fsdp
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"config.mesh.fsdp={fsdp} does not divide the {n} devices")
    if data == -1:
        data = n // fsdp
    if data * fsdp != n:
        raise ValueError(f"config.mesh.data={data} x config.mesh.fsdp={fsdp} != {n} devices")
    if mesh_cfg.params not in ("replicated", "fsdp"):
        raise ValueError(
            f"config.mesh.params must be 'replicated' or 'fsdp', not {mesh_cfg.params!r}"
        )
    grid = np.asarray(devices).reshape(data, fsdp)
    return Mesh(grid, AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every mesh axis."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same value on every device."""
    return NamedSharding(mesh, PartitionSpec())


def _leaf_spec(path: tuple, shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < MIN_SHARDED_SIZE:
        return PartitionSpec()
    first = 1 if stacking.under_layers(path) else 0  # the layer axis is never sharded
    candidates = [i for i in range(first, len(shape)) if shape[i] % fsdp == 0]
    if not candidates:
        return PartitionSpec()
    axis = max(candidates, key=lambda i: shape[i])
    spec = [None] * len(shape)
    spec[axis] = "fsdp"
    return PartitionSpec(*spec)


def tree_shardings(tree: Any, mesh: Mesh, mode: str) -> Any:
    """NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs) for `mode`."""
    fsdp = mesh.shape["fsdp"] if mode == "fsdp" else 1
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, _leaf_spec(path, np.shape(leaf), fsdp)), tree
    )
