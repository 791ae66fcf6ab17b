"""The DP pipeline over two processes (jax.distributed on localhost, CPU collectives, 2 devices
each) against one process of 4 devices fed the same global batches (process 0's rows, then
process 1's: test_multiprocess.TwoShardLoader)."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT

DPHUBERT = ROOT / "configs" / "dphubert.py"
SHORT = [
    "--config.prune.steps=6",
    "--config.prune.warmup=2",
    "--config.prune.sparsity_warmup=3",
    "--config.final.steps=4",
    "--config.final.warmup=1",
    "--config.log_every=2",
    "--config.checkpoint_every=6",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(workdir: pathlib.Path, shared: pathlib.Path) -> list[str]:
    return [
        f"--config={DPHUBERT}:runlocal",
        f"--workdir={workdir}",
        f"--config.teacher.name={shared / 'teacher'}",
        f"--config.data.path={shared / 'synth'}",
        f"--config.compilation_cache_dir={shared / 'xla'}",
        *SHORT,
    ]


def _env(devices: int, **extra: str) -> dict[str, str]:
    flags = f"--xla_force_host_platform_device_count={devices}"
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags, **extra}


# The one-process reference: stackdistill.main with the data loader replaced by the two
# shards' concatenation (the global batches the two processes assemble).
REFERENCE = """
import sys
sys.path.insert(0, sys.argv[1])
from absl import app
from test_multiprocess import TwoShardLoader
import stackdistill.data as data
from stackdistill import main
data.make_loader = lambda cfg, *, seed, process_index, process_count: TwoShardLoader(cfg, seed)
app.run(main.main, argv=["main", *sys.argv[2:]])
"""


def _metrics(run: pathlib.Path, stage: str) -> list[dict]:
    return [json.loads(x) for x in (run / stage / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # two processes and a reference, each compiling both stages: ~3 CPU minutes
def test_two_processes_match_one_process(tmp_path):
    shared = tmp_path / "shared"
    one, two = tmp_path / "one", tmp_path / "two"
    # the reference first: it writes the shared teacher and corpus once
    out = subprocess.run(
        [sys.executable, "-c", REFERENCE, str(ROOT / "tests"), *_args(one, shared)],
        env=_env(4), cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "stackdistill.main", *_args(two, shared)],
            env=_env(
                2,
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(i),
            ),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
        assert "Traceback" not in log
    for stage in ("prune", "final"):
        a, b = _metrics(one, stage), _metrics(two, stage)
        assert [r["step"] for r in a] == [r["step"] for r in b]
        for ra, rb in zip(a, b):
            for k in ("loss", "loss_distill"):
                np.testing.assert_allclose(rb[k], ra[k], rtol=1e-4, atol=1e-5, err_msg=(stage, k))
    s_one, s_two = (json.loads((r / "summary.json").read_text()) for r in (one, two))
    assert s_two["status"] == "completed" and s_two["params"] == s_one["params"]
    # Each process checkpointed its own data iterator: 6 (then 4) batches of 2 rows in.
    for stage, steps in (("prune", 6), ("final", 4)):
        data_dir = two / stage / "checkpoints" / str(steps) / "data"
        for i in range(2):
            state = json.loads((data_dir / f"process_{i}-of-2.json").read_text())
            assert state["parent"]["parent"]["next_index"] == steps * 2
    # The final model is the reference's. Not compared: the key biases, whose gradient is zero
    # in exact arithmetic (softmax ignores a shift per query), so Adam turns rounding noise,
    # which differs with the reduction order, into steps of the learning rate's size.
    with np.load(one / "final" / "params.npz") as f1, np.load(two / "final" / "params.npz") as f2:
        assert f1.files == f2.files
        for k in f1.files:
            if not k.endswith("k_proj/bias"):
                np.testing.assert_allclose(f2[k], f1[k], rtol=1e-3, atol=1e-4, err_msg=k)
    assert len(list((two / "prune" / "tensorboard").iterdir())) == 1  # process 0's only
