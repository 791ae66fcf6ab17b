"""SUPERB's table: column order, each task's metric and direction, and the overall score.

Column order: the leaderboard's and s3prl's task table (s3prl/downstream/docs/superb.md,
"ID | Task Name | Category"): content (PR, ASR, KS, QbE), speaker (SID, ASV, SD),
paralinguistics (ER), semantics (IC, SF). The SUPERB paper's Table 3 orders its columns
differently (PR, KS, IC, SID, ER, ASR, QbE, SF, ASV, SD); the values are the same.

The overall score is superb_s of the SUPERB challenge (Feng et al., "SUPERB @ SLT 2022:
Challenge on Generalization and Efficiency of Self-Supervised Speech Representation
Learning", arXiv:2210.08634, Sec. 3): every metric is mapped linearly so that the FBANK
baseline scores 0 and the state of the art 1 (which handles lower-is-better metrics too),
metrics are averaged within a task, tasks are averaged, and the result is scaled by 1000:

    superb_s = 1000 / |T| * sum_t 1 / |I_t| * sum_i (s_ti - fbank_ti) / (sota_ti - fbank_ti)

Reference points, in the units the papers print (percent, except QbE's MTWV):
- FBANK: the SUPERB paper (Yang et al., Interspeech 2021, arXiv:2105.01051), Table 3, row
  FBANK (ASR without a language model);
- state of the art: WavLM Large, the best constrained-track upstream on most tasks, as in
  the WavLM paper (Chen et al., IEEE JSTSP 2022, arXiv:2110.13900), Table 2 (SUPERB).
These were transcribed from the papers' tables; no copy of the papers or of the leaderboard
page was reachable from this workplace to check them again, so check them against the
sources before publishing a score. The score needs every task it averages over: `score`
returns None while any is missing. Our evaluation covers 7 of the 10 tasks (QbE, ASV and SD
are not implemented), so the full leaderboard score is not computed; `score(..., tasks=...)`
averages over a subset, which must be labelled as such wherever it is shown.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping


@dataclasses.dataclass(frozen=True)
class Metric:
    """One column: the metric a task reports, its direction and its reference points."""

    task: str
    name: str
    higher_is_better: bool
    percent: bool  # printed as a percentage (our metrics are fractions: x100)
    fbank: float
    sota: float


COLUMNS = (
    Metric("pr", "per", False, True, 82.01, 3.06),
    Metric("asr", "wer", False, True, 23.18, 3.44),
    Metric("ks", "accuracy", True, True, 8.63, 97.86),
    Metric("qbe", "mtwv", True, False, 0.0058, 0.0886),
    Metric("sid", "accuracy", True, True, 8.5e-4, 95.49),
    Metric("asv", "eer", False, True, 9.56, 3.77),
    Metric("sd", "der", False, True, 10.05, 3.24),
    Metric("er", "accuracy", True, True, 35.39, 70.62),
    Metric("ic", "accuracy", True, True, 9.10, 99.31),
    Metric("sf", "slot_type_f1", True, True, 69.64, 92.21),
    Metric("sf", "slot_value_cer", False, True, 52.94, 18.36),
)
TASKS = tuple(dict.fromkeys(m.task for m in COLUMNS))  # leaderboard order
EVALUATED = ("pr", "asr", "ks", "sid", "er", "ic", "sf")  # the tasks stackdistill runs
PAPER_TASKS = ("pr", "asr", "sf", "sid")  # the interleaved-stacking paper's four


def metrics_of(task: str) -> tuple[Metric, ...]:
    """The columns of one task, in order."""
    columns = tuple(m for m in COLUMNS if m.task == task)
    if not columns:
        raise ValueError(f"unknown SUPERB task {task!r}: {list(TASKS)}")
    return columns


def published(metric: Metric, value: float) -> float:
    """A metric as a fraction (what superb/metrics.py returns) -> the units SUPERB prints."""
    return 100.0 * value if metric.percent else value


def ordered(tasks: Iterable[str]) -> list[str]:
    """The given task names in SUPERB's column order (unknown names last, as given)."""
    tasks = list(tasks)
    return [t for t in TASKS if t in tasks] + [t for t in tasks if t not in TASKS]


def normalised(metric: Metric, value: float) -> float:
    """A published-unit value mapped so that FBANK is 0 and the state of the art is 1."""
    return (value - metric.fbank) / (metric.sota - metric.fbank)


Results = Mapping[str, Mapping[str, float]]  # {task: {metric: value in published units}}


def score(results: Results, tasks: Iterable[str] = TASKS) -> float | None:
    """superb_s over `tasks`; None while any task (or any metric of one) is missing."""
    tasks = list(tasks)
    if not tasks:
        raise ValueError("the score needs at least one task")
    per_task = []
    for task in tasks:
        columns = metrics_of(task)
        values = results.get(task, {})
        if any(m.name not in values for m in columns):
            return None
        per_task.append(sum(normalised(m, values[m.name]) for m in columns) / len(columns))
    return 1000.0 * sum(per_task) / len(per_task)


def missing(results: Results, tasks: Iterable[str] = TASKS) -> list[tuple[str, str]]:
    """The (task, metric) columns of `tasks` that `results` lacks, in column order."""
    wanted = set(tasks)
    return [
        (m.task, m.name)
        for m in COLUMNS
        if m.task in wanted and m.name not in results.get(m.task, {})
    ]
