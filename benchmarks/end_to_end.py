"""End to end against the 2x target: whole distillation runs, wall-clock to equal loss.

    python benchmarks/end_to_end.py [--teacher=demo|big|tiny] [--steps=240] [--crop=16000] \
        [--runs="none + live teacher,interleaved + shared + fixed-crop targets"]

Runs of --steps steps on --crop-sample crops: no stacking + live teacher (the baseline, always
the first run) against interleaved stacking with the live teacher, + shared front-end,
+ stored fixed-crop targets, + stored whole-utterance targets. Every run's student is scored
the same way at every checkpoint (steps/6 apart): the paper loss against the live teacher on
32 fixed crops.
Reports wall-clock (compiles included; the targets build is added where there is one), step time
without compiles, and when each run first reaches the baseline's final eval loss.
--teacher: the demo's random teacher (configs/demo.py), the bigger random pair of
benchmarks/targets.py --big, or the trained tiny teacher (benchmarks/harness.py).
Results go to stdout as a markdown table and to WORKDIR/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

import harness
import numpy as np


def live_reference(c, workdir: pathlib.Path, num_crops: int = 32):
    """32 fixed crops of the corpus and the live teacher's output on them (computed once)."""
    from stackdistill import models, teacher
    from stackdistill.data import audio, sources

    t_cfg, t_params = teacher.load(teacher.prepare(c.teacher, workdir))
    records = sources.open_source(c.data)[0]
    m = c.data.max_samples
    rng = np.random.default_rng(12345)  # crops of their own (the corpus has no held-out set)
    picks = rng.choice(len(records), num_crops, replace=False)
    wav = np.zeros((num_crops, m), np.float32)
    lengths = np.zeros(num_crops, np.int32)
    for row, index in enumerate(picks):
        samples = audio.load(records[int(index)], rng, m)
        wav[row, : len(samples)], lengths[row] = samples, len(samples)
    return wav, lengths, models.encode(t_cfg, t_params, wav, lengths)


def eval_loss(c, run_dir: pathlib.Path, reference, step: int | None = None) -> float:
    """Paper loss of a run's student (at `step`, default the last) against the live teacher
    on the crops of `live_reference`."""
    from stackdistill import checkpoint, losses
    from stackdistill.models import student

    wav, lengths, live = reference
    s_cfg, params, meta = checkpoint.load_student(run_dir, step)
    out = student.apply_encoder(s_cfg, params["encoder"], wav, lengths)
    src = {int(k): int(v) for k, v in meta["target_sources"].items()}
    preds = student.predict(params["heads"], out.hidden_states, src)
    loss, _ = losses.paper_loss(
        preds, live.hidden_states, live.mask, int(c.distill.teacher_layers[-1]), 0.5
    )
    return float(loss)


E2E = {
    "none + live teacher": dict(method="none"),
    "interleaved + live teacher": dict(method="interleaved"),
    "interleaved + shared front-end": dict(method="interleaved", shared=True),
    "interleaved + shared + fixed-crop targets": dict(
        method="interleaved", shared=True, targets="fixed_crop"
    ),
    "interleaved + shared + whole targets": dict(
        method="interleaved", shared=True, targets="whole"
    ),
}


def e2e_config(workdir: pathlib.Path, teacher: str, method: str, steps: int, crop: int):
    """The e2e runs' config: the demo's random teacher (demo, big) or the trained tiny one."""
    if teacher == "tiny":
        teacher_dir = harness.ensure_tiny_teacher(harness.TINY_TEACHER_DIR)
        c = harness.tiny_student_config(method, teacher_dir, steps)
        c.data.max_samples = crop
        return c
    overrides = {"total_steps": steps, "stacking.method": method, "data.max_samples": crop}
    return harness.demo_config(workdir, big=teacher == "big", **overrides)


def end_to_end(
    workdir: pathlib.Path, steps: int, crop: int, names: list[str], teacher: str = "demo"
) -> list[dict]:
    """Whole runs: wall time (with and without compiles), train and eval loss, and when each
    run's student first reaches the first run's final eval loss (checkpoints every steps/6)."""
    import tensorboardX  # noqa: F401  (imports torch when present: not charged to the first run)

    from stackdistill import targets

    rows, curves, reference = [], [], None
    every = max(steps // 6, 1)
    for label in names:
        v = E2E[label]
        c = e2e_config(workdir, teacher, v["method"], steps, crop)
        c.student.frozen_shared_frontend = v.get("shared", False)
        c.checkpoint_every, c.keep_checkpoints = every, steps // every + 1
        build = 0.0
        if "targets" in v:
            c.targets.dir = str(workdir / f"targets_{teacher}_{v['targets']}_{crop}")
            c.targets.mode = v["targets"]
            build = targets.build(c, workdir)["build_seconds"]
        name = f"{label.replace(' + ', '+').replace(' ', '_')}_{teacher}_{steps}_{crop}"
        run_dir = workdir / "runs" / name
        run = harness.timed_run(c, run_dir)
        at = {s: t for t, s, _ in run["curve"]}  # seconds since the start at each logged step
        reference = reference or live_reference(c, workdir)  # same teacher and crops for all
        evals = [(build + at[s], s, eval_loss(c, run_dir, reference, step=s))
                 for s in range(every, steps + 1, every) if s in at]  # fmt: skip
        curves.append(evals)
        rows.append(
            {
                "run": label,
                "wall s": round(run["wall_s"], 1),
                "step s (no compile)": round(run["train_s"], 1),
                "targets build s": round(build, 1),
                "final train loss": round(run["final"]["loss"], 4),
                "eval loss vs live teacher": round(evals[-1][2], 4),
                "eval losses": " ".join(f"{e:.4g}" for _, _, e in evals),
            }
        )
    base, target = rows[0], curves[0][-1][2]
    for row, evals in zip(rows, curves):
        wall = row["wall s"] + row["targets build s"]
        row["speed-up (wall+build)"] = round(base["wall s"] / wall, 2)
        row["speed-up (steps)"] = round(base["step s (no compile)"] / row["step s (no compile)"], 2)
        hit = next(((t, s) for t, s, e in evals if e <= target), None)
        row[f"reaches {target:.4g} at"] = f"{hit[0]:.0f} s (step {hit[1]})" if hit else "no"
        row["speed-up to that loss"] = round(curves[0][-1][0] / hit[0], 2) if hit else ""
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/bench_e2e")
    parser.add_argument("--teacher", default="demo", choices=["demo", "big", "tiny"])
    parser.add_argument("--steps", type=int, default=240, help="steps per run")
    parser.add_argument("--crop", type=int, default=16000, help="max_samples of every run")
    parser.add_argument("--runs", default=",".join(E2E), help="comma-separated, baseline first")
    args = parser.parse_args()
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    uptime = os.popen("uptime").read().strip()
    rows = end_to_end(workdir, args.steps, args.crop, args.runs.split(","), args.teacher)
    print(harness.table(rows), flush=True)
    results = {"uptime_before": uptime, "uptime_after": os.popen("uptime").read().strip(),
               "args": vars(args), "e2e": rows}  # fmt: skip
    print(results["uptime_before"], "|", results["uptime_after"])
    (workdir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
