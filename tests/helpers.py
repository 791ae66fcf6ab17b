"""Helpers the tests share: config files loaded by path, the small demo run, its checkpoints."""

import contextlib
import pathlib
import sys
from collections.abc import Iterator

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


def make_shared(shared: pathlib.Path) -> None:
    """Writes the demo teacher and corpus of `demo_config(shared)` as a run would (once).

    For tests that start several runs at once: the runs' own make-once is not safe between
    processes that are not one `jax.distributed` job.
    """
    from stackdistill import teacher
    from stackdistill.data import synth

    c = demo_config(shared)
    teacher.prepare(c.teacher, shared)
    synth.ensure_corpus(c.data.path, c.data.synth_num, c.data.synth_seed)


@contextlib.contextmanager
def compilation_cache(path: str | pathlib.Path) -> Iterator[None]:
    """In-process runs use XLA's persistent cache in `path`, as the command line's do.

    JAX decides once per process whether it uses the cache and where (a compile while it was
    off, e.g. after `aot.target`, turns it off for good): reset that decision on entry and exit.
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    before = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)
    cc.reset_cache()
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    try:
        yield
    finally:
        cc.reset_cache()
        jax.config.update("jax_enable_compilation_cache", before[0])
        jax.config.update("jax_compilation_cache_dir", before[1])


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
