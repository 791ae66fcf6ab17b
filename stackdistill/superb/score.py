"""SUPERB's table: column order, each task's metric and direction, and the leaderboard's score.

Column order: the leaderboard's and s3prl's task table (s3prl/downstream/docs/superb.md,
"ID | Task Name | Category"): content (PR, ASR, KS, QbE), speaker (SID, ASV, SD),
paralinguistics (ER), semantics (IC, SF).

superb_s is computed as the SUPERB leaderboard computes its "Score" column on the "Paper"
subset (its default: the ten SUPERB tasks). Its code is superbbenchmark/website-react at
commit cacb90e506388db6421714d184497c11056188ca:
- frontend/src/overall_metrics.js, `interpolation` (lines 74-97): each metric becomes
  `1000 / (topline - baseline + 1e-12) * (value - baseline)`, in the units the leaderboard
  stores (percent; QbE's MTWV too, x100), so lower-is-better metrics need no flip;
  `task_aggregate` (lines 99-115): the metrics of a task (the accessor's prefix before "_":
  SF_f1 and SF_cer) are averaged, then the tasks; `score_normalizer` (lines 4-23) drops
  ASR_LM, so ASR is scored without a language model; lines 122-125 list the "Paper" columns.
- frontend/src/Data.js, `reference_points` (lines 977-992): `[baseline, topline]` per
  accessor. The baseline is the leaderboard's FBANK row (without CMVN on KS, IC, SID, ER:
  frontend/src/policy.js lines 409-415 explain why); the topline is the best upstream *per
  task* (policy.js line 340: "the existing SOTA upstream for this task"), not one model.
- frontend/src/policy.js lines 321 and 354-363: the leaderboard ranks by superb_r (the mean
  over tasks of how many listed upstreams an upstream beats) and breaks ties with superb_s;
  superb_r depends on every row on the board, so it is not computed here.
Checked on the board's own rows (superbbenchmark/superbbenchmark.github.io at commit
a35a9ec0636e6f5cb905f304d98ba0c6ab624277, src/data/public.json): FBANK 0.0, HuBERT Base
941.0, WavLM Large 1144.5 (tests/test_superb_score.py).

`score` returns None while any task it averages over (or a metric of one) is missing;
`score(..., tasks=...)` averages over a subset, which must be labelled as such where shown.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping


@dataclasses.dataclass(frozen=True)
class Metric:
    """One column: the metric a task reports, its direction and the leaderboard's references.

    `fbank` and `sota` are in our published units (percent; MTWV as a fraction); the
    leaderboard stores `key`'s values times `board_scale` (MTWV in percent).
    """

    task: str
    name: str
    higher_is_better: bool
    percent: bool  # printed as a percentage (our metrics are fractions: x100)
    fbank: float  # the leaderboard's baseline (its FBANK row)
    sota: float  # the leaderboard's topline (the best upstream on this task)
    key: str = ""  # the leaderboard's accessor, e.g. "PR_per_public"
    board_scale: float = 1.0  # published unit -> the leaderboard's unit


# website-react@cacb90e, frontend/src/Data.js lines 979-989, `reference_points`
# ([baseline, topline]); QbE's [0.58, 7.36] is MTWV in percent.
COLUMNS = (
    Metric("pr", "per", False, True, 82.01, 3.53, "PR_per_public"),
    Metric("asr", "wer", False, True, 23.18, 3.62, "ASR_wer_public"),
    Metric("ks", "accuracy", True, True, 41.3826674, 96.66, "KS_acc_public"),
    Metric("qbe", "mtwv", True, False, 0.0058, 0.0736, "QbE_mtwv_public", 100.0),
    Metric("sid", "accuracy", True, True, 20.058174, 90.3, "SID_acc_public"),
    Metric("asv", "eer", False, True, 9.56, 5.11, "SV_eer_public"),
    Metric("sd", "der", False, True, 10.05, 5.62, "SD_der_public"),
    Metric("er", "accuracy", True, True, 48.23672168, 67.62, "ER_acc_public"),
    Metric("ic", "accuracy", True, True, 9.649354219, 98.76, "IC_acc_public"),
    Metric("sf", "slot_type_f1", True, True, 69.64, 89.81, "SF_f1_public"),
    Metric("sf", "slot_value_cer", False, True, 52.94, 21.76, "SF_cer_public"),
)
TASKS = tuple(dict.fromkeys(m.task for m in COLUMNS))  # leaderboard order
EVALUATED = TASKS  # stackdistill runs all ten
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
    """A published-unit value as the leaderboard maps it, divided by 1000 (FBANK 0, SOTA 1).

    overall_metrics.js `interpolation`: 1000 / (top - base + 1e-12) * (value - base), in the
    leaderboard's units.
    """
    k = metric.board_scale
    base, top = k * metric.fbank, k * metric.sota
    return (k * value - base) / (top - base + 1e-12)


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
