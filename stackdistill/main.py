"""Command line: python -m stackdistill.main --config=configs/X.py --workdir=DIR [--mode=M]."""

from __future__ import annotations

import importlib
import logging
import os

import jax
from absl import app, flags
from ml_collections import config_flags

from stackdistill import distributed, fastpath, hostmem

# mode -> module whose run(config, workdir) does it (imported on use)
MODES = {
    "distill": "stackdistill.train",
    "eval": "stackdistill.superb.run",
    "compare": "stackdistill.superb.run",
    "export": "stackdistill.export",
    "cache": "stackdistill.targets",
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs).")
_MODE = flags.DEFINE_enum("mode", "distill", list(MODES), "What to do with the config.")
flags.mark_flags_as_required(["config", "workdir"])


def _use_compilation_cache(config) -> None:
    """XLA's persistent compilation cache in config.compilation_cache_dir ("": off).

    Reruns, resumes after preemption and every growth stage seen before load their compiled
    steps from disk instead of compiling again (jax caches compiles that took >= 1 s).
    """
    path = config.get("compilation_cache_dir", "")
    if path:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    fastpath.apply_xla_flags(_CONFIG.value)  # before anything starts the backend
    distributed.initialize()
    _use_compilation_cache(_CONFIG.value)
    logging.getLogger("stackdistill").setLevel(logging.INFO)
    module = importlib.import_module(MODES[_MODE.value])
    module.run(_CONFIG.value, _WORKDIR.value, mode=_MODE.value)


if __name__ == "__main__":
    hostmem.configure()  # STACKDISTILL_MALLOC; must run before the JAX backend starts
    app.run(main)
