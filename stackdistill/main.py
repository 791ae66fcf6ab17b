"""Command line: python -m stackdistill.main --config=configs/X.py --workdir=DIR [--mode=M]."""

from __future__ import annotations

import logging
import os

import jax
from absl import app, flags
from ml_collections import config_flags

MODES = ("distill",)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs).")
_MODE = flags.DEFINE_enum("mode", "distill", MODES, "What to do with the config.")
flags.mark_flags_as_required(["config", "workdir"])


def _maybe_start_distributed() -> None:
    """jax.distributed on multi-host jobs (TPU pods, SLURM, or JAX_COORDINATOR_ADDRESS set)."""
    multi_host = any(
        k in os.environ
        for k in (
            "JAX_COORDINATOR_ADDRESS",
            "SLURM_NTASKS",
            "TPU_WORKER_HOSTNAMES",
            "MEGASCALE_COORDINATOR_ADDRESS",
        )
    )
    if multi_host:
        jax.distributed.initialize()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _maybe_start_distributed()
    logging.getLogger("stackdistill").setLevel(logging.INFO)
    config = _CONFIG.value
    if _MODE.value == "distill":
        from stackdistill import train

        train.train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
