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
import os
import pathlib
from typing import Any

import harness
import ml_collections
import numpy as np

METHODS = ("none", "top", "middle", "interleaved")


def time_to_reach(curve: list[tuple[float, int, float]], target: float) -> tuple[float, int] | None:
    """(seconds, step) of the first logged loss at or below `target`, or None."""
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
    teacher_dir = harness.ensure_tiny_teacher(pathlib.Path(args.teacher_dir).expanduser())
    runs = {}
    variants = [(m, None) for m in METHODS] + [("none", lr) for lr in args.none_learning_rates]
    for method, lr in variants:
        config = harness.tiny_student_config(method, teacher_dir, args.steps)
        name = method if lr is None else f"none, lr {lr:g}"
        config.optim.learning_rate = lr or config.optim.learning_rate
        runs[name] = harness.timed_run(config, args.workdir / name.replace(", lr ", "_lr"))
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
    plot(runs, harness.ROOT / "benchmarks" / "stacking.png", title)
    return runs


def seeds_experiment(args: argparse.Namespace) -> dict[str, Any]:
    """The four methods over several seeds (init of the new heads, batch order): mean and
    spread of the final per-target losses, so that method differences can be set against
    seed noise."""
    teacher_dir = harness.ensure_tiny_teacher(pathlib.Path(args.teacher_dir).expanduser())
    runs: dict[str, dict[str, Any]] = {}
    for seed in args.seeds:
        for method in METHODS:
            config = harness.tiny_student_config(method, teacher_dir, args.steps)
            config.seed = seed
            run = harness.timed_run(config, args.workdir / f"{method}_seed{seed}")
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
    plot(first, harness.ROOT / "benchmarks" / "stacking.png", title)
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
        c = harness.config_file("demo")
        c.teacher.name = str(args.workdir / "teacher")  # written once, shared by both runs
        c.data.path = str(args.workdir / "synth")
        c.total_steps = args.steps
        c.checkpoint_every = 10 * args.steps
        c.student.frozen_shared_frontend = shared
        _prepare_inputs(c, args.workdir)  # corpus and teacher outside the timed runs
        name = "shared frozen front-end" if shared else "own front-end"
        runs[name] = harness.timed_run(c, args.workdir / ("shared" if shared else "own"))
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
    parser.add_argument("--teacher-dir", default=str(harness.TINY_TEACHER_DIR))
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
