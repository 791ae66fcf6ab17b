"""TPU chips and topologies: the per-chip facts an estimate needs, and names as users type them.

Every number comes from the Google Cloud TPU documentation page named in its `source`
(checked 2026-12-02 except where `source` says otherwise). `topology("v5e-16")` turns the
accelerator type a user rents (`v4-8`, `v5litepod-16` / `v5e-16`, `v5p-8`, `v6e-8`, pod slices
such as `v5e-256`) into the chip and the name `jax.experimental.topologies.get_topology_desc`
takes ("v5e:4x4").
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip generation."""

    name: str
    hbm_bytes: int  # per chip
    peak_bf16_flops: float  # dense bf16 FLOP/s per chip
    hbm_bytes_per_s: float  # HBM bandwidth per chip
    chips_per_host: int  # largest host (VM) of the generation
    cores_in_name: bool  # the accelerator type's suffix counts TensorCores (2 per chip)
    dims: int  # 2: 2D torus slices (AxB), 3: 3D (AxBxC)
    source: str


GB = 10**9
GIB = 2**30

CHIPS = {
    "v4": Chip(
        "v4", 32 * GIB, 275e12, 1200 * GB, 4, True, 3,
        "https://cloud.google.com/tpu/docs/v4 (32 GiB HBM2, 1200 GBps, 275 TFLOPs bf16 "
        "per chip, two TensorCores a chip: checked 2026-12-03; 4 chips per host: not on that "
        "page's key-specifications table, not re-checked)",
    ),
    "v5e": Chip(
        "v5e", 16 * GB, 197e12, 819 * GB, 8, False, 2,
        "https://cloud.google.com/tpu/docs/v5e (197 TFLOPs bf16, HBM2 16 GB at 819 GBps, "
        "8 chips per host; multi-host slices use 4-chip VMs)",
    ),
    "v5p": Chip(
        "v5p", 95 * GB, 459e12, 2765 * GB, 4, True, 3,
        "https://cloud.google.com/tpu/docs/v5p-training (459 TFLOPs bf16, HBM2e 95 GB at "
        "2765 GBps); 4 chips per host from the same page's VM table (not re-checked)",
    ),
    "v6e": Chip(
        "v6e", 32 * GB, 918e12, 1640 * GB, 8, False, 2,
        "https://cloud.google.com/tpu/docs/v6e (918 TFLOPs bf16, 32 GB HBM at 1640 GBps, "
        "8 chips per host)",
    ),
}  # fmt: skip
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "trillium": "v6e"}
# libtpu's compile-only topologies start at one host's bounds: 2x2 (v5e "1x1" is refused).
MIN_CHIPS = 4
MAX_CHIPS = {"v4": 4096, "v5e": 256, "v5p": 8960, "v6e": 256}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A slice: its chip, number of chips and the name `get_topology_desc` takes."""

    name: str  # as the user typed it
    chip: Chip
    num_chips: int
    desc_name: str  # e.g. "v5e:4x4"

    @property
    def num_hosts(self) -> int:
        """Hosts of the slice (at least one)."""
        return max(1, self.num_chips // self.chip.chips_per_host)


def _shape(num_chips: int, dims: int) -> tuple[int, ...]:
    """The slice shape of `num_chips` (a power of two >= 4): 2D AxB, 3D AxBxC, balanced."""
    shape = [2, 2] if dims == 2 else [2, 2, 1]
    while _prod(shape) < num_chips:
        i = max(j for j in range(dims) if shape[j] == min(shape))  # double the last smallest
        shape[i] *= 2
    return tuple(sorted(shape)) if dims == 2 else tuple(shape)


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= x
    return n


def topology(name: str) -> Topology:
    """Parses `v4-8`, `v5e-16`, `v5litepod-16`, `v5p-8`, `v6e-8` or `v5e:4x4`; raises ValueError."""
    text = name.strip().lower()
    m = re.fullmatch(r"([a-z0-9]+)[-:](\d+)((?:x\d+)*)", text)
    if not m:
        raise ValueError(
            f"config.compile.topology={name!r}: expected an accelerator type such as v5e-16, "
            "v5litepod-16, v4-8, v5p-8, v6e-8 or a shape such as v5e:4x4"
        )
    gen = ALIASES.get(m.group(1), m.group(1))
    if gen not in CHIPS:
        raise ValueError(
            f"config.compile.topology={name!r}: unknown TPU {m.group(1)!r}; known: "
            f"{', '.join(sorted(CHIPS))} (and {', '.join(sorted(ALIASES))})"
        )
    chip = CHIPS[gen]
    if m.group(3):  # an explicit shape, e.g. v5e:4x4
        shape = tuple(int(x) for x in (m.group(2) + m.group(3)).split("x"))
        if len(shape) != chip.dims:
            raise ValueError(
                f"config.compile.topology={name!r}: {gen} slices are {chip.dims}D "
                f"(e.g. {gen}:{'x'.join(map(str, _shape(8, chip.dims)))})"
            )
        n = _prod(shape)
        desc = f"{gen}:{'x'.join(map(str, shape))}"
    else:
        size = int(m.group(2))
        if chip.cores_in_name and size % 2:
            raise ValueError(
                f"config.compile.topology={name!r}: the suffix of a {gen} type counts "
                "TensorCores (2 per chip), so it is even (v4-8 = 4 chips)"
            )
        n = size // 2 if chip.cores_in_name else size
        if n & (n - 1):
            raise ValueError(
                f"config.compile.topology={name!r}: {n} chips is not a slice size "
                "(a power of two, e.g. 4, 8, 16, ...)"
            )
        desc = f"{gen}:{'x'.join(map(str, _shape(max(n, MIN_CHIPS), chip.dims)))}"
    if not MIN_CHIPS <= n <= MAX_CHIPS[gen]:
        raise ValueError(
            f"config.compile.topology={name!r}: {n} chips; without a TPU, slices of "
            f"{MIN_CHIPS} to {MAX_CHIPS[gen]} {gen} chips can be compiled for "
            f"(the smallest: {gen}-{MIN_CHIPS * (2 if chip.cores_in_name else 1)})"
        )
    return Topology(name, chip, n, desc)


def accelerator_type(topo: Topology) -> str:
    """The Cloud TPU API's name of the slice: v4-8, v5litepod-16, v5p-8, v6e-8."""
    prefix = "v5litepod" if topo.chip.name == "v5e" else topo.chip.name
    return f"{prefix}-{topo.num_chips * (2 if topo.chip.cores_in_name else 1)}"


def devices(topo: Topology) -> list:
    """The compile-only devices of `topo` (needs libtpu; no TPU is used or needed)."""
    import os

    import jax
    from jax.experimental import topologies

    if jax.default_backend() != "tpu":
        # Without a TPU host libtpu asks the GCE metadata server what it runs on and prints
        # errors when there is none, and one process at a time may load it (a lock file):
        # nothing of that matters for compile-only devices.
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type(topo))
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        desc = topologies.get_topology_desc(topology_name=topo.desc_name, platform="tpu")
    except Exception as e:  # noqa: BLE001 - no libtpu, or a shape it refuses: one message
        raise ValueError(
            f"config.compile.topology={topo.name!r} ({topo.desc_name}): cannot build the "
            f"compile-only TPU devices ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "Install libtpu: pip install 'jax[tpu]==' followed by the installed jax version"
        ) from None
    return list(desc.devices)
