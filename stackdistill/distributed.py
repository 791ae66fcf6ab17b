"""Multi-process plumbing: jax.distributed start-up, make-once artefacts, preemption.

Every piece is a no-op (or the obvious single-process behaviour) in a one-process run, so
library code calls them unconditionally.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import jax


def initialize() -> None:
    """Starts jax.distributed on multi-host jobs (TPU pods, SLURM, or JAX_COORDINATOR_ADDRESS set).

    JAX reads JAX_COORDINATOR_ADDRESS itself but detects the process count and id only on
    known clusters, so JAX_NUM_PROCESSES and JAX_PROCESS_ID (launch/gpu_multihost.sh) are
    passed on here.
    """
    explicit = "JAX_COORDINATOR_ADDRESS" in os.environ
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
    tpu_pod = len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
    if explicit or slurm or tpu_pod:
        count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
        jax.distributed.initialize(
            num_processes=int(count) if count else None, process_id=int(index) if index else None
        )


def make_once(exists: Callable[[], bool], make: Callable[[], Any], tag: str) -> None:
    """Makes a deterministic on-disk artefact (random teacher, synthetic corpus) exactly once.

    Process 0 makes it unless it `exists()`, while the others wait at a barrier; a process
    that still does not see it afterwards (its host does not share the folder) makes its own,
    identical copy. Every process reaches the barrier, whatever it sees on disk: one that
    returned early because the artefact was already there would leave the others waiting.
    """
    write_once(lambda: exists() or make(), exists, tag)


def write_once(write: Callable[[], Any], written: Callable[[], bool], tag: str) -> None:
    """`write()` on process 0, then a barrier (every process); a process that does not see the
    result afterwards (`written()` false: a folder its host does not share) writes its own."""
    if jax.process_index() == 0:
        write()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"stackdistill:{tag}")
        if not written():
            write()


class Preemption:
    """SIGTERM sets a flag; the loop saves at the next step boundary and returns.

    With several processes a SIGTERM reaches them at different steps (or only one of them),
    so JAX's preemption service (started by jax.distributed) catches it instead and the
    processes stop at the step it agrees on; stopping alone would hang the others' step.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._multiprocess = jax.process_count() > 1

    def __enter__(self) -> Preemption:
        if not self._multiprocess and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, *_):
        self.requested = True

    def stop_before(self, step: int) -> bool:
        """Whether to save and return before `step` (every process asks at every step)."""
        if self._multiprocess:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def __exit__(self, *_):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
