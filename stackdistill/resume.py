"""The resume guard: what changed between a saved run's config and the current one.

A run that resumes from a checkpoint must be the run that wrote it. `check` compares the
two configs field by field (nested dicts flattened to dotted names) and sorts each change:
fields under a `refuse` prefix change the state's shapes or the meaning of the run and stop
the resume with one message naming every such field as `old -> new`; any other change passes
and is reported as a note. `allow` names refused fields the user changes on purpose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

_MISSING = "<unset>"


class ResumeMismatch(ValueError):
    """The current config changes fields that the saved run cannot continue with."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and tuples are compared as lists."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """Every dotted field whose value differs, as (field, old, new), sorted by field."""
    a, b = flatten(old), flatten(new)
    changed = []
    for name in sorted(a.keys() | b.keys()):
        va, vb = a.get(name, _MISSING), b.get(name, _MISSING)
        if va != vb:
            changed.append((name, va, vb))
    return changed


def _matches(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def check(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    refuse: Iterable[str],
    allow: Iterable[str] = (),
    what: str = "the run",
    way_out: str = "",
) -> list[str]:
    """Raises ResumeMismatch for refused changes; returns one note per change that passes."""
    refuse, allow = tuple(refuse), tuple(allow)
    refused, notes = [], []
    for name, va, vb in diff(old, new):
        line = f"{name}: {va!r} -> {vb!r}"
        if _matches(name, refuse) and not _matches(name, allow):
            refused.append(line)
        else:
            notes.append(line)
    if refused:
        lines = "\n".join(f"  {r}" for r in refused)
        raise ResumeMismatch(
            f"cannot resume {what}: the config changes {len(refused)} field(s) it was "
            f"started with:\n{lines}\n{way_out}".rstrip()
        )
    return notes
