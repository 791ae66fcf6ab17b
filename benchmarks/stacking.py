"""Stacking methods on a CPU-sized run, and the shared frozen front-end on the demo.

    python benchmarks/stacking.py [--steps 240] [--teacher-dir DIR] [--workdir DIR]
    python benchmarks/stacking.py --experiment frontend [--steps 160]

`stacking` (default): the tiny trained teacher (configs/tiny_teacher.py, 6 x 192; trained
once into --teacher-dir, default $STACKDISTILL_CACHE/tiny_teacher, when missing) is
distilled on its synthetic corpus into a 12 x 96 student with none / top / middle /
interleaved stacking (3-6-9-12), the same steps, batch, seed and learning rate for each, plus
no stacking at a lower learning rate (--none-learning-rates). Reports wall-clock
(compiles included, and the step time without them), the final loss and per-target losses
(means of the last logging window), the wall-clock at which each run first logs a loss at
or below the no-stacking run's final loss, and benchmarks/stacking.png (loss vs wall-clock).

`seeds` (--seeds 0 1 2): the four methods for each seed; mean ± std of the final per-target
losses, each seed's order of the methods and when each reaches no stacking's final loss;
benchmarks/stacking.png for the first seed.

`frontend`: configs/demo.py with and without `student.frozen_shared_frontend`: step time
and the loss after the same number of steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import re
import runpy
import time
from typing import Any

import ml_collections
import numpy as np

from stackdistill import paths

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("none", "top", "middle", "interleaved")
_STEP_LINE = re.compile(r"^step (\d+): (.*)$")


class _Curve(logging.Handler):
    """Collects (seconds since start, step, metrics) from the training log's step lines."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.start = time.perf_counter()
        self.points: list[tuple[float, int, dict[str, float]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = _STEP_LINE.match(record.getMessage())
        if match:
            pairs = (kv.split("=", 1) for kv in match.group(2).split(", "))
            metrics = {k: float(v) for k, v in pairs}
            self.points.append((time.perf_counter() - self.start, int(match.group(1)), metrics))


def timed_run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, Any]:
    """train_and_evaluate with its logged losses timed; the summary plus the curve."""
    from stackdistill import train

    logger = logging.getLogger("stackdistill")
    logger.setLevel(logging.INFO)
    curve = _Curve()
    logger.addHandler(curve)
    try:
        summary = train.train_and_evaluate(config, str(workdir))
    finally:
        logger.removeHandler(curve)
    wall = time.perf_counter() - curve.start
    train_seconds = sum(summary["stage_seconds"].values())
    return {
        "wall_s": wall,
        "train_s": train_seconds,
        "step_s": train_seconds / summary["steps"],
        "final": summary["final_metrics"],
        "curve": [(t, s, m["loss"]) for t, s, m in curve.points],
    }


def _config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """configs/NAME.py's config, read by path (configs/ is not a package)."""
    return runpy.run_path(str(ROOT / "configs" / f"{name}.py"))["get_config"](arg)


def ensure_tiny_teacher(teacher_dir: pathlib.Path) -> pathlib.Path:
    """The trained tiny teacher's folder, training it first if missing."""
    if not (teacher_dir / "teacher" / "config.json").is_file():
        from stackdistill import tiny_teacher

        print(f"training the tiny teacher into {teacher_dir} (configs/tiny_teacher.py)")
        tiny_teacher.run(_config("tiny_teacher"), teacher_dir)
    return teacher_dir


def stacking_config(
    method: str, teacher_dir: pathlib.Path, steps: int
) -> ml_collections.ConfigDict:
    """12 x 96 student of the tiny teacher, targets teacher 2/4/6, stacking `method`."""
    from stackdistill.config import base_config

    c = base_config()
    c.teacher.name = str(teacher_dir / "teacher")
    c.student.update(num_layers=12, hidden_size=96, intermediate_size=384, num_heads=2)
    c.stacking.method = method
    c.distill.teacher_layers = (2, 4, 6)
    c.data.source = "synthetic"
    c.data.path = str(teacher_dir / "synth")  # the teacher's own corpus, seed 0
    c.data.max_samples = 24_000
    c.data.min_samples = 4_000
    c.total_steps = steps
    c.batch_size = 8
    c.optim.learning_rate = 2e-3
    c.optim.warmup_fraction = 0.05
    c.log_every = 10
    c.checkpoint_every = 10 * steps  # only the final one
    return c


def time_to_reach(curve: list[tuple[float, int, float]], target: float) -> tuple[float, int] | None:
    """(seconds, step) of the first logged loss at or below `target`, or None."""
    target *= 1 + 1e-4  # the log prints 5 significant digits
    return next(((t, s) for t, s, loss in curve if loss <= target), None)


def plot(runs: dict[str, dict[str, Any]], path: pathlib.Path, title: str) -> None:
    """Loss (log scale) against wall-clock seconds, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, run in runs.items():
        seconds, _, losses = zip(*run["curve"])
        ax.plot(seconds, losses, label=f"{name} ({run['wall_s']:.0f} s)")
    ax.set(xlabel="wall-clock (s, compiles included)", ylabel="training loss", yscale="log")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def stacking_experiment(args: argparse.Namespace) -> dict[str, Any]:
    """The four methods; a markdown table and the PNG."""
    teacher_dir = ensure_tiny_teacher(pathlib.Path(args.teacher_dir).expanduser())
    runs = {}
    variants = [(m, None) for m in METHODS] + [("none", lr) for lr in args.none_learning_rates]
    for method, lr in variants:
        config = stacking_config(method, teacher_dir, args.steps)
        name = method if lr is None else f"none, lr {lr:g}"
        config.optim.learning_rate = lr or config.optim.learning_rate
        runs[name] = timed_run(config, args.workdir / name.replace(", lr ", "_lr"))
        print(name, json.dumps({k: v for k, v in runs[name].items() if k != "curve"}))
    target = runs["none"]["final"]["loss"]
    print(
        f"\n| method | wall-clock s | step s (no compile) | final loss | loss/layer_2 | "
        f"loss/layer_4 | loss/layer_6 | reaches none's final loss {target:.4g} at |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for method, run in runs.items():  # method: a run's name
        f = run["final"]
        reach = time_to_reach(run["curve"], target)
        reached = f"{reach[0]:.0f} s (step {reach[1]})" if reach else "never"
        run["reaches_none_final_at"] = reach
        print(f"| {method} | {run['wall_s']:.0f} | {run['step_s']:.3f} | {f['loss']:.4g} | "
              f"{f['loss/layer_2']:.4g} | {f['loss/layer_4']:.4g} | {f['loss/layer_6']:.4g} | "
              f"{reached} |")  # fmt: skip
    title = f"tiny teacher 6x192 -> student 12x96, {args.steps} steps, batch 8"
    plot(runs, ROOT / "benchmarks" / "stacking.png", title)
    return runs


def seeds_experiment(args: argparse.Namespace) -> dict[str, Any]:
    """The four methods over several seeds (init of the new heads, batch order): mean and
    spread of the final per-target losses, so that method differences can be set against
    seed noise."""
    teacher_dir = ensure_tiny_teacher(pathlib.Path(args.teacher_dir).expanduser())
    runs: dict[str, dict[str, Any]] = {}
    for seed in args.seeds:
        for method in METHODS:
            config = stacking_config(method, teacher_dir, args.steps)
            config.seed = seed
            run = timed_run(config, args.workdir / f"{method}_seed{seed}")
            runs[f"{method}, seed {seed}"] = run
            print(method, seed, json.dumps({k: v for k, v in run.items() if k != "curve"}))
    keys = ("loss", "loss/layer_2", "loss/layer_4", "loss/layer_6")
    print(f"\n{len(args.seeds)} seeds {tuple(args.seeds)}, {args.steps} steps: mean ± std "
          "(sample) of the final losses, then each seed's order")  # fmt: skip
    print("| method | " + " | ".join(keys) + " | wall-clock s |")
    print("|---|" + "---|" * (len(keys) + 1))
    for method in METHODS:
        rows = [runs[f"{method}, seed {s}"] for s in args.seeds]
        cells = []
        for k in keys:
            v = np.array([r["final"][k] for r in rows])
            cells.append(f"{v.mean():.4g} ± {v.std(ddof=1) if len(v) > 1 else 0:.2g}")
        wall = np.mean([r["wall_s"] for r in rows])
        print(f"| {method} | " + " | ".join(cells) + f" | {wall:.0f} |")
    for seed in args.seeds:
        totals = {m: runs[f"{m}, seed {seed}"]["final"]["loss"] for m in METHODS}
        order = sorted(totals, key=totals.get)
        print(f"seed {seed}: " + " < ".join(f"{m} {totals[m]:.4g}" for m in order))
        target = totals["none"]
        reach = {m: time_to_reach(runs[f"{m}, seed {seed}"]["curve"], target) for m in METHODS}
        print(f"seed {seed}, reaches none's final loss {target:.4g} at: " + ", ".join(
            f"{m} {r[0]:.0f} s (step {r[1]})" if r else f"{m} never" for m, r in reach.items()
        ))  # fmt: skip
    first = {m: runs[f"{m}, seed {args.seeds[0]}"] for m in METHODS}
    title = f"tiny teacher 6x192 -> 12x96 student, {args.steps} steps, seed {args.seeds[0]}"
    plot(first, ROOT / "benchmarks" / "stacking.png", title)
    return runs


def _prepare_inputs(c: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    """Speaks the corpus and writes the random teacher, if missing."""
    from stackdistill import teacher
    from stackdistill.data import synth

    synth.ensure_corpus(c.data.path, c.data.synth_num, c.data.synth_seed)
    teacher.prepare(c.teacher, workdir)


def frontend_experiment(args: argparse.Namespace) -> dict[str, Any]:
    """configs/demo.py with and without the shared frozen front-end."""
    runs = {}
    for shared in (False, True):
        c = _config("demo")
        c.teacher.name = str(args.workdir / "teacher")  # written once, shared by both runs
        c.data.path = str(args.workdir / "synth")
        c.total_steps = args.steps
        c.checkpoint_every = 10 * args.steps
        c.student.frozen_shared_frontend = shared
        _prepare_inputs(c, args.workdir)  # corpus and teacher outside the timed runs
        name = "shared frozen front-end" if shared else "own front-end"
        runs[name] = timed_run(c, args.workdir / ("shared" if shared else "own"))
        print(name, json.dumps({k: v for k, v in runs[name].items() if k != "curve"}))
    own, shared = runs["own front-end"], runs["shared frozen front-end"]
    print("\n| student front-end | wall-clock s | step s (no compile) | final loss |")
    print("|---|---|---|---|")
    for name, run in runs.items():
        print(
            f"| {name} | {run['wall_s']:.0f} | {run['step_s']:.3f} | {run['final']['loss']:.4g} |"
        )
    print(f"\nstep speed-up {own['step_s'] / shared['step_s']:.2f}x")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--experiment", default="stacking", choices=["stacking", "frontend", "seeds"]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds: seeds")
    parser.add_argument("--steps", type=int, default=None, help="240 (stacking), 160 (frontend)")
    parser.add_argument("--teacher-dir", default=str(paths.cache_home() / "tiny_teacher"))
    parser.add_argument(
        "--none-learning-rates",
        type=float,
        nargs="*",
        default=[5e-4],
        help="extra no-stacking runs at these peak learning rates (a check that 'none' is "
        "not just mistuned at the shared 2e-3)",
    )
    parser.add_argument("--workdir", default="/tmp/stackdistill_bench_stacking")
    args = parser.parse_args()
    args.workdir = pathlib.Path(args.workdir) / args.experiment
    if (args.workdir).exists() and any(args.workdir.iterdir()):
        raise SystemExit(f"{args.workdir} is not empty: runs would resume; remove it first")
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    if args.experiment == "stacking":
        args.steps = args.steps or 240
        runs = stacking_experiment(args)
    elif args.experiment == "seeds":
        args.steps = args.steps or 240
        runs = seeds_experiment(args)
    else:
        args.steps = args.steps or 160
        runs = frontend_experiment(args)
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "results.json").write_text(json.dumps(runs, indent=1))
    print(f"load average {os.getloadavg()[0]:.2f}; results in {args.workdir / 'results.json'}")


if __name__ == "__main__":
    main()
