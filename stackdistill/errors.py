"""What the command line says when a command cannot go on: one `error:` line and what to do.

The messages of the faults a person meets around a run (README, "Faults"): a flag that names
no config field or a config file that does not exist, a folder that cannot be written, a
full disk. Library code raises ordinary exceptions; `main` turns them into these lines.
"""

from __future__ import annotations

import difflib
import errno
import os
from collections.abc import Mapping, Sequence
from typing import Any


class RunError(RuntimeError):
    """A fault the message of which already says what happened and what to do."""


def nearest_field(config: Mapping[str, Any], dotted: str) -> tuple[str, str | None]:
    """(the first unknown prefix of `dotted` in `config`, the nearest existing field or None).

    `("studnet", "student")` for `studnet.hidden_size`; `("", None)` when the field exists.
    """
    node: Any = config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, Mapping):
            return ".".join(parts[: i + 1]), None
        if part in node:
            node = node[part]
            continue
        close = difflib.get_close_matches(part, [str(k) for k in node], n=1, cutoff=0.5)
        prefix = ".".join(parts[:i])
        unknown = f"{prefix}.{part}" if prefix else part
        nearest = f"{prefix}.{close[0]}" if close and prefix else (close[0] if close else None)
        return unknown, nearest
    return "", None


def unknown_override(argv: Sequence[str], config: Mapping[str, Any]) -> str | None:
    """The message for the first `--config.a.b=v` flag of argv that names no field, or None."""
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        flag = arg.split("=", 1)[0]
        unknown, nearest = nearest_field(config, flag[len("--config.") :])
        if unknown:
            hint = f"; did you mean config.{nearest}?" if nearest else ""
            return f"{flag}: the config has no field {unknown}{hint}"
    return None


def config_flag(argv: Sequence[str]) -> str | None:
    """The value of `--config=FILE[:arg]` (or `--config FILE[:arg]`) in argv, or None."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def config_file_message(argv: Sequence[str]) -> str | None:
    """The message for a `--config=FILE[:arg]` whose file does not exist, or None."""
    value = config_flag(argv)
    if value is None:
        return None
    path = value.split(":", 1)[0]
    return None if os.path.isfile(path) else f"--config={value}: no config file {path}"


def os_error_message(e: OSError, workdir: str) -> str:
    """One line naming the path and the fact (not writable, a file in the way), and what to do."""
    path = e.filename or workdir
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = "read-only file system" if e.errno == errno.EROFS else "permission denied"
        return f"cannot write {path}: {what}.\nName a folder you can write, or fix its rights."
    if isinstance(e, NotADirectoryError) or e.errno == errno.ENOTDIR:
        return f"{path}: a file is in the way of a folder.\nName a folder, or move that file."
    if isinstance(e, FileExistsError) or e.errno == errno.EEXIST:
        return f"{path} exists and is not a folder.\nName another path, or move it."
    if isinstance(e, IsADirectoryError):
        return f"{path} is a folder where a file is expected.\nName a file."
    return f"{path}: {e.strerror or e}.\nCheck that path and run the command again."


def no_space_message(e: BaseException, workdir: str, last_checkpoint: int | None) -> str:
    """One line: the disk of the workdir (or of the file named) is full, and the last good
    checkpoint, which a rerun resumes from once space is freed."""
    path = getattr(e, "filename", None) or workdir
    kept = (
        f"the last good checkpoint is step {last_checkpoint}"
        if last_checkpoint is not None
        else "no checkpoint was saved yet"
    )
    return (
        f"no space left on device in {_folder_of(str(path), workdir)} ({kept}).\n"
        "Free space there and run the same command again: the run resumes."
    )


def is_no_space(e: BaseException) -> bool:
    """Whether `e` (or what it was raised from) is a full disk."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(e) or "[os_error_code='28']" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _folder_of(path: str, workdir: str) -> str:
    """The workdir when `path` lies in it (the run's folder is what a person frees)."""
    try:
        if os.path.commonpath([os.path.abspath(path), os.path.abspath(workdir)]) == os.path.abspath(
            workdir
        ):
            return workdir
    except ValueError:
        pass
    return str(path)
