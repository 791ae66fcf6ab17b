"""SUPERB reports: per-upstream results (markdown + JSON), layer-weight plots, comparisons.

`superb_scores` puts the SUPERB tasks' test metrics in the units SUPERB prints and computes
superb_s (superb/score.py, the leaderboard's formula and reference points) for the
weighted-sum and the last-layer heads: the full score (None while any of the ten tasks is
missing), the score over the tasks present (labelled partial, shown only while the full one
is not there) and over the interleaved-stacking paper's four tasks.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from stackdistill.superb import score

METRIC_NAMES = {
    "accuracy": "acc %",
    "per": "PER %",
    "wer": "WER %",
    "slot_type_f1": "slot F1 %",
    "slot_value_cer": "slot CER %",
    "mtwv": "MTWV",
    "eer": "EER %",
    "der": "DER %",
}
SCORE_CAVEAT = (
    "superb_s is the SUPERB leaderboard's score: each metric mapped so that the leaderboard's "
    "FBANK row is 0 and the best upstream on that task 1000, averaged within a task, then over "
    "the ten tasks (stackdistill/superb/score.py cites the code). The leaderboard ranks by "
    "superb_r and breaks ties with superb_s."
)


def _of_selection(r: dict[str, Any], selection: str) -> dict[str, Any] | None:
    if r.get("kind") == "qbe" or r.get("layer_selection", "weighted") == selection:
        return r
    return r.get("last_layer") if selection == "last" else None


def superb_scores(task_results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per layer selection: SUPERB's values of the tasks run and superb_s (full/partial/paper)."""
    out: dict[str, Any] = {}
    # QbE trains no head: it counts under every selection a head was trained with
    headed = [r for r in task_results.values() if r.get("kind") != "qbe"]
    selections = [
        s for s in ("weighted", "last") if any(_of_selection(r, s) is not None for r in headed)
    ] or ["weighted"]
    for selection in ("weighted", "last"):
        values = {}
        for name, r in task_results.items():
            run = _of_selection(r, selection)
            if run is None or name not in score.TASKS:
                continue
            values[name] = {
                m.name: score.published(m, run["metrics"][m.name]) for m in score.metrics_of(name)
            }
        if not values or selection not in selections:
            continue
        present = score.ordered(values)
        paper = all(t in values for t in score.PAPER_TASKS)
        out[selection] = {
            "values": {t: values[t] for t in present},
            "superb_s": score.score(values),
            "missing": [list(m) for m in score.missing(values)],
            "partial_superb_s": score.score(values, tasks=present),
            "partial_tasks": present,
            "paper_superb_s": score.score(values, score.PAPER_TASKS) if paper else None,
        }
    return out


def _score_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def superb_table(scores: dict[str, Any]) -> list[str]:
    """SUPERB's columns in order, one row per layer selection, and the scores."""
    if not scores:
        return []
    tasks = score.ordered({t for s in scores.values() for t in s["values"]})
    columns = [m for t in tasks for m in score.metrics_of(t)]
    header = [f"{m.task.upper()} {METRIC_NAMES.get(m.name, m.name)}" for m in columns]
    complete = all(s["superb_s"] is not None for s in scores.values())
    extra = " superb_s |" if complete else " superb_s | partial superb_s |"
    lines = [
        "## SUPERB",
        "",
        "| features | " + " | ".join(header) + " |" + extra + " paper's 4 |",
        "|---|" + "---|" * (len(columns) + (2 if complete else 3)),
    ]
    for selection, s in scores.items():
        cells = [_value_text(m, s["values"].get(m.task, {}).get(m.name)) for m in columns]
        partial = f" {_score_text(s['partial_superb_s'])} ({', '.join(s['partial_tasks'])}) |"
        lines.append(
            f"| {selection} | "
            + " | ".join(cells)
            + f" | {_score_text(s['superb_s'])} |"
            + ("" if complete else partial)
            + f" {_score_text(s['paper_superb_s'])} |"
        )
    if not complete:
        missing = next(iter(scores.values()))["missing"]
        absent = ", ".join(dict.fromkeys(t for t, _ in missing))
        lines += ["", f"superb_s needs every task: missing {absent}."]
        lines += ["The partial score averages over the tasks listed only."]
    lines += ["", SCORE_CAVEAT, ""]
    return lines


def _value_text(metric: score.Metric, value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if metric.percent else f"{value:.4f}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _fraction(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def results_markdown(results: dict[str, Any]) -> str:
    """One upstream's results as a markdown table, with what it is and how it was run."""
    up = results["upstream"]
    info = ", ".join(f"{k} {v}" for k, v in up["info"].items() if v is not None)
    lines = [
        f"# SUPERB: {up['name']}",
        "",
        f"- upstream: {up['kind']} `{up['source']}` ({info})",
        f"- features: {results['extract_seconds']:.1f} s extraction, "
        f"{results['total_seconds']:.1f} s in all",
        "",
        "| task | metric | test | last layer | baseline | train / dev / test utts | steps (kept) |"
        " lr | head s | top layers (weight) | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["tasks"].items():
        weights = np.asarray(r["layer_weights"])
        top = np.argsort(weights)[::-1][:3]
        top_text = ", ".join(f"{i} ({weights[i]:.2f})" for i in top)
        last = r.get("last_layer")
        notes = "; ".join(r.get("deviations", []))
        notes = notes or ("as s3prl" if name in score.TASKS else "mini-SUPERB, not SUPERB")
        metric = METRIC_NAMES[r["metric"]]
        extra = {k: v for k, v in r.get("metrics", {}).items() if k != r["metric"]}
        if extra:  # SF: slot-value CER beside the F1
            metric += "".join(f", {METRIC_NAMES[k]} {_percent(v)}" for k, v in extra.items())
        shown = _percent if r["metric"] != "mtwv" else _fraction
        training = f"{r['steps']} ({r['best_step']}) | {r['lr']:g}"
        if r.get("kind") == "qbe":
            training = f"DTW, {r['layer_selection']} | —"
        lines.append(
            f"| {name} | {metric} | {shown(r['test'])} | "
            f"{shown(last['test']) if last else '—'} | {shown(r['baseline'])} | "
            f"{r['num_train']} / {r.get('num_dev', 0)} / {r['num_test']} | "
            f"{training} | {r['seconds']:.1f} | {top_text} | {notes} |"
        )
    lines += ["", "Baseline: majority class of the training labels (accuracy), or an empty"]
    lines += ["hypothesis (PER/WER = 100%). Notes:", ""]
    lines += [f"- {name}: {r['notes']}" for name, r in results["tasks"].items()]
    lines += ["", *superb_table(results.get("superb", {}))]
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out_dir: str | pathlib.Path) -> pathlib.Path:
    """Writes results.json, results.md and layer_weights.png into out_dir."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (out_dir / "results.md").write_text(results_markdown(results))
    weights = {name: r["layer_weights"] for name, r in results["tasks"].items()}
    plot_layer_weights(weights, out_dir / "layer_weights.png", results["upstream"]["name"])
    return out_dir


def plot_layer_weights(
    weights: dict[str, Sequence[float]], path: str | pathlib.Path, title: str
) -> pathlib.Path:
    """Bar chart of the learned softmax weight of every hidden state, one group per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_layers = max(len(w) for w in weights.values())
    width = 0.8 / max(len(weights), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * num_layers + 2), 3.2), dpi=120)
    for k, (task, w) in enumerate(weights.items()):
        ax.bar(np.arange(len(w)) + (k - (len(weights) - 1) / 2) * width, w, width, label=task)
    ax.axhline(1 / num_layers, color="grey", linewidth=0.8, linestyle="--", label="uniform")
    ax.set_xticks(range(num_layers))
    ax.set_xlabel("hidden state (0 = input of layer 1)")
    ax.set_ylabel("softmax weight")
    ax.set_title(f"learned layer weights: {title}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def compare_markdown(all_results: Sequence[dict[str, Any]]) -> str:
    """Upstreams side by side: one row per task, one column per upstream."""
    names = [r["upstream"]["name"] for r in all_results]
    tasks: list[str] = []
    for r in all_results:
        tasks += [t for t in r["tasks"] if t not in tasks]
    lines = [
        "# SUPERB comparison",
        "",
        "| task | metric | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for t in tasks:
        metric = next(r["tasks"][t]["metric"] for r in all_results if t in r["tasks"])
        shown = _fraction if metric == "mtwv" else _percent
        cells = [shown(r["tasks"][t]["test"]) if t in r["tasks"] else "—" for r in all_results]
        lines.append(f"| {t} | {METRIC_NAMES[metric]} | " + " | ".join(cells) + " |")
    lines.append("")
    for r in all_results:
        for selection, s in r.get("superb", {}).items():
            lines.append(
                f"- {r['upstream']['name']} ({selection}): superb_s "
                f"{_score_text(s['superb_s'])}, partial {_score_text(s['partial_superb_s'])} "
                f"over {', '.join(s['partial_tasks'])}"
            )
    for r in all_results:
        info = ", ".join(f"{k} {v}" for k, v in r["upstream"]["info"].items() if v is not None)
        lines.append(f"- {r['upstream']['name']}: {r['upstream']['kind']} ({info})")
    return "\n".join(lines) + "\n"
