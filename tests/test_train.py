"""End-to-end distillation on the offline demo: loss falls, exact resume, SIGTERM, sharding."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import ROOT, cli_args, compilation_cache, demo_config, final_params, make_shared

from stackdistill import checkpoint, models, stage, train
from stackdistill import config as config_lib


@pytest.fixture(scope="module")
def shared(demo_shared):
    return demo_shared


@pytest.fixture(scope="module", autouse=True)
def _cached(shared):
    """In-process runs share the compilation cache of the command-line ones (cli_args)."""
    with compilation_cache(shared / "xla_cache"):
        yield


@pytest.fixture(scope="module")
def demo_run(shared, tmp_path_factory):
    """(workdir, summary) of one uninterrupted 16-step demo run: stages of 4 at 3, 6, 9, 12."""
    workdir = tmp_path_factory.mktemp("demo_run")
    return workdir, train.train_and_evaluate(demo_config(shared), str(workdir))


def test_demo_runs_and_loss_falls(demo_run):
    tmp_path, summary = demo_run
    assert summary["status"] == "completed" and summary["steps"] == 16
    assert summary["final_depth"] == 12
    losses = [loss for _, loss in summary["loss_history"]]
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])
    assert (tmp_path / "summary.json").exists() and (tmp_path / "loss.png").exists()
    assert list((tmp_path / "tensorboard").iterdir())
    for key in ("loss/layer_4", "cos/layer_8", "loss/layer_12", "grad_norm", "audio_s_per_s"):
        assert key in summary["final_metrics"]
    cfg, params, meta = checkpoint.load_student(tmp_path)
    assert cfg.num_layers == 12 and meta["target_sources"] == {"4": 4, "8": 8, "12": 12}
    wav = np.zeros((1, 8000), np.float32)
    out = models.encode(cfg, params["encoder"], wav, np.array([8000]))
    assert out.hidden_states.shape[:2] == (13, 1)


def test_exact_resume_after_sigkill_across_a_stage_transition(shared, demo_run, tmp_path):
    c = demo_config(shared)  # demo_run's config: 16 steps, stages of 4 at depths 3, 6, 9, 12
    proc = subprocess.Popen(
        cli_args(c, tmp_path / "b"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt_dir = tmp_path / "b" / "checkpoints"
    deadline = time.time() + 300
    while not (ckpt_dir / "6").exists():  # past the first growth (step 4)
        assert proc.poll() is None and time.time() < deadline, "run B ended before the kill"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_at_kill = sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
    assert steps_at_kill[-1] < 16
    train.train_and_evaluate(c, str(tmp_path / "b"))
    step_a, params_a = final_params(demo_run[0])
    step_b, params_b = final_params(tmp_path / "b")
    assert step_a == step_b == 16
    import jax

    jax.tree_util.tree_map(np.testing.assert_array_equal, params_a, params_b)


def test_sigterm_saves_and_exits_zero(shared, tmp_path):
    c = demo_config(shared, total_steps=400)
    proc = subprocess.Popen(
        cli_args(c, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt_dir = tmp_path / "checkpoints"
    deadline = time.time() + 300
    while not (ckpt_dir / "2").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "preempted" and 2 <= summary["steps"] < 400
    assert final_params(tmp_path)[0] == summary["steps"]


def _start_with_devices(shared, tmp_path, num_devices, mesh) -> subprocess.Popen:
    """A 2-step run in its own process with `num_devices` host devices; prints its losses."""
    # Two stages, one step each (6 -> 12 layers): the growth of a sharded state, two compiles.
    grow = {"stacking.start_depth": 6, "stacking.num_new": 6}
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "from helpers import demo_config; from stackdistill import train; import pathlib;"
        f"c = demo_config(pathlib.Path(sys.argv[2]), total_steps=2, batch_size=8, "
        f"**{ {**grow, **mesh}!r});"
        "s = train.train_and_evaluate(c, sys.argv[3]);"
        "print(json.dumps(s['loss_history']))"
    )
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={num_devices}"}
    out_path, err_path = tmp_path.with_suffix(".stdout"), tmp_path.with_suffix(".stderr")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        return subprocess.Popen(
            [sys.executable, "-c", script, str(ROOT / "tests"), str(shared), str(tmp_path)],
            env=env,
            stdout=out,
            stderr=err,
        )


def _losses(proc: subprocess.Popen, tmp_path) -> list[float]:
    assert proc.wait(timeout=600) == 0, tmp_path.with_suffix(".stderr").read_text()[-3000:]
    out = tmp_path.with_suffix(".stdout").read_text()
    return [loss for _, loss in json.loads(out.strip().splitlines()[-1])]


def test_sharded_run_matches_single_device(shared, tmp_path):
    make_shared(shared)  # before the two runs start, so that neither writes it
    # Both at once: each compile uses about one core.
    procs = [
        _start_with_devices(shared, tmp_path / "one", 1, {}),
        _start_with_devices(
            shared, tmp_path / "eight", 8, {"mesh.data": 4, "mesh.fsdp": 2, "mesh.params": "fsdp"}
        ),
    ]
    try:
        one, eight = _losses(procs[0], tmp_path / "one"), _losses(procs[1], tmp_path / "eight")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert len(one) == len(eight) == 2  # one step per stage: one growth
    np.testing.assert_allclose(eight, one, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"stacking.method": "sideways"}, "config.stacking.method"),
        ({"stacking.num_new": (3, 3)}, "config.stacking.num_new"),
        ({"batch_size": 6, "mesh.data": 1}, "config.batch_size"),
        ({"distill.loss": "kl"}, "config.distill.loss"),
    ],
)
def test_invalid_configs_fail_before_compiling(shared, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        stage.validate_config(demo_config(shared, **overrides), num_devices=4)


def test_config_variants():
    c = config_lib.apply_arg(
        config_lib.base_config(), "stacking=top,runlocal,optim.learning_rate=1e-3"
    )
    assert c.stacking.method == "top" and c.total_steps == 8 and c.optim.learning_rate == 1e-3
