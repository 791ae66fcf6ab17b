"""Run reporting from process 0: TensorBoard events, console progress, summary.json, loss plot.

clu's metric writers import TensorFlow, so the event files are written with tensorboardX.
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
    """Scalars to TensorBoard and the console, a progress bar, and the end-of-run report."""

    def __init__(self, workdir: str | pathlib.Path, total_steps: int, first_step: int = 0):
        self.active = jax.process_index() == 0
        self.workdir = epath.Path(workdir)  # local or gs://
        self.history: list[tuple[int, float]] = []  # (step, loss) for the plot
        self.last: dict[str, float] = {}
        self._tb = None
        self._bar = None
        if not self.active:
            return
        from tensorboardX import SummaryWriter
        from tqdm import tqdm

        self.workdir.mkdir(parents=True, exist_ok=True)
        self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
        self._bar = tqdm(total=total_steps, initial=first_step, unit="step", dynamic_ncols=True)
        self._bar_step = first_step

    def scalars(self, step: int, metrics: Mapping[str, float]) -> None:
        """Writes one point per metric at `step` and updates the progress bar."""
        if not self.active:
            return
        self.last = {k: float(v) for k, v in metrics.items()}
        for k, v in self.last.items():
            self._tb.add_scalar(k, v, step)
        if "loss" in self.last:
            self.history.append((step, self.last["loss"]))
        self._bar.update(step - self._bar_step)
        self._bar_step = step
        shown = {k: self.last[k] for k in ("loss", "depth", "audio_s_per_s") if k in self.last}
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})
        log.info(
            "step %d: %s", step, ", ".join(f"{k}={v:.5g}" for k, v in sorted(self.last.items()))
        )

    def text(self, message: str) -> None:
        """A line in the log (and above the progress bar)."""
        if self.active:
            self._bar.write(message)
            log.info(message)

    def finish(self, summary: dict[str, Any], stage_bounds: Sequence[int]) -> None:
        """Writes summary.json and loss.png (loss vs step, stage boundaries dashed)."""
        if not self.active:
            return
        self._bar.close()
        self._tb.close()
        (self.workdir / "summary.json").write_text(json.dumps(summary, indent=1))
        if self.history:
            _plot_loss(self.workdir / "loss.png", self.history, stage_bounds)


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
