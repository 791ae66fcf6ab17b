"""What every reader returns, and the one error a wrong path raises."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

SPLITS = ("train", "dev", "test")


class MissingData(FileNotFoundError):
    """A dataset path is unset, missing or not laid out as expected; names the config field."""


@dataclasses.dataclass
class Dataset:
    """A task's splits as records, the label fields and their classes, and the protocol used."""

    splits: dict[str, list[dict[str, Any]]]  # "train", "dev", "test"
    label_keys: tuple[str, ...]  # record fields holding the labels, one per class group
    classes: tuple[tuple[str, ...], ...]  # class names per label key; CTC: the token vocabulary
    protocol: str  # the rules applied and the s3prl files they come from

    def sizes(self) -> dict[str, int]:
        """Number of records per split."""
        return {name: len(records) for name, records in self.splits.items()}


def field_name(task: str, field: str) -> str:
    """The config field a user sets, e.g. `config.superb.sid.split_file`."""
    return f"config.superb.{task}.{field}"


def require_dir(path: str | None, task: str, field: str, what: str) -> pathlib.Path:
    """`path` as a folder, or MissingData naming the field and what it should hold."""
    if not path:
        raise MissingData(f"set {field_name(task, field)} to {what}")
    folder = pathlib.Path(path)
    if not folder.is_dir():
        raise MissingData(f"{field_name(task, field)}: no folder {folder} ({what})")
    return folder


def require_file(path: str | pathlib.Path | None, task: str, field: str, what: str) -> pathlib.Path:
    """`path` as a file, or MissingData naming the field and what it should be."""
    if not path:
        raise MissingData(f"set {field_name(task, field)} to {what}")
    file = pathlib.Path(path)
    if not file.is_file():
        raise MissingData(f"{field_name(task, field)}: no file {file} ({what})")
    return file


def require_nonempty(
    records: Sequence[dict], task: str, field: str, where: pathlib.Path, what: str
) -> None:
    """MissingData when a split came out empty (the folder holds no usable audio)."""
    if not records:
        raise MissingData(f"{field_name(task, field)}: found no {what} under {where}")
