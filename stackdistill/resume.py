"""The resume guard: what changed between a saved run's config and the current one.

A run that resumes from a checkpoint must be the run that wrote it. `check` compares the
two configs field by field (nested dicts flattened to dotted names) and sorts each change:
fields under a `refuse` prefix change the state's shapes or the meaning of the run and stop
the resume with one message naming every such field as `old -> new`; any other change passes
and is reported as a note. `allow` names refused fields the user changes on purpose.

`check_run` applies the distillation run's rules (README, "Resume rules"):

- refused: the student and teacher (`student.*`, `teacher.*`), stacking method, schedule and
  start depth (`stacking.*`), the distillation targets and losses (`distill.*`), the optimizer
  and its schedule (`optim.*`), what the data are and how they are cropped (`data.*` but
  the fields in RUN_FREE), stored teacher targets (`targets.*`), `seed`, `batch_size`, `dtype`;
- passed with a note: `total_steps` while the stage plan of the steps already done stays
  the same (the checkpoint's stage and every earlier one keep their steps), logging and
  checkpoint cadence, paths (`data.path`, `compilation_cache_dir`), loader threads, `mesh.*`
  (the same run up to float rounding), `remat`, `peak_flops`, `export.*`, `superb.*`.

`--config.resume_changed=field1,field2` lets named refused fields through (`allow`: all of
them); a field that changes the state's shapes still cannot be restored.
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
    """Every dotted field whose value differs, as (field, old, new), sorted by field.

    A field that one config lacks and the other leaves at None (a field added since, whose
    None keeps the old behaviour, e.g. student.conv_norm) is not a change.
    """
    a, b = flatten(old), flatten(new)
    changed = []
    for name in sorted(a.keys() | b.keys()):
        va, vb = a.get(name, _MISSING), b.get(name, _MISSING)
        if va != vb and {va, vb} != {_MISSING, None}:
            changed.append((name, va, vb))
    return changed


def _matches(name: str, prefixes: Iterable[str]) -> bool:
    return any(p == "*" or name == p or name.startswith(p + ".") for p in prefixes)


def parse_allow(value: str) -> tuple[str, ...]:
    """`resume_changed` ("a.b,c" or "allow") as prefixes for `check` ("*": every field)."""
    names = tuple(n.strip() for n in str(value or "").split(",") if n.strip())
    return ("*",) if "allow" in names else names


def check(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    refuse: Iterable[str],
    allow: Iterable[str] = (),
    what: str = "the run",
    way_out: str = "",
    free: Iterable[str] = (),
    ignore: Iterable[str] = (),
    extra_refused: Iterable[str] = (),
) -> list[str]:
    """Raises ResumeMismatch for refused changes; returns one note per change that passes.

    `free` fields pass although a `refuse` prefix covers them; `ignore` fields are not
    compared; `extra_refused` lines (from rules beyond a prefix) join the refused ones.
    """
    refuse, allow, free, ignore = tuple(refuse), tuple(allow), tuple(free), tuple(ignore)
    refused, notes = list(extra_refused), []
    for name, va, vb in diff(old, new):
        if _matches(name, ignore):
            continue
        line = f"{name}: {va!r} -> {vb!r}"
        if _matches(name, refuse) and not _matches(name, free) and not _matches(name, allow):
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


# The distillation run's rules (module docstring; README "Resume rules").
RUN_REFUSE = (
    "student",
    "teacher",
    "stacking",
    "distill",
    "optim",
    "data",
    "targets",
    "seed",
    "batch_size",
    "dtype",
)
RUN_FREE = ("data.path", "data.num_workers", "data.read_threads", "data.label_keys")
RUN_IGNORE = ("resume_changed", "total_steps")  # total_steps: its own rule, `_total_steps`


def _total_steps(saved: Mapping[str, Any], new: Mapping[str, Any], step: int, stage: int):
    """(refused line or None, note or None) for a changed total_steps."""
    from ml_collections import ConfigDict

    from stackdistill import stacking

    old_total, new_total = saved.get("total_steps"), new.get("total_steps")
    if old_total == new_total:
        return None, None
    line = f"total_steps: {old_total!r} -> {new_total!r}"
    if new_total < step:
        return f"{line} (the checkpoint is at step {step})", None
    final = int(new["student"]["num_layers"])
    try:
        before = stacking.plan_stages(ConfigDict(saved["stacking"]), old_total, final)
        after = stacking.plan_stages(ConfigDict(new["stacking"]), new_total, final)
    except ValueError as e:
        return f"{line} ({e})", None
    kept = len(after) > stage and before[:stage] == after[:stage]
    kept = kept and after[stage].start_step == before[stage].start_step
    kept = kept and after[stage].end_step >= step
    if not kept:
        bounds = [s.start_step for s in after[1:]]
        return f"{line} (moves the stage boundaries the run has passed: now {bounds})", None
    return None, f"{line} (the stages done so far keep their steps)"


def check_run(
    saved: Mapping[str, Any], new: Mapping[str, Any], *, step: int, stage: int, workdir: str
) -> list[str]:
    """The distillation run's guard: raises ResumeMismatch or returns the notes of changes.

    `step` and `stage` are the latest checkpoint's; `new["resume_changed"]` names the refused
    fields let through on purpose.
    """
    allow = parse_allow(new.get("resume_changed", ""))
    refused_steps, steps_note = _total_steps(saved, new, step, stage)
    if refused_steps and _matches("total_steps", allow):
        refused_steps, steps_note = None, refused_steps
    way_out = (
        "To train a different run, use a new --workdir. To change these fields on purpose, "
        "add --config.resume_changed="
        + ",".join(_refused_names(saved, new, refused_steps, allow))
        + " (fields that change the state's shapes cannot be restored even then)."
    )
    notes = check(
        saved,
        new,
        refuse=RUN_REFUSE,
        allow=allow,
        free=RUN_FREE,
        ignore=RUN_IGNORE,
        extra_refused=[refused_steps] if refused_steps else [],
        what=f"the run in {workdir} (checkpoint at step {step})",
        way_out=way_out,
    )
    return ([steps_note] if steps_note else []) + notes


def _refused_names(saved, new, refused_steps, allow) -> list[str]:
    names = [
        n
        for n, _, _ in diff(saved, new)
        if _matches(n, RUN_REFUSE) and not _matches(n, RUN_FREE + RUN_IGNORE + tuple(allow))
    ]
    return (["total_steps"] if refused_steps else []) + names


def guard(config: Any, workdir: Any) -> tuple[int, dict[str, Any]] | None:
    """(step, meta) of the workdir's newest checkpoint once `check_run` lets `config` resume
    it (its notes logged), or None for a new run; reads the checkpoint's JSON only."""
    import logging

    from stackdistill import checkpoint

    latest = checkpoint.latest_run(workdir)
    if latest is None:
        return None
    step, meta, saved = latest
    stage = int(meta["stage"])
    for note in check_run(saved, config.to_dict(), step=step, stage=stage, workdir=str(workdir)):
        logging.getLogger("stackdistill").info("resume: %s", note)
    return step, meta
