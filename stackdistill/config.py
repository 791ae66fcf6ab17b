"""The run config: every section with its defaults, and the `--config=FILE:ARG` variants."""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Iterable, Mapping
from typing import Any

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
    c.fastpath = fastpath.default_config()  # GPU/TPU options: off, "auto" = on only on a TPU
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
            apply_overrides(c, [item])
        else:
            raise ValueError(f"config argument {item!r}: expected runlocal, stacking=M or a.b=v")
    return c


_SECTIONS = (ml_collections.ConfigDict, Mapping)


def apply_overrides(
    c: ml_collections.ConfigDict, overrides: Mapping[str, Any] | Iterable[str]
) -> ml_collections.ConfigDict:
    """Sets dotted fields of `c` in place and returns it.

    `overrides` is a mapping `{"a.b": value}` (values set as they are) or strings `"a.b=VALUE"`
    (VALUE read as a Python literal, else kept as text). A field that `c` does not have is a
    KeyError naming it; a string without `=` is a ValueError.
    """
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for text in overrides:
            key, sep, value = text.partition("=")
            if not sep or not key:
                raise ValueError(f"config override {text!r}: expected a.b=VALUE")
            try:
                items.append((key, ast.literal_eval(value)))
            except (ValueError, SyntaxError):
                items.append((key, value))
    for key, value in items:
        node = c
        *parents, leaf = key.split(".")
        for depth, name in enumerate(parents):
            if not isinstance(node, _SECTIONS) or name not in node:
                where = ".".join(parents[: depth + 1])
                raise KeyError(f"config override {key!r}: the config has no section {where!r}")
            node = node[name]
        if not isinstance(node, _SECTIONS) or leaf not in node:
            raise KeyError(f"config override {key!r}: the config has no field {key!r}")
        node[leaf] = value
    return c


def load_file(path: str | os.PathLike, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file, imported by path as `--config=PATH:ARG` does."""
    spec = importlib.util.spec_from_file_location(f"config_{os.path.basename(path)[:-3]}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"config file {path} cannot be imported (a .py file is expected)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)
