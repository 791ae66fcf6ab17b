"""The statistics, table and plot of benchmarks/paper_table.py (from its cell records).

Means over seeds carry a 95% Student-t interval; paired comparisons take the per-seed
differences of two rows (same seeds, so the seed's own effect cancels) and report their mean,
t interval, two-sided p-value and how many seeds each side wins.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

# name, label, scale, higher is better
METRICS = (
    ("pr_per", "PR PER %", 100.0, False),
    ("sid_acc", "SID acc %", 100.0, True),
    ("ks_acc", "KS acc %", 100.0, True),
    ("score", "score", 1.0, True),
    ("loss", "loss", 1.0, False),
    ("wall_s", "time s", 1.0, False),
    ("steps_s", "steps s", 1.0, False),
    ("compile_s", "compiles s", 1.0, False),
    ("profile_r", "profile r", 1.0, True),
    ("cka_diag", "CKA diag", 1.0, True),
)
PAIRED = ("score", "pr_per", "sid_acc", "ks_acc", "loss", "wall_s", "cka_diag", "profile_r")


def superb_score(scores: Mapping[str, float]) -> float:
    """Mini-SUPERB score: the mean of KS accuracy, SID accuracy and 1 - PER, in percent."""
    return 100.0 * (scores["ks_acc"] + scores["sid_acc"] + (1.0 - scores["pr_per"])) / 3.0


def relative_depth_index(num_student_layers: int, num_teacher_layers: int) -> list[int]:
    """For each teacher hidden state k, the student hidden state at the same relative depth."""
    return [
        round(k * num_student_layers / num_teacher_layers) for k in range(num_teacher_layers + 1)
    ]


def profile_correlation(
    student: Mapping[str, Sequence[float]], teacher: Mapping[str, Sequence[float]], match
) -> float | None:
    """Mean over probes of the Pearson r between the teacher's per-layer profile and the
    student's at the same relative depths (None if a profile is flat)."""
    rs = []
    for name, t in teacher.items():
        s = np.asarray(student[name])[list(match)]
        if np.std(s) > 0 and np.std(t) > 0:
            rs.append(float(np.corrcoef(s, t)[0, 1]))
    return float(np.mean(rs)) if rs else None


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean and Student-t interval over seeds (None with a single value)."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    out: dict[str, Any] = {"mean": float(v.mean()) if len(v) else None, "values": list(values)}
    out["ci"] = None
    if len(v) > 1:
        half = scipy_stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
        out["ci"] = [float(v.mean() - half), float(v.mean() + half)]
    return out


def paired(a: Sequence[float], b: Sequence[float], higher_is_better: bool) -> dict[str, Any]:
    """Paired comparison a - b over the same seeds: mean, t interval, t, p, wins of a."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    wins = int(np.sum(d > 0) if higher_is_better else np.sum(d < 0))
    out: dict[str, Any] = {"n": len(d), "mean": float(d.mean()), "wins": wins, "diffs": d.tolist()}
    out.update(ci=None, t=None, p=None)
    if len(d) > 1:
        se = d.std(ddof=1) / math.sqrt(len(d))
        out["ci"] = [
            float(x)
            for x in d.mean() + np.array([-1, 1]) * scipy_stats.t.ppf(0.975, len(d) - 1) * se
        ]
        if se > 0:
            out["t"] = float(d.mean() / se)
            out["p"] = float(2 * scipy_stats.t.sf(abs(out["t"]), len(d) - 1))
    return out


def cell_metrics(record: Mapping[str, Any]) -> dict[str, float | None]:
    """The numbers of one cell that the table averages."""
    diag = record["cka_diagonal"][1:]
    return {
        **{k: record["downstream"][k] for k in ("pr_per", "sid_acc", "ks_acc", "score")},
        "loss": record["final_losses"]["loss"],
        **{k: record[k] for k in ("wall_s", "steps_s", "compile_s", "profile_r")},
        "cka_diag": float(np.mean(diag)) if diag else None,
    }


def train_seconds(record: Mapping[str, Any]) -> float:
    """A cell's distillation wall-clock without its compiles (set-up, steps, checkpoints)."""
    return record["wall_s"] - record["compile_s"]


def _time_to(record: Mapping[str, Any], target: float) -> float | None:
    """Seconds (wall-clock less compiles) to the first scored checkpoint at or above `target`,
    or None if none reaches it."""
    return next(
        (e.get("train_s", e["wall_s"]) for e in record["evals"] if e["score"] >= target - 1e-9),
        None,
    )


def _flattening(records: Sequence[Mapping[str, Any]], steps: int) -> float | None:
    """Relative fall of the logged loss from 70-80% to 90-100% of the steps (0: flat)."""
    falls = []
    for r in records:
        curve = np.array([(s, loss) for _, s, loss in r["curve"]]).reshape(-1, 2)
        early = curve[(curve[:, 0] > 0.7 * steps) & (curve[:, 0] <= 0.8 * steps), 1]
        late = curve[curve[:, 0] > 0.9 * steps, 1]
        if len(early) and len(late):
            falls.append(float((early.mean() - late.mean()) / early.mean()))
    return float(np.mean(falls)) if falls else None


def summarise(records: Sequence[Mapping[str, Any]], teacher: Mapping[str, Any], spec) -> dict:
    """Rows (mean [CI] over seeds), paired comparisons, time to Full's quality.

    Rows of a recipe (cell field `recipe`) are measured against that recipe's own Full row:
    speed-ups, time to its quality and the paired comparisons stay within a recipe.
    """
    by_row: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        by_row.setdefault(r["row"], []).append(r)
    rows = []
    for name, rs in by_row.items():
        per_cell = [cell_metrics(r) for r in rs]
        first = rs[0]
        row = {k: first.get(k, "") for k in ("method", "schedule", "ablation", "recipe")}
        row.update(row=name, seeds=[r["seed"] for r in rs])
        row["metrics"] = {k: mean_ci([m[k] for m in per_cell]) for k, *_ in METRICS}
        rows.append(row)
    out: dict[str, Any] = {"teacher": teacher, "rows": rows, "full_target": None}
    out["recipe_targets"], out["paired"] = {}, []
    for recipe in dict.fromkeys(row["recipe"] for row in rows):
        group = [row for row in rows if row["recipe"] == recipe]
        full = next((r for r in group if r["method"] == "full" and not r["ablation"]), None)
        if full is not None:
            target = full["metrics"]["score"]["mean"]
            if recipe:
                out["recipe_targets"][recipe] = target
            else:
                out["full_target"] = target
                out["full_flattening"] = _flattening(by_row[full["row"]], spec.steps)
            for row in group:
                row["speedup_wall"] = (
                    full["metrics"]["wall_s"]["mean"] / row["metrics"]["wall_s"]["mean"]
                )
                row["speedup_steps"] = (
                    full["metrics"]["steps_s"]["mean"] / row["metrics"]["steps_s"]["mean"]
                )
                row["time_to_full"] = [_time_to(r, target) for r in by_row[row["row"]]]
        plain = [row for row in group if not row["ablation"]]
        base = next((row for row in plain if row["method"] == "interleaved"), None)
        pairs = [
            (a, b)
            for a in plain
            if a["method"] == "interleaved"
            for b in plain
            if b["method"] != "interleaved"
        ]
        pairs += [(row, base) for row in group if row["ablation"] and base is not None]
        dp_row = next((row for row in plain if row["method"] == "dp"), None)
        if dp_row is not None:  # a DP variant (dp_*) against DP itself
            pairs += [(row, dp_row) for row in plain if row["method"].startswith("dp_")]
        if recipe and full is not None:  # a recipe's lever row against its Full as well
            pairs += [(row, full) for row in group if row["ablation"]]
        out["paired"] += [_compare(a, b) for a, b in pairs]
    out["dp"] = {}  # DP's own facts per DP row: sizes, stage seconds (paper_table.train_dp_cell)
    for name, rs in by_row.items():
        dp = [r for r in rs if "dp" in r]
        if not dp:
            continue
        out["dp"][name] = {
            "seeds": [r["seed"] for r in dp],
            "target_sparsity": dp[0]["dp"]["target_sparsity"],
            "params_after": mean_ci([r["dp"]["params"]["params_after"] for r in dp]),
            "params_before": dp[0]["dp"]["params"]["params_before"],
            "depth": dp[0]["dp"].get("depth"),  # {"pruned", "final"}; None: not recorded
            "sparsity": mean_ci([r["dp"]["params"]["sparsity"] for r in dp]),
            **{
                f"{stage}_s": mean_ci([r["dp"]["stage_seconds"][stage] for r in dp])
                for stage in ("prune", "pruned", "final")
            },
            **{
                f"{stage}_compile_s": mean_ci([r["dp"]["compile_seconds"][stage] for r in dp])
                for stage in ("prune", "final")
            },
            "score_pruned": mean_ci([r["evals"][0]["score"] for r in dp]),
        }
    return out


def _compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Row a against row b, paired by the seeds both have."""
    seeds = [s for s in a["seeds"] if s in b["seeds"]]
    comparison: dict[str, Any] = {"a": a["row"], "b": b["row"], "seeds": seeds}
    for key in PAIRED:
        higher = next(h for k, _, _, h in METRICS if k == key)
        va = [a["metrics"][key]["values"][a["seeds"].index(s)] for s in seeds]
        vb = [b["metrics"][key]["values"][b["seeds"].index(s)] for s in seeds]
        kept = [(x, y) for x, y in zip(va, vb) if x is not None and y is not None]
        comparison[key] = paired(*zip(*kept), higher) if kept else None
    return comparison


def _fmt(m: Mapping[str, Any] | None, scale: float, digits: int) -> str:
    if not m or m["mean"] is None:
        return "-"
    text = f"{m['mean'] * scale:.{digits}f}"
    if m["ci"] is not None:
        text += f" [{m['ci'][0] * scale:.{digits}f}, {m['ci'][1] * scale:.{digits}f}]"
    return text


def _digits(key: str) -> int:
    return 2 if key in ("profile_r", "cka_diag") else 3 if key == "loss" else 1


def markdown(table: Mapping[str, Any], spec) -> str:
    """The table in the paper's shape, then the paired comparisons."""
    student = dict(spec.student)
    lines = [
        f"Student {student['num_layers']} x {student['hidden_size']}, {spec.steps} steps of "
        f"batch {spec.batch_size} x {spec.max_samples / 16000:.1f} s for every cell, seeds "
        f"{tuple(spec.seeds)}; mean [95% t interval over seeds]. Score = mean(KS acc, SID acc, "
        "1 - PER) %. Time = the distillation call's wall-clock (steps + compiles + set-up).",
        "",
        "| method | "
        + " | ".join(label for _, label, _, _ in METRICS)
        + " | speed-up vs Full (wall / steps) | time to Full's quality s |",
        "|---|" + "---|" * (len(METRICS) + 2),
    ]
    t = table["teacher"]["downstream"]
    lines.append(
        f"| Teacher | {100 * t['pr_per']:.1f} | {100 * t['sid_acc']:.1f} | {100 * t['ks_acc']:.1f} "
        f"| {t['score']:.1f} |" + " - |" * (len(METRICS) - 2)
    )
    for row in table["rows"]:
        cells = [_fmt(row["metrics"][k], scale, _digits(k)) for k, _, scale, _ in METRICS]
        speed = "-"
        if "speedup_wall" in row:
            speed = f"{row['speedup_wall']:.2f}x / {row['speedup_steps']:.2f}x"
        reach = row.get("time_to_full")
        reached = (
            "-" if reach is None else ", ".join("never" if x is None else f"{x:.0f}" for x in reach)
        )
        lines.append(f"| {row['row']} | " + " | ".join(cells) + f" | {speed} | {reached} |")
    if table.get("full_target") is not None:
        lines += [
            "",
            f"Full's final score (the quality to reach): {table['full_target']:.1f}; Full's "
            f"loss falls {100 * (table.get('full_flattening') or 0):.1f}% from 70-80% to "
            "90-100% of the steps (0: flat). Time to Full's quality: per seed, the wall-clock "
            "less compiles of the first scored checkpoint "
            f"({', '.join(f'{f:g}' for f in spec.eval_fractions)}"
            " of the steps) at or above it.",
        ]
    if table.get("recipe_targets"):
        finals = ", ".join(f"{k} {v:.1f}" for k, v in table["recipe_targets"].items())
        lines += [
            "",
            "Recipe rows (RECIPE: ...) are measured against their own recipe's Full row: "
            f"speed-up and time to that row's final score ({finals}).",
        ]
    for name, d in (table.get("dp") or {}).items():
        depth = d.get("depth") or {}
        grown = depth.get("pruned") not in (None, depth.get("final"))
        what = (
            f"one in {depth['final'] // depth['pruned']} of the teacher's layers "
            f"({d['params_before']} params, their count) pruned and grown back to "
            f"{depth['final']} layers by interleaved stacking, at"
            if grown
            else f"the teacher ({d['params_before']} params, their count) pruned to"
        )
        lines += [
            "",
            f"{name}: {what} "
            f"{_fmt(d['params_after'], 1, 0)} params (sparsity {_fmt(d['sparsity'], 1, 3)}, "
            f"target {d['target_sparsity']:.3f}); seconds per stage: prune "
            f"{_fmt(d['prune_s'], 1, 1)} (compile {_fmt(d['prune_compile_s'], 1, 1)}), prune "
            f"step {_fmt(d['pruned_s'], 1, 2)}, final distillation {_fmt(d['final_s'], 1, 1)} "
            f"(compile {_fmt(d['final_compile_s'], 1, 1)}). Score of the pruned model before "
            f"the final distillation: {_fmt(d['score_pruned'], 1, 1)}. Their loss (L1 - cosine) "
            "is not the table's: its loss column is empty.",
        ]
    if table["paired"]:
        lines += [
            "",
            "Paired by seed, a - b: mean [95% t interval] (p, two-sided; wins of a / seeds).",
            "",
            "| a | b | " + " | ".join(PAIRED) + " |",
            "|---|---|" + "---|" * len(PAIRED),
        ]
        for c in table["paired"]:
            cells = []
            for key in PAIRED:
                scale = next(s for k, _, s, _ in METRICS if k == key)
                p = c[key]
                if p is None:  # no seed with both values (a flat profile)
                    cells.append("-")
                    continue
                d = _digits(key)
                text = f"{p['mean'] * scale:+.{d}f}"
                if p["ci"] is not None:
                    text += f" [{p['ci'][0] * scale:+.{d}f}, {p['ci'][1] * scale:+.{d}f}]"
                if p["p"] is not None:
                    text += f" (p {p['p']:.2f})"
                cells.append(f"{text} {p['wins']}/{p['n']}")
            lines.append(f"| {c['a']} | {c['b']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(
    table: Mapping[str, Any], records: Sequence[Mapping[str, Any]], path: pathlib.Path
) -> None:
    """Left: final score vs wall-clock, one point per cell; right: loss curves (first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^v<>ph*"
    for i, row in enumerate(table["rows"]):
        rs = [r for r in records if r["row"] == row["row"]]
        style = dict(color=colours[i % len(colours)], marker=markers[i % len(markers)])
        left.scatter(
            [train_seconds(r) for r in rs],
            [r["downstream"]["score"] for r in rs],
            label=row["row"],
            **style,
        )
        if not rs[0]["curve"]:  # a row trained with another loss (DP) has none here
            continue
        _, steps, losses = zip(*rs[0]["curve"])
        right.plot(
            steps, losses, color=style["color"], label=f"{row['row']} (seed {rs[0]['seed']})"
        )
    if table.get("full_target") is not None:
        left.axhline(table["full_target"], color="gray", linestyle="--", linewidth=0.8)
    left.set(xlabel="distillation wall-clock s, compiles excluded", ylabel="mini-SUPERB score")
    right.set(xlabel="step", ylabel="training loss", yscale="log")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
