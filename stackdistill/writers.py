"""Run reporting from process 0: TensorBoard events, console lines, metrics.jsonl, summary.json
and the loss plot.

clu's metric writers import TensorFlow, so the event files are written with tensorboardX.
WORKDIR/metrics.jsonl holds the run's numbers for programs (benchmarks/ reads it, never the
console): one JSON object per line, full float precision, `time` in Unix seconds; a log window
is `{"step", "time", <metric>: value, ...}`, a stage's compile `{"step", "time", "stage",
"compile_s"}`. A resumed run appends; the steps a killed run logged after its last checkpoint
then appear twice, and the later line is the one that counts.
Every method is a no-op on other processes.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from etils import epath

log = logging.getLogger("stackdistill")


class RunWriter:
    """Scalars to TensorBoard and metrics.jsonl, one console line per log window, a progress
    bar, the report.

    The run's record (loss history, last metrics, seconds per stage, compile seconds per
    stage) is kept on every
    process, starts from `past` (what a checkpoint kept) and goes into each checkpoint's
    metadata, so a resumed run reports all its steps.
    """

    def __init__(
        self,
        workdir: str | pathlib.Path,
        total_steps: int,
        first_step: int = 0,
        past: Mapping[str, Any] | None = None,
    ):
        past = past or {}
        self.active = jax.process_index() == 0
        self.workdir = epath.Path(workdir)  # local or gs://
        # (step, loss) for the plot; a checkpoint's record may hold steps a killed process
        # logged after it: those steps run again.
        self.history: list[tuple[int, float]] = [
            (int(s), float(v)) for s, v in past.get("loss_history", []) if s <= first_step
        ]
        self.last: dict[str, float] = dict(past.get("last_metrics", {}))
        self.stage_seconds: dict[str, float] = dict(past.get("stage_seconds", {}))
        # A resumed stage compiles again: its compile seconds add up, like its step seconds.
        self.compile_seconds: dict[str, float] = dict(past.get("compile_seconds", {}))
        self._stage: tuple[str, float] | None = None  # the stage being timed, since when
        self._compile: tuple[str, float] | None = None  # the stage being compiled, since when
        self._step = first_step
        self._tb = None
        self._bar = None
        self._jsonl = None
        if not self.active:
            return
        from tensorboardX import SummaryWriter
        from tqdm import tqdm

        self.workdir.mkdir(parents=True, exist_ok=True)
        self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
        self._jsonl = (self.workdir / "metrics.jsonl").open("a")
        # On a terminal only (disable=None): a log file gets the window lines instead.
        self._bar = tqdm(
            total=total_steps, initial=first_step, unit="step", dynamic_ncols=True, disable=None
        )
        self._bar_step = first_step

    def scalars(self, step: int, metrics: Mapping[str, float]) -> None:
        """Writes one point per metric at `step` (TensorBoard, metrics.jsonl), a console line,
        and moves the progress bar."""
        self.last = {k: float(v) for k, v in metrics.items()}
        self._step = step
        if "loss" in self.last:
            self.history.append((step, self.last["loss"]))
        if not self.active:
            return
        for k, v in self.last.items():
            self._tb.add_scalar(k, v, step)
        self._json_line({"step": step, "time": time.time(), **self.last})
        self._bar.update(step - self._bar_step)
        self._bar_step = step
        shown = {k: self.last[k] for k in ("loss", "depth", "audio_s_per_s") if k in self.last}
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        log.info(window_line(step, self.last))

    def compile_started(self, stage: int) -> None:
        """Starts counting the seconds that `stage`'s step takes to compile."""
        self._compile = (str(stage), time.perf_counter())

    def stage_started(self, stage: int) -> None:
        """Starts counting wall-clock seconds of stepping in `stage` (after its compile); ends
        the compile's count, if one was started, and writes it to metrics.jsonl."""
        now = time.perf_counter()
        if self._compile is not None:
            key, start = self._compile
            self.compile_seconds[key] = self.compile_seconds.get(key, 0.0) + now - start
            self._compile = None
            if self.active:
                record = {"step": self._step, "time": time.time(), "stage": stage}
                self._json_line({**record, "compile_s": now - start})
        self._stage = (str(stage), now)

    def _json_line(self, record: Mapping[str, Any]) -> None:
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()  # a reader (a benchmark, a kill) sees every finished window

    def stage_ended(self) -> None:
        """Adds the seconds since `stage_started` to the stage."""
        self.stage_seconds = self._seconds()
        self._stage = None

    def _seconds(self) -> dict[str, float]:
        seconds = dict(self.stage_seconds)
        if self._stage is not None:
            key, start = self._stage
            seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
        return seconds

    def record(self) -> dict[str, Any]:
        """What a checkpoint keeps of the run so far (JSON), the current stage's time included."""
        return {
            "loss_history": [list(p) for p in self.history],
            "last_metrics": dict(self.last),
            "stage_seconds": self._seconds(),
            "compile_seconds": dict(self.compile_seconds),
        }

    def finish(self, summary: dict[str, Any], stage_bounds: Sequence[int]) -> None:
        """Closes the bar and the events; writes summary.json and loss.png."""
        if not self.active:
            return
        self._bar.close()
        self._tb.close()
        self._jsonl.close()
        write_report(self.workdir, summary, stage_bounds)


def window_line(step: int, m: Mapping[str, float]) -> str:
    """The console line of one log window, the figures a person follows, as `k=v` pairs; all
    metrics go to TensorBoard and metrics.jsonl."""
    keys = ("loss", "depth", "lr", "audio_s_per_s", "mfu", "data_skipped")
    shown = [k for k in keys if k in m and (k != "data_skipped" or m[k])]
    return f"step {step}: " + ", ".join(f"{k}={m[k]:.4g}" for k in shown)


def summary(status: str, step: int, depth: int, record: Mapping[str, Any], stages) -> dict:
    """summary.json: how the run ended and its whole record (all its processes' steps)."""
    return {
        "status": status,
        "steps": step,
        "final_depth": depth,
        "final_metrics": dict(record.get("last_metrics", {})),
        "stage_seconds": dict(record.get("stage_seconds", {})),
        "compile_seconds": dict(record.get("compile_seconds", {})),
        "loss_history": [list(p) for p in record.get("loss_history", [])],
        "stages": [s.__dict__ for s in stages],
        # the student's size, kept in every checkpoint's metadata (train._save)
        **({"student_params": record["student_params"]} if "student_params" in record else {}),
    }


def write_report(workdir: epath.Path, summary: dict[str, Any], stage_bounds: Sequence[int]):
    """summary.json and loss.png (loss vs step, stage boundaries dashed) on process 0."""
    if jax.process_index() != 0:
        return
    workdir = epath.Path(workdir)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    history = summary.get("loss_history", [])
    if history:
        _plot_loss(workdir / "loss.png", history, stage_bounds)


def _plot_loss(path: epath.Path, history, stage_bounds) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, values = np.asarray(history).T
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, values, label="loss")
    for b in stage_bounds:
        ax.axvline(b, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("distillation loss")
    ax.set_yscale("log")
    ax.set_title("loss (dashed: stage boundaries)")
    fig.tight_layout()
    with path.open("wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


class Timer:
    """Wall-clock seconds since construction or the last `lap`."""

    def __init__(self):
        self.t = time.perf_counter()

    def lap(self) -> float:
        """Seconds since the previous lap."""
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return dt
