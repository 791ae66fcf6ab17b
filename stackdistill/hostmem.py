"""Host memory on CPU runs: glibc can keep freed memory instead of unmapping it every step.

glibc serves the 100+ MB buffers of a CPU training step with mmap, or from per-thread arenas
that fall back to mmap, and unmaps them when they are freed, so each step faults them in
again. STACKDISTILL_MALLOC=keep sets one arena, no mmap and no trimming: steps get faster,
but XLA's multi-threaded compiles contend for the one arena and get slower, so it is off by
default (the figures: benchmarks/RESULTS.md, "Host allocator"). The settings take only if
made before XLA's threads first allocate, before the JAX backend starts: the command-line
entry points call `configure()` before anything else.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

ENV = "STACKDISTILL_MALLOC"
MODES = ("default", "keep")

# mallopt parameters (malloc.h) and the values set: one arena, no mmap, no trimming.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
_SETTINGS = (
    (_M_ARENA_MAX, 1),
    (_M_MMAP_MAX, 0),
    (_M_TRIM_THRESHOLD, 2**31 - 1),
    (_M_TOP_PAD, 64 << 20),
)


def configure(mode: str | None = None) -> bool:
    """Applies `mode` (default: $STACKDISTILL_MALLOC, else "default"); True if glibc was tuned."""
    mode = (mode or os.environ.get(ENV) or "default").strip()
    if mode not in MODES:
        raise ValueError(f"{ENV}={mode!r}: expected one of {MODES}")
    if mode == "default":
        return False
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "gnu_get_libc_version"):
        logging.getLogger(__name__).warning("%s=keep: not glibc, nothing tuned", ENV)
        return False
    for option, value in _SETTINGS:
        if libc.mallopt(option, value) != 1:
            logging.getLogger(__name__).warning("mallopt(%d, %d) refused", option, value)
            return False
    return True
