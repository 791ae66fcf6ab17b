"""distributed: when jax.distributed starts, make-once artefacts, SIGTERM as a preemption."""

import os
import signal

import jax
import pytest

from stackdistill import distributed

CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES")


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, None),
        ({"SLURM_NTASKS": "1"}, None),
        ({"TPU_WORKER_HOSTNAMES": "one-host"}, None),
        ({"SLURM_NTASKS": "4"}, {"num_processes": None, "process_id": None}),
        ({"TPU_WORKER_HOSTNAMES": "a,b"}, {"num_processes": None, "process_id": None}),
        (
            {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
            {"num_processes": 2, "process_id": 1},
        ),
    ],
)
def test_initialize_starts_only_on_multi_process_jobs(monkeypatch, env, expected):
    for name in (*CLUSTER_ENV, "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    distributed.initialize()
    assert calls == ([] if expected is None else [expected])


def test_make_once_makes_only_what_is_missing(tmp_path):
    marker = tmp_path / "made"
    made = []

    def make():
        made.append(1)
        marker.write_text("x")

    distributed.make_once(marker.exists, make, "test")
    distributed.make_once(marker.exists, make, "test")
    assert made == [1] and marker.exists()


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("on_disk", [True, False])
def test_make_once_meets_the_barrier_whatever_it_sees(monkeypatch, tmp_path, index, on_disk):
    """With several processes every one reaches the barrier once, whether or not it sees the
    artefact: one that returned early (it saw process 0's copy already there) would leave
    process 0 waiting forever. Process 0 makes what is missing; another makes its own copy
    only if it still does not see one after the barrier (a folder its host does not share)."""
    from jax.experimental import multihost_utils

    marker, made, barriers = tmp_path / "made", [], []
    if on_disk:
        marker.write_text("x")
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: index)
    monkeypatch.setattr(multihost_utils, "sync_global_devices", barriers.append)

    def make():
        made.append(index)
        marker.write_text("x")

    distributed.make_once(marker.exists, make, "test")
    assert barriers == ["stackdistill:test"]
    assert made == ([] if on_disk else [index]) and marker.exists()


def test_sigterm_is_a_preemption_inside_the_block_only():
    before = signal.getsignal(signal.SIGTERM)
    with distributed.Preemption() as preemption:
        assert not preemption.stop_before(0)
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.stop_before(1)
    assert signal.getsignal(signal.SIGTERM) is before
