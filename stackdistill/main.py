"""Command line: python -m stackdistill.main --config=configs/X.py --workdir=DIR [--mode=M]."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Iterator

import jax
from absl import app, flags
from absl.logging import converter
from ml_collections import config_flags

from stackdistill import console, distributed, errors, fastpath, hostmem, workdir_lock

# mode -> module whose run(config, workdir) does it (imported on use)
MODES = {
    "distill": "stackdistill.train",
    "eval": "stackdistill.superb.run",
    "compare": "stackdistill.superb.run",
    "export": "stackdistill.export",
    "cache": "stackdistill.targets",
    "compile": "stackdistill.aot",
}
DP_MODES = ("distill", "export", "compile")  # what a DPHuBERT config (recipe "dp") can do

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
    "DamagedCheckpoints": "",
    "FileNotFoundError": "Check the path named above (workdir, data, teacher or targets).",
}


def _third_party_level() -> int:
    """absl/orbax/jax INFO off unless --verbosity is given (then its level)."""
    flag = flags.FLAGS["verbosity"]
    return converter.absl_to_standard(flag.value) if flag.present else logging.WARNING


def _fail(message: str) -> None:
    """Ends the command before logging is set up: one `error:` line (and what to do)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a flag that names no config field or file as one line."""
    missing = errors.config_file_message(argv)
    if missing:
        _fail(f"{missing}\nName an existing config file, e.g. --config=configs/demo.py.")
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(f"{e}\nRun with --helpshort to see the flags.")
    except (KeyError, AttributeError):  # ml_collections: an override names no field
        message = errors.unknown_override(argv, _config_without_overrides(argv))
        if message is None:
            raise
        _fail(f"{message}\nFix the flag and run the command again.")
    return []  # not reached


def _config_without_overrides(argv: list[str]) -> dict:
    from stackdistill import config as config_lib

    path, _, arg = (errors.config_flag(argv) or "").partition(":")
    return config_lib.load_file(path, arg or None).to_dict()


def _last_checkpoint(workdir: str) -> int | None:
    """The newest checkpoint step a rerun would resume from (None when none or unreadable)."""
    try:
        from stackdistill import checkpoint

        return checkpoint.latest_good_step(workdir)
    except Exception:  # noqa: BLE001 - only decorates an error message
        return None


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
    if _CONFIG.value.get("recipe", "") == "dp" and _MODE.value not in DP_MODES:
        _fail(
            f"--mode={_MODE.value}: a DPHuBERT config (config.recipe='dp') runs with "
            "--mode=distill, --mode=export and --mode=compile only (its models: WORKDIR/pruned, "
            "WORKDIR/final; evaluate WORKDIR/final/pruned_hubert_base.pth as the upstream "
            "'dp:FILE')."
        )
    module = importlib.import_module(MODES[_MODE.value])
    workdir = _WORKDIR.value
    # A run that writes the workdir owns it; an export or evaluation may read it meanwhile.
    owned = _MODE.value in ("distill", "cache")
    with _reported(workdir):
        with workdir_lock.hold(workdir) if owned else contextlib.nullcontext():
            with console.run_output(workdir, primary=primary):
                module.run(_CONFIG.value, workdir, mode=_MODE.value)


@contextlib.contextmanager
def _reported(workdir: str) -> Iterator[None]:
    """Ends the command with one `error:` message (and what to do) for the faults a person
    fixes: config errors, a workdir in use, a folder that cannot be written, a full disk."""
    log = logging.getLogger("stackdistill")
    try:
        yield
    except Exception as e:
        if errors.is_no_space(e):  # OSError, or a library's wrapper of one
            log.error("%s", errors.no_space_message(e, workdir, _last_checkpoint(workdir)))
            _exit(1)
        if isinstance(e, errors.RunError):  # its message says what to do
            log.error("%s", e)
            _exit(1)
        if isinstance(e, _USER_ERRORS):
            todo = _WHAT_TO_DO.get(
                type(e).__name__, "Fix the config field named above and run the command again."
            )
            log.error("%s%s", e, f"\n{todo}" if todo else "")
            _exit(1)
        if isinstance(e, OSError):  # a folder that cannot be written
            log.error("%s", errors.os_error_message(e, workdir))
            _exit(1)
        raise


def _exit(status: int) -> None:
    """Exits after an `error:` line; what is left of libraries' background threads is not
    waited for (their shutdown on a failed disk is a storm of tracebacks, not information)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    hostmem.configure()  # STACKDISTILL_MALLOC; must run before the JAX backend starts
    app.run(main, flags_parser=_parse_flags)
