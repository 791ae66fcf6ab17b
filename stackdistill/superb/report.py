"""SUPERB reports: per-upstream results (markdown + JSON), layer-weight plots, comparisons."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

METRIC_NAMES = {"accuracy": "acc %", "per": "PER %", "wer": "WER %"}


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


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
        "| task | metric | test | baseline | train / test utts | steps (kept) | lr | head s |"
        " top layers (weight) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["tasks"].items():
        weights = np.asarray(r["layer_weights"])
        top = np.argsort(weights)[::-1][:3]
        top_text = ", ".join(f"{i} ({weights[i]:.2f})" for i in top)
        lines.append(
            f"| {name} | {METRIC_NAMES[r['metric']]} | {_percent(r['test'])} | "
            f"{_percent(r['baseline'])} | {r['num_train']} / {r['num_test']} | "
            f"{r['steps']} ({r['best_step']}) | {r['lr']:g} | {r['seconds']:.1f} | {top_text} |"
        )
    lines += ["", "Baseline: majority class of the training labels (accuracy), or an empty"]
    lines += ["hypothesis (PER/WER = 100%). Notes:", ""]
    lines += [f"- {name}: {r['notes']}" for name, r in results["tasks"].items()]
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
    for task in tasks:
        metric = next(r["tasks"][task]["metric"] for r in all_results if task in r["tasks"])
        cells = [
            _percent(r["tasks"][task]["test"]) if task in r["tasks"] else "—" for r in all_results
        ]
        lines.append(f"| {task} | {METRIC_NAMES[metric]} | " + " | ".join(cells) + " |")
    lines.append("")
    for r in all_results:
        info = ", ".join(f"{k} {v}" for k, v in r["upstream"]["info"].items() if v is not None)
        lines.append(f"- {r['upstream']['name']}: {r['upstream']['kind']} ({info})")
    return "\n".join(lines) + "\n"
