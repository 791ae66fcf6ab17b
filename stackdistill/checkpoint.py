"""Orbax checkpoints of a distillation run: train state, data iterator, run metadata, config.

One checkpoint holds the student's params and optimizer state, step, stage and RNG
(`state`), the grain iterator position (`data`, one file per process), the stage/lineage
metadata (`meta`) and the config (`config`). The teacher is never checkpointed.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable
from typing import Any

import grain
import orbax.checkpoint as ocp
from etils import epath


class Checkpointer:
    """Saves every `every` steps (and on demand), keeps the newest `keep`, restores the latest."""

    def __init__(self, workdir: str | pathlib.Path, every: int, keep: int):
        directory = epath.Path(workdir) / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every, create=True
        )
        self.manager = ocp.CheckpointManager(
            directory, options=options, item_names=("state", "data", "meta", "config")
        )

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of every complete checkpoint, newest first."""
        return sorted(self.manager.all_steps(), reverse=True)

    def restore_newest_good(self, restore: Callable[[int], Any]) -> tuple[int, Any] | None:
        """(step, restore(step)) of the newest checkpoint that restores, or None when none exist.

        A newer one that fails while an older one restores is damaged (a host crash or a bad
        disk mid-write): it is moved aside to `checkpoints_damaged/` with one warning. When
        none restores, nothing is moved and DamagedCheckpoints names them all.
        """
        failed: list[tuple[int, BaseException]] = []
        for step in self.all_steps():
            try:
                result = restore(step)
            except Exception as e:  # noqa: BLE001 - any library's error is "does not restore"
                if _not_the_checkpoint(e):
                    raise  # memory, network, rights: an older checkpoint would not help
                failed.append((step, e))
                continue
            for bad, error in failed:
                aside = move_aside(self.manager.directory, bad)
                logging.getLogger("stackdistill").warning(
                    "checkpoint at step %d does not restore (%s): moved aside to %s; "
                    "resuming from step %d",
                    bad,
                    first_line(error),
                    aside,
                    step,
                )
            if failed:
                self.manager.reload()
            return step, result
        if failed:
            raise DamagedCheckpoints(self.manager.directory, failed)
        return None

    def save(
        self,
        step: int,
        state: Any,
        data_iter: Any,
        meta: dict[str, Any],
        config: dict[str, Any],
        force: bool = False,
    ) -> bool:
        """Saves (asynchronously) when the interval says so or `force`; True if it saved."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iter),
            meta=ocp.args.JsonSave(meta),
            config=ocp.args.JsonSave(config),
        )
        return self.manager.save(step, args=args, force=force)

    def restore_meta(self, step: int) -> dict[str, Any]:
        """The stage/lineage metadata of a checkpoint (needed to shape the state)."""
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]

    def restore(self, step: int, abstract_state: Any, data_iter: Any) -> Any:
        """The train state (shapes and shardings of `abstract_state`); moves `data_iter`."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iter),
            ),
        )
        return restored["state"]

    def close(self) -> None:
        """Finishes pending saves and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


class DamagedCheckpoints(ValueError):
    """No checkpoint of a workdir restores (damaged, or the config changes the state's shapes)."""

    def __init__(self, directory: Any, failed: list[tuple[int, BaseException]]):
        steps = ", ".join(str(s) for s, _ in failed)
        newest, error = failed[0]
        super().__init__(
            f"no checkpoint in {directory} restores (steps {steps}); step {newest}: "
            f"{first_line(error)}\nIf the config changes the state's shapes, use a new --workdir; "
            f"if the checkpoints are damaged, move {directory} aside to start the run again."
        )


# Errors that say nothing about the checkpoint's bytes (TensorStore/absl status codes).
_NOT_DAMAGE = ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "PERMISSION_DENIED")


def _not_the_checkpoint(error: BaseException) -> bool:
    """Whether a failed restore came from memory, the network or rights, not the files."""
    text = "\n".join(str(e) for e in _chain(error))
    return any(code in text for code in _NOT_DAMAGE) or "out of memory" in text.lower()


def _chain(error: BaseException | None) -> list[BaseException]:
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def first_line(error: BaseException) -> str:
    """The first line of what went wrong, from the innermost error raised (a TensorStore
    error's own message ends in a dump of its spec; its cause names the file and the fault)."""
    error = _chain(error)[-1]
    text = str(error).strip()
    text = text.split(". See full TensorStore details")[0]
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


def move_aside(directory: Any, step: int) -> epath.Path:
    """Moves the step folder of a damaged checkpoint to `<workdir>/checkpoints_damaged/`."""
    directory = epath.Path(directory)
    target_dir = directory.parent / "checkpoints_damaged"
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / str(step)
    n = 1
    while target.exists():
        target, n = target_dir / f"{step}.{n}", n + 1
    (directory / str(step)).rename(target)
    return target


def latest_good_step(workdir: str | pathlib.Path) -> int | None:
    """The newest complete checkpoint step in workdir (no file read beyond the folder names)."""
    directory = epath.Path(workdir) / "checkpoints"
    if not directory.exists():
        return None
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
    try:
        return manager.latest_step()
    finally:
        manager.close()


def latest_run(workdir: str | pathlib.Path) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
    """(step, meta, config) of the newest checkpoint in workdir, or None; reads JSON only.

    What the resume guard and a finished run need, before anything is loaded or compiled.
    """
    directory = epath.Path(workdir) / "checkpoints"
    if not directory.exists():
        return None
    manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(create=False),
        item_names=("meta", "config"),
    )
    args = ocp.args.Composite(meta=ocp.args.JsonRestore(), config=ocp.args.JsonRestore())
    try:  # a checkpoint whose JSON does not read is left to the restore to move aside
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                restored = manager.restore(step, args=args)
            except Exception:  # noqa: BLE001
                continue
            return step, restored["meta"], restored["config"]
        return None
    finally:
        manager.close()


def load_student(workdir: str | pathlib.Path, step: int | None = None):
    """(EncoderConfig, params, meta) of a run's student at `step` (default: the latest).

    `params` is `{"encoder": ..., "heads": ...}`; meta holds the stage, lineage and which
    student hidden state feeds each teacher layer's head (`target_sources`).
    """
    from stackdistill.models.config import EncoderConfig

    directory = epath.Path(workdir) / "checkpoints"
    manager = ocp.CheckpointManager(directory, item_names=("state", "meta"))
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{directory} holds no checkpoint")
    restored = manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
    )
    meta = restored["meta"]
    cfg = EncoderConfig.from_dict(meta["encoder_config"])
    return cfg, restored["state"]["params"], meta
