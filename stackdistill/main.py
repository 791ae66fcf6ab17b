"""Command line: python -m stackdistill.main --config=configs/X.py --workdir=DIR [--mode=M]."""

from __future__ import annotations

import importlib
import logging
import os
import sys

import jax
from absl import app, flags
from absl.logging import converter
from ml_collections import config_flags

from stackdistill import console, distributed, fastpath, hostmem

# mode -> module whose run(config, workdir) does it (imported on use)
MODES = {
    "distill": "stackdistill.train",
    "eval": "stackdistill.superb.run",
    "compare": "stackdistill.superb.run",
    "export": "stackdistill.export",
    "cache": "stackdistill.targets",
    "compile": "stackdistill.aot",
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


# Errors a person fixes in the command line: one message and what to do, no traceback.
_USER_ERRORS = (ValueError, FileNotFoundError)
_WHAT_TO_DO = {
    "ResumeMismatch": "",  # its message says what to do
    "FileNotFoundError": "Check the path named above (workdir, data, teacher or targets).",
}


def _third_party_level() -> int:
    """absl/orbax/jax INFO off unless --verbosity is given (then its level)."""
    flag = flags.FLAGS["verbosity"]
    return converter.absl_to_standard(flag.value) if flag.present else logging.WARNING


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    console.setup(_third_party_level())  # before JAX's first records
    fastpath.apply_xla_flags(_CONFIG.value)  # before anything starts the backend
    distributed.initialize()
    primary = jax.process_index() == 0
    if not primary:
        console.setup(_third_party_level(), primary=False)
    _use_compilation_cache(_CONFIG.value)
    log = logging.getLogger("stackdistill")
    module = importlib.import_module(MODES[_MODE.value])
    with console.run_output(_WORKDIR.value, primary=primary):
        try:
            module.run(_CONFIG.value, _WORKDIR.value, mode=_MODE.value)
        except _USER_ERRORS as e:
            todo = _WHAT_TO_DO.get(
                type(e).__name__, "Fix the config field named above and run the command again."
            )
            log.error("%s%s", e, f"\n{todo}" if todo else "")
            sys.exit(1)


if __name__ == "__main__":
    hostmem.configure()  # STACKDISTILL_MALLOC; must run before the JAX backend starts
    app.run(main)
