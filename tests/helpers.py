"""Helpers the tests share: config files loaded by path, the small demo run, its checkpoints."""

import pathlib
import sys

import ml_collections
import orbax.checkpoint as ocp

import stackdistill.config

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.py")


def load_config(path: str | pathlib.Path, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file, imported by path as `--config=PATH:ARG` does."""
    return stackdistill.config.load_file(path, arg)


def demo_config(shared: pathlib.Path, **overrides) -> ml_collections.ConfigDict:
    """configs/demo.py, made smaller, with teacher and corpus shared between runs."""
    c = load_config(DEMO)
    c.teacher.name = str(shared / "teacher")
    c.data.path = str(shared / "synth")
    c.data.synth_num = 24
    c.data.max_samples = 8000
    c.batch_size = 4
    c.total_steps = 16
    c.log_every = 1
    c.checkpoint_every = 2
    return stackdistill.config.apply_overrides(c, overrides)


def cli_args(c: ml_collections.ConfigDict, workdir) -> list[str]:
    """The same config as command-line flags of stackdistill.main."""
    flat = {
        "teacher.name": c.teacher.name,
        "data.path": c.data.path,
        "data.synth_num": c.data.synth_num,
        "data.max_samples": c.data.max_samples,
        "batch_size": c.batch_size,
        "total_steps": c.total_steps,
        "log_every": c.log_every,
        "checkpoint_every": c.checkpoint_every,
        "compilation_cache_dir": str(
            pathlib.Path(c.data.path).parent / "xla_cache"
        ),  # not in $HOME
    }
    return [
        sys.executable,
        "-m",
        "stackdistill.main",
        f"--config={DEMO}",
        f"--workdir={workdir}",
    ] + [f"--config.{k}={v}" for k, v in flat.items()]


def final_params(workdir) -> tuple[int, dict]:
    """The latest checkpoint's step and student params, read with orbax alone."""
    ckpt = ocp.CheckpointManager(pathlib.Path(workdir) / "checkpoints")
    step = ckpt.latest_step()
    state = ckpt.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, state["state"]["params"]
