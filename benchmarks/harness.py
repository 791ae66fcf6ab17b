"""What the benchmark scripts share: configs, the tiny teacher, timed runs, step presets and
builder, the machine's name, median timing and markdown tables.

A script under benchmarks/ imports stackdistill, this module and its own helper modules
(table_stats and table_eval: paper_table; op_profile: profile_step; torch_reference:
step_vs_pytorch; input_rates: data_pipeline; targets_8bit: targets), never another script.
Runs are timed from the numbers they write (WORKDIR/metrics.jsonl, stackdistill/writers.py),
never from console text.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import ml_collections

from stackdistill import paths

ROOT = pathlib.Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- configs


def config_file(name: str) -> ml_collections.ConfigDict:
    """configs/NAME's config; NAME as `--config` spells it after configs/ (`demo.py:quick`)."""
    from stackdistill import config as config_lib

    file, _, arg = name.partition(":")
    file = file if file.endswith(".py") else file + ".py"
    return config_lib.load_file(ROOT / "configs" / file, arg or None)


# The bigger random pair of `demo_config(big=True)`: teacher 12 x 256, CNN 128 channels.
BIG_TEACHER = dict(
    model_type="hubert",
    hidden_size=256,
    num_layers=12,
    num_heads=4,
    intermediate_size=1024,
    conv_dim=(128,) * 7,
    num_conv_pos_embeddings=32,
    num_conv_pos_embedding_groups=8,
)
BIG_STUDENT = dict(num_layers=12, hidden_size=128, intermediate_size=512, num_heads=2)


def demo_config(workdir: pathlib.Path, big: bool = False, **overrides) -> ml_collections.ConfigDict:
    """configs/demo.py with teacher and corpus shared under workdir (big: bigger models) and
    dotted `overrides`."""
    from stackdistill import config as config_lib

    c = config_file("demo")
    c.teacher.name = str(workdir / ("teacher_big" if big else "teacher"))
    c.data.path = str(workdir / "synth")
    if big:
        c.teacher.random_arch = BIG_TEACHER
        c.student.update(BIG_STUDENT)
    return config_lib.apply_overrides(c, overrides)


# ---------------------------------------------------------------- the tiny trained teacher

TINY_TEACHER_DIR = paths.cache_home() / "tiny_teacher"


def ensure_tiny_teacher(
    folder: pathlib.Path, config: str = "tiny_teacher.py", probe: bool = True
) -> pathlib.Path:
    """The trained tiny teacher's folder (teacher/ in transformers format, synth/ its corpus),
    trained there first by configs/CONFIG when missing (its probe table unless `probe` is off)."""
    if not (folder / "teacher" / "config.json").is_file():
        from stackdistill import tiny_teacher

        print(f"training the tiny teacher into {folder} (configs/{config})", flush=True)
        c = config_file(config)
        c.probe.num = c.probe.num if probe else 0
        tiny_teacher.run(c, folder)
    return folder


def tiny_student_config(
    method: str, teacher_dir: pathlib.Path, steps: int
) -> ml_collections.ConfigDict:
    """12 x 96 student of the tiny teacher on its own corpus, targets teacher 2/4/6, batch 8,
    1.5 s crops, stacking `method`; only the final checkpoint."""
    from stackdistill import config as config_lib

    c = config_lib.base_config()
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


# ---------------------------------------------------------------- timed runs


def read_metrics(workdir: str | pathlib.Path, since: float = 0.0) -> list[dict[str, Any]]:
    """WORKDIR/metrics.jsonl's records written at or after `since` (Unix seconds)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [r for r in records if r["time"] >= since]


@dataclasses.dataclass
class TimedRun:
    """A run's summary and when each of its log windows and compiles came, from the start."""

    summary: dict[str, Any]
    wall_s: float  # the whole call, set-up and compiles included
    points: list[tuple[float, int, float]]  # (seconds since the start, step, loss)
    compiles: list[float]  # compile seconds of each stage, in order
    train_at: dict[int, float]  # step -> seconds since the start less the compiles before it

    @property
    def compile_s(self) -> float:
        """Seconds spent compiling, all stages."""
        return sum(self.compiles)


def train_timed(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> TimedRun:
    """train.train_and_evaluate, timed from the metrics.jsonl it writes."""
    from stackdistill import train

    logging.getLogger("stackdistill").setLevel(logging.INFO)  # log.txt: the stage lines too
    start, clock = time.time(), time.perf_counter()
    summary = train.train_and_evaluate(config, str(workdir))
    wall = time.perf_counter() - clock
    points, compiles, train_at = [], [], {}
    for r in read_metrics(workdir, since=start):
        if "compile_s" in r:
            compiles.append(r["compile_s"])
        elif "loss" in r:
            points.append((r["time"] - start, r["step"], r["loss"]))
            train_at[r["step"]] = r["time"] - start - sum(compiles)
    return TimedRun(summary, wall, points, compiles, train_at)


def timed_run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, Any]:
    """A run's wall-clock, step and compile seconds, final metrics and loss curve (JSON)."""
    run = train_timed(config, workdir)
    train_seconds = sum(run.summary["stage_seconds"].values())
    return {
        "wall_s": run.wall_s,
        "train_s": train_seconds,
        "step_s": train_seconds / run.summary["steps"],
        "compile_s": run.compile_s,
        "final": run.summary["final_metrics"],
        "curve": run.points,
    }


# ---------------------------------------------------------------- step presets and builder

TEACHER_LAYERS = (4, 8, 12)
LEARNING_RATE = 2e-4  # constant: the step presets time steps, they do not train
STUDENTS = {
    # name: (student config fields, loss, student hidden state feeding each teacher layer)
    "distilhubert": (dict(num_layers=2, hidden_size=768, intermediate_size=3072, num_heads=12),
                     "l1_cos", {4: 2, 8: 2, 12: 2}),
    "12x384": (dict(num_layers=12, hidden_size=384, intermediate_size=1536, num_heads=6),
               "mse", {4: 4, 8: 8, 12: 12}),
    "demo": (dict(num_layers=12, hidden_size=32, intermediate_size=64, num_heads=2),
             "mse", {4: 4, 8: 8, 12: 12}),
}  # fmt: skip
# The tests' tiny random teacher (tests/test_profile_step.py).
TINY_TEST_TEACHER = dict(hidden_size=32, num_layers=12, num_heads=2, intermediate_size=64,
                         conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=4)  # fmt: skip
TEACHER_NAMES = ("base", "demo", "tiny")


def teacher_arch(name: str) -> dict[str, Any]:
    """EncoderConfig fields of a random teacher: HuBERT Base ("base"), configs/demo.py's
    ("demo") or the tests' tiny one ("tiny")."""
    if name == "base":
        return {}
    if name == "demo":
        return dict(config_file("demo").teacher.random_arch)
    if name == "tiny":
        return dict(TINY_TEST_TEACHER)
    raise ValueError(f"teacher {name!r}: expected one of {TEACHER_NAMES}")


def student_encoder_config(name: str, t_cfg, dtype: str, remat: str = "none"):
    """The EncoderConfig of student preset `name` for teacher `t_cfg`."""
    from stackdistill.models import student

    section = student.default_config()
    section.update(STUDENTS[name][0])
    return student.student_encoder_config(section, t_cfg).replace(dtype=dtype, remat=remat)


def train_step(
    name: str,
    t_cfg,
    t_params,
    dtype: str,
    shared: bool = False,
    cached: bool = False,
    remat: str = "none",
    learning_rate: float = LEARNING_RATE,
) -> dict[str, Any]:
    """Student preset `name` (teacher-initialised) with its jitted step (state donated) and a
    fresh state: {"s_cfg", "params", "step", "state", "sources", "loss"}."""
    import jax
    import jax.numpy as jnp
    import optax

    from stackdistill import distill, optim
    from stackdistill.models import student

    _, loss, sources = STUDENTS[name]
    s_cfg = student_encoder_config(name, t_cfg, dtype, remat)
    params = student.init_student(s_cfg, jax.random.key(0), t_cfg, t_params, TEACHER_LAYERS)
    distill_cfg = distill.default_config()
    distill_cfg.update(teacher_layers=TEACHER_LAYERS, loss=loss)
    schedule = optax.constant_schedule(learning_rate)
    tx = optim.make_optimizer(optim.default_config(), schedule, frozen_frontend=shared)
    t_run = t_cfg.replace(dtype=dtype)
    fn = distill.make_train_step(distill_cfg, t_run, s_cfg, sources, tx, schedule, shared, cached)
    # Fresh buffers: teacher-initialised leaves may alias the teacher's, and the step donates.
    state = jax.tree_util.tree_map(jnp.copy, distill.init_state(params, tx, seed=0))
    return {"s_cfg": s_cfg, "params": params, "sources": sources, "loss": loss,
            "step": jax.jit(fn, donate_argnums=0), "state": state}  # fmt: skip


# ---------------------------------------------------------------- machine, timing, tables


def cpu_name() -> str:
    """The CPU's model name (lscpu, else /proc/cpuinfo, else what platform says)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        lines = out.splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if "Model name" in line)
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith("model name")]
        return lines[0].split(":", 1)[1].strip()
    except (OSError, IndexError):
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_name() -> str:
    """The CPU's name on a CPU backend, else the first accelerator's kind."""
    import jax

    return cpu_name() if jax.default_backend() == "cpu" else jax.devices()[0].device_kind


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def table(rows: list[dict]) -> str:
    """Rows as a markdown table (union of keys, in first-seen order)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
