"""Where stackdistill keeps its files between runs: one root, one folder per kind."""

from __future__ import annotations

import os
import pathlib


def cache_home() -> pathlib.Path:
    """The root of everything kept between runs: $STACKDISTILL_CACHE or ~/.cache/stackdistill."""
    return pathlib.Path(os.environ.get("STACKDISTILL_CACHE", "~/.cache/stackdistill")).expanduser()


def teachers_dir() -> pathlib.Path:
    """Converted teachers (orbax params keyed by their source files), read by `teacher.load`."""
    return cache_home() / "teachers"
