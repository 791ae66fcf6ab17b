"""The run config: every section with its defaults, and the `--config=FILE:ARG` variants."""

from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections

from stackdistill import (
    aot,
    distill,
    export,
    fastpath,
    optim,
    paths,
    sharding,
    stacking,
    targets,
    teacher,
)
from stackdistill.data import config as data_config
from stackdistill.models import student
from stackdistill.superb import config as superb_config


def base_config() -> ml_collections.ConfigDict:
    """The paper's run (HuBERT Base teacher, 12 x 384 student, interleaved 3-6-9-12)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 200_000
    c.batch_size = 24  # global, split over processes and devices
    c.dtype = "float32"  # compute dtype of teacher and student ("bfloat16" on TPU/GPU)
    c.remat = "none"  # the student's per-layer remat policy; "auto": by size (fastpath.py)
    c.fastpath = fastpath.default_config()  # GPU/TPU options, all off
    c.teacher = teacher.default_config()
    c.targets = targets.default_config()
    c.student = student.default_config()
    c.stacking = stacking.default_config()
    c.distill = distill.default_config()
    c.optim = optim.default_config()
    c.data = data_config.default_config()
    c.mesh = sharding.default_config()
    c.export = export.default_config()
    c.superb = superb_config.default_config()
    c.compile = aot.default_config()  # --mode=compile: topology, stages, batch search
    c.peak_flops = 0.0  # FLOP/s of all devices together, for the logged MFU (0: not logged)
    c.log_every = 100
    c.checkpoint_every = 2_000
    c.keep_checkpoints = 3
    # Refused resume changes let through on purpose: "field1,field2" or "allow" (resume.py).
    c.resume_changed = ""
    # XLA's persistent compilation cache ("": off): reruns and resumes skip the compiles.
    c.compilation_cache_dir = str(paths.cache_home() / "xla")
    return c


def runlocal(c: ml_collections.ConfigDict) -> None:
    """Shrinks a real config to a few steps on small crops, to smoke-test it on a laptop."""
    c.total_steps = 8
    c.batch_size = 2
    c.data.max_samples = 32_000
    c.log_every = 2
    c.checkpoint_every = 4


def apply_arg(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies `--config=FILE:ARG`: comma-separated `stacking=METHOD`, `runlocal`, `a.b=VALUE`."""
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key == "runlocal":
            runlocal(c)
        elif key == "stacking":
            c.stacking.method = value
        elif value:
            node = c
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            try:
                parsed = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                parsed = value
            node[leaf] = parsed
        else:
            raise ValueError(f"config argument {item!r}: expected runlocal, stacking=M or a.b=v")
    return c


def load_file(path: str | os.PathLike, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file, imported by path as `--config=PATH:ARG` does."""
    spec = importlib.util.spec_from_file_location(f"config_{os.path.basename(path)[:-3]}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"config file {path} cannot be imported (a .py file is expected)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)
