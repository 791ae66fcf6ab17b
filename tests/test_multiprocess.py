"""Two processes on localhost (jax.distributed, CPU collectives, 2 devices each) vs one process.

Three demo steps with stacking 3 -> 6 -> 12 (`stacking.num_new=(3, 6)`): one step per stage,
so both growths run across processes. The single-process reference (4 devices) is fed the
global batches the two processes assemble: process 0's shard rows, then process 1's.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import DEMO, ROOT, cli_args, demo_config

from stackdistill import data, teacher
from stackdistill.data import pipeline

STEPS = 3
OVERRIDES = {"total_steps": STEPS, "stacking.num_new": (3, 6), "checkpoint_every": 2}
NUM_PROCESSES = 2


class TwoShardLoader:
    """One process's view of a 2-process job: the global batch = shard 0's rows, shard 1's."""

    def __init__(self, data_cfg, seed):
        per_process = data_cfg.copy_and_resolve_references()
        per_process.batch_size = data_cfg.batch_size // NUM_PROCESSES
        self.shards = [
            pipeline.make_loader(
                per_process, seed=seed, process_index=i, process_count=NUM_PROCESSES
            )
            for i in range(NUM_PROCESSES)
        ]

    def __iter__(self):
        return self

    def __next__(self):
        batches = [next(shard) for shard in self.shards]
        return {k: np.concatenate([b[k] for b in batches]) for k in ("audio", "lengths")}

    def get_state(self) -> bytes:
        return json.dumps([shard.get_state() for shard in self.shards]).encode()

    def set_state(self, state: bytes) -> None:
        for shard, s in zip(self.shards, json.loads(state)):
            shard.set_state(s)


def reference_losses(shared: str, workdir: str) -> list[float]:
    """Single-process run (all devices of this process) on the 2-process global batches."""
    from stackdistill import train

    data.make_loader = lambda cfg, *, seed, process_index, process_count: TwoShardLoader(cfg, seed)
    summary = train.train_and_evaluate(demo_config(pathlib.Path(shared), **OVERRIDES), workdir)
    return [loss for _, loss in summary["loss_history"]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(num_devices: int, cache: pathlib.Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={num_devices}",
        "STACKDISTILL_CACHE": str(cache),
        **extra,
    }


@pytest.mark.slow  # three runs compiling three stages each: about 2 min on 2 cores
def test_two_processes_match_one_process(tmp_path):
    shared = tmp_path / "shared"
    config = demo_config(shared, **OVERRIDES)
    # Written once before the processes start: the random teacher and the espeak corpus.
    teacher.prepare(config.teacher, tmp_path)
    data.open_source(config.data)

    # The 2-process job goes through launch/gpu_multihost.sh: its "ssh" runs the command here.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text('#!/bin/sh\nshift 3\nexec bash -c "$1"\n')  # -o opt host cmd
    (bin_dir / "ssh").chmod(0o755)
    (tmp_path / "hosts").write_text("host0\nhost1\n")
    workdir = tmp_path / "multi"
    launch = [
        "bash",
        str(ROOT / "launch" / "gpu_multihost.sh"),
        f"--hosts={tmp_path / 'hosts'}",
        "--coordinator=127.0.0.1",
        f"--port={_free_port()}",
        f"--python={sys.executable}",
        f"--remote-dir={ROOT}",
        f"--config={DEMO}",
        f"--workdir={workdir}",
        "--",
        *cli_args(config, workdir)[5:],  # the --config.field=value overrides
        "--config.stacking.num_new=(3,6)",
    ]
    env = _env(2, tmp_path / "cache", PATH=f"{bin_dir}:{os.environ['PATH']}")
    with open(tmp_path / "job.log", "w") as log:
        job = subprocess.Popen(
            launch, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "from test_multiprocess import reference_losses;"
        "print(json.dumps(reference_losses(sys.argv[2], sys.argv[3])))"
    )
    reference = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "tests"), str(shared), str(tmp_path / "one")],
        env=_env(4, tmp_path / "cache"),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    try:
        job.wait(timeout=600)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)  # the launcher and both processes
    output = (tmp_path / "job.log").read_bytes().decode()  # keeps progress bars' "\r"
    assert job.returncode == 0, output[-5000:]
    assert reference.returncode == 0, reference.stderr[-3000:]
    # Split on newlines only: progress bars redraw with carriage returns.
    logs = [
        "\n".join(line for line in output.split("\n") if line.startswith(f"[host{i}] "))
        for i in range(NUM_PROCESSES)
    ]

    # The losses of the 2-process job equal the single-process run's.
    ref_losses = json.loads(reference.stdout.strip().splitlines()[-1])
    summary = json.loads((workdir / "summary.json").read_text())
    losses = [loss for _, loss in summary["loss_history"]]
    assert summary["steps"] == STEPS and len(losses) == len(ref_losses) == STEPS
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)

    # Only process 0 reported: its log has the stage and step lines, process 1's has none,
    # and there is one TensorBoard event file.
    assert f"step {STEPS}:" in logs[0] and "stage 2: depth 12" in logs[0]
    assert "step 1:" not in logs[1] and "stage 0:" not in logs[1]
    # Process 1 ran: it printed (its library INFO lines now go to log.txt only, so not orbax's
    # "[process=1]" ones), nothing of it failed, and it saved its own data iterator (below).
    assert logs[1] and "Traceback" not in logs[1] and "error:" not in logs[1]
    assert len(list((workdir / "tensorboard").iterdir())) == 1

    # Each process checkpointed its own data iterator, STEPS batches of 2 records in.
    data_dir = workdir / "checkpoints" / str(STEPS) / "data"
    for i in range(NUM_PROCESSES):
        state = json.loads((data_dir / f"process_{i}-of-{NUM_PROCESSES}.json").read_text())
        assert state["parent"]["parent"]["next_index"] == STEPS * 2


def test_process_shards_are_disjoint(tmp_path):
    config = demo_config(tmp_path / "shared", **OVERRIDES)
    records, _ = data.open_source(config.data)
    cfg = config.data.copy_and_resolve_references()
    cfg.batch_size = config.batch_size // NUM_PROCESSES
    cfg.label_keys = ("name",)
    cfg.num_epochs = 1
    cfg.drop_remainder = False
    names = []
    for i in range(NUM_PROCESSES):
        loader = data.make_loader(cfg, seed=config.seed, process_index=i, process_count=2)
        names.append({str(n) for batch in loader for n in batch["name"]})
        # Process i reads records i, i + 2, ... (short ones are skipped by min_samples).
        assert names[i] and names[i] <= {r["name"] for r in records[i::NUM_PROCESSES]}
    assert not names[0] & names[1]


@pytest.mark.slow  # two processes compiling the full-depth step: about 1-2 min on 2 cores
def test_sigterm_to_one_process_saves_on_both_and_exits_zero(tmp_path):
    shared = tmp_path / "shared"
    config = demo_config(shared, total_steps=400, checkpoint_every=2, **{"stacking.method": "none"})
    # No teacher and no corpus yet: process 0 writes both while process 1 waits at a barrier.
    workdir = tmp_path / "run"
    args = cli_args(config, workdir) + ["--config.stacking.method=none"]
    port = _free_port()
    procs = []
    for i in range(NUM_PROCESSES):
        env = _env(
            2,
            tmp_path / "cache",
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES=str(NUM_PROCESSES),
            JAX_PROCESS_ID=str(i),
        )
        log = open(tmp_path / f"process_{i}.log", "wb")
        procs.append(subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=log))
    try:
        deadline = time.time() + 400
        while not (workdir / "checkpoints" / "2").exists():
            assert all(p.poll() is None for p in procs) and time.time() < deadline
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGTERM)  # as when one host of a job is preempted
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    full = [(tmp_path / f"process_{i}.log").read_bytes().decode() for i in range(2)]
    logs = [text[-3000:] for text in full]
    assert codes == [0, 0], "\n\n".join(logs)
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "preempted" and 2 <= summary["steps"] < 400
    last = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert last == summary["steps"]
    for i in range(NUM_PROCESSES):  # both processes saved their data position at that step
        assert (workdir / "checkpoints" / str(last) / "data" / f"process_{i}-of-2.json").exists()
    assert "wrote a random hubert teacher" in full[0] and "wrote a random" not in full[1]
    assert len(data.open_source(config.data)[0]) == config.data.synth_num
