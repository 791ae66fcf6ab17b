"""Orbax checkpoints of a distillation run: train state, data iterator, run metadata, config.

One checkpoint holds the student's params and optimizer state, step, stage and RNG
(`state`), the grain iterator position (`data`, one file per process), the stage/lineage
metadata (`meta`) and the config (`config`). The teacher is never checkpointed.
"""

from __future__ import annotations

import pathlib
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
    try:
        step = manager.latest_step()
        if step is None:
            return None
        restored = manager.restore(
            step,
            args=ocp.args.Composite(meta=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()),
        )
        return step, restored["meta"], restored["config"]
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
