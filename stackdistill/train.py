"""Distillation with stacking: mesh -> data -> teacher -> student -> restore -> stages.

`train_and_evaluate(config, workdir)` runs (or resumes) a whole run. Each stage compiles its
step, runs it to the stage's last step and grows the state for the next one (`stacking.grow`
on params and optimizer state). Checkpoints are exact: a run killed and restarted ends with
bit-identical params.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from stackdistill import (
    checkpoint,
    console,
    distributed,
    resume,
    sharding,
    stacking,
    targets,
    teacher,
    writers,
)
from stackdistill import data as data_lib
from stackdistill import stage as stage_lib
from stackdistill.data import config as data_config
from stackdistill.data import targets as stored_targets
from stackdistill.models import student
from stackdistill.stage import Setup, StageRecord
from stackdistill.writers import RunWriter, Timer

log = logging.getLogger("stackdistill")


@dataclasses.dataclass(frozen=True)
class _Loop:
    """What the step loop reads and writes besides the state: batches, checkpoints, logs."""

    data_iter: Any
    ckpt: checkpoint.Checkpointer
    writer: RunWriter
    preemption: distributed.Preemption
    run_config: dict[str, Any]  # the config as saved beside every checkpoint


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs distillation to config.total_steps (resuming from workdir); returns the summary.

    A workdir with a checkpoint is resumed only by the config that wrote it (`resume.check_run`
    refuses other runs before anything is loaded); a finished run is left as it is.
    """
    workdir = epath.Path(workdir)  # local paths and gs:// alike
    with console.run_output(workdir, primary=jax.process_index() == 0):
        latest = resume.guard(config, workdir)
        if latest is not None and latest[0] >= config.total_steps:
            return _finished(config, workdir, *latest)
        return _train(config, workdir)


def _finished(config, workdir: epath.Path, step: int, meta: dict[str, Any]) -> dict[str, Any]:
    """A finished run: says so and returns its summary; rewrites nothing that exists."""
    path = workdir / "summary.json"
    log.info(
        "the run in %s is finished (checkpoint at step %d = config.total_steps): nothing to do. "
        "To train further, raise --config.total_steps or use a new --workdir.",
        workdir,
        step,
    )
    if path.exists():
        return json.loads(path.read_text())
    stages = stacking.plan_stages(
        config.stacking,
        config.total_steps,
        config.student.num_layers,
        student.layers_per_block(config.student),
    )
    summary = writers.summary("completed", step, int(meta["depth"]), meta, stages)
    writers.write_report(workdir, summary, [s.start_step for s in stages[1:]])
    return summary


def _train(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict[str, Any]:
    # ------------------------------------------------------------------ mesh
    mesh = sharding.make_mesh(config.mesh)
    stage_lib.validate_config(config, mesh.size)  # before any data or teacher is loaded

    # ------------------------------------------------------------------ data
    use_targets = bool(config.targets.dir)  # teacher targets read from disk, not computed
    data_iter = _make_loader(config, workdir, use_targets)

    # ------------------------------------------------------------------ teacher
    t_cfg, t_params = _load_teacher(config, workdir, use_targets)
    t_params = jax.device_put(t_params, sharding.tree_shardings(t_params, mesh, config.mesh.params))

    # ------------------------------------------------------------------ student, optimizer
    setup = stage_lib.make_setup(config, mesh, t_cfg)
    stages = setup.stages

    # ------------------------------------------------------------------ restore
    ckpt = checkpoint.Checkpointer(workdir, config.checkpoint_every, config.keep_checkpoints)
    try:  # closed on every way out: no async save is left to fail at exit
        state, stage_index, past = _restore_or_init(setup, ckpt, t_params, data_iter)
        if use_targets:  # the targets come from disk: the step needs no teacher params on device
            t_params = {}

        # -------------------------------------------------------------- stages
        writer = RunWriter(workdir, config.total_steps, int(state["step"]), past)
        status = "completed"
        with distributed.Preemption() as preemption:
            loop = _Loop(data_iter, ckpt, writer, preemption, config.to_dict())
            for stage in stages[stage_index:]:
                record = stage_lib.record(setup, stage)
                writer.compile_started(stage.index)
                step_fns = stage_lib.compile_step(setup, record, state, t_params)
                writer.stage_started(stage.index)
                state, preempted = _run_stage(setup, record, state, t_params, step_fns, loop)
                writer.stage_ended()
                if preempted:
                    status = "preempted"
                    break
                if stage.index + 1 < len(stages):
                    state = stage_lib.grow(setup, state, stages[stage.index + 1])
            _save(loop, record, state, step=int(state["step"]), force=True)
    finally:
        ckpt.close()
        if hasattr(data_iter, "close"):
            data_iter.close()
    skipped = getattr(data_iter, "skipped_examples", [])
    if skipped:
        log.warning(f"data: skipped {data_iter.num_skipped} unusable records, e.g. {skipped[:5]}")

    depth = stacking.stack_depth(state["params"]) * student.layers_per_block(config.student)
    summary = writers.summary(status, int(state["step"]), depth, writer.record(), stages)
    summary["student_params"] = student.param_counts(state["params"], setup.student_cfg)
    writer.finish(summary, [s.start_step for s in stages[1:]])
    if status == "preempted":
        log.warning(
            "preempted at step %d: checkpoint saved. Run the same command to resume.",
            summary["steps"],
        )
    else:
        log.info("done: step %d, depth %d; report in %s", summary["steps"], depth, workdir)
    return summary


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = "distill") -> None:
    """--mode=distill; a config with `recipe = "dp"` runs pruning/pipeline.py (DPHuBERT)."""
    del mode
    if config.get("recipe", "") == "dp":
        from stackdistill.pruning import pipeline

        pipeline.run(config, workdir)
        return
    train_and_evaluate(config, workdir)


# ---------------------------------------------------------------------- data, teacher


def _make_loader(config: ml_collections.ConfigDict, workdir: epath.Path, use_targets: bool):
    """This process's share of the batches (audio, or audio and stored teacher targets)."""
    data_cfg = data_config.for_run(config.data, workdir)
    data_cfg.batch_size = config.batch_size // jax.process_count()
    shard = dict(
        seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count()
    )
    if use_targets:
        return targets.run_loader(config, data_cfg, targets.location(config, workdir), **shard)
    return data_lib.make_loader(data_cfg, **shard)


def _load_teacher(config: ml_collections.ConfigDict, workdir: epath.Path, use_targets: bool):
    """The teacher's config (in the run's dtype) and host params; checks stored targets match it."""
    t_cfg, t_params = teacher.for_run(config, workdir)
    if use_targets:
        folder = targets.location(config, workdir)
        targets.check(stored_targets.read_meta(folder), config, folder, t_params)
    return t_cfg, t_params


# ---------------------------------------------------------------------- restore


def _restore_or_init(setup: Setup, ckpt: checkpoint.Checkpointer, t_params, data_iter):
    """(state, stage, record of the steps before) from the latest checkpoint, or fresh.

    The record (loss history, last metrics, stage seconds) is what the checkpoint's metadata
    kept, so the summary and plot of a resumed run cover all of it.
    """

    def fresh():
        return stage_lib.init_state(setup, t_params)

    first = jax.eval_shape(fresh)

    def restore(step: int):
        meta = ckpt.restore_meta(step)
        shaped = stage_lib.shapes_at(setup, first, int(meta["stage"]))
        target = stage_lib.abstract(shaped, setup.shardings(shaped))
        return ckpt.restore(step, target, data_iter), meta

    restored = ckpt.restore_newest_good(restore)  # a damaged newest one is moved aside
    if restored is None:
        return jax.jit(fresh, out_shardings=setup.shardings(first))(), 0, {}
    latest, (state, meta) = restored
    stage_index = int(meta["stage"])
    log.info("resumed from step %d (stage %d)", latest, stage_index)
    return state, stage_index, meta


# ---------------------------------------------------------------------- a stage


def _run_stage(setup: Setup, record: StageRecord, state, t_params, step_fns, loop: _Loop):
    """Steps to the end of the stage (or a preemption): logs every window, saves on schedule.

    Returns the state and whether it stopped for a preemption.
    """
    c = setup.config
    compiled, jitted = step_fns
    batch_sh = sharding.batch_sharding(setup.mesh)
    stage = record.stage
    metrics: dict[str, float] = {}
    pending: list[tuple[int, dict]] = []  # device metrics not yet copied to the host
    window, window_steps = Timer(), 0
    step = int(state["step"])
    preempted = False
    while step < stage.end_step:
        if loop.preemption.stop_before(step):
            preempted = True
            break
        local = next(loop.data_iter)
        batch = data_lib.to_global({k: local[k] for k in setup.batch_abstract}, batch_sh)
        same = all(batch[k].shape == v.shape for k, v in setup.batch_abstract.items())
        state, step_metrics = (compiled if same else jitted)(state, t_params, batch)
        step += 1
        window_steps += 1
        pending.append((step, step_metrics))
        if len(pending) > 1:  # at most one step in flight: a SIGTERM is seen a step later
            jax.block_until_ready(pending[-2][1])
        log_now = step % c.log_every == 0 or step == stage.end_step
        if log_now or loop.ckpt.manager.should_save(step):
            metrics = _check_finite(pending)
            pending = []
            if log_now:
                metrics.update(
                    _speed(metrics, window_steps, window.lap(), record.flops, c.peak_flops)
                )
                metrics["depth"] = stage.depth
                metrics["data_skipped"] = getattr(loop.data_iter, "num_skipped", 0)
                loop.writer.scalars(step, metrics)
                window_steps = 0
            _save(loop, record, state, step=step)
    _check_finite(pending)  # a preemption between windows: no NaN goes into the last save
    return state, preempted


# ---------------------------------------------------------------------- checkpoints, metrics


def _save(loop: _Loop, record: StageRecord, state, *, step: int, force: bool = False) -> None:
    """Checkpoints the state with the record's metadata; a forced save skips a saved step."""
    if force and loop.ckpt.latest_step() == step:
        return
    meta = {**record.checkpoint_meta(step), **loop.writer.record()}
    meta["student_params"] = student.param_counts(state["params"], record.student_cfg)
    loop.ckpt.save(step, state, loop.data_iter, meta, loop.run_config, force=force)


def _check_finite(pending: list[tuple[int, dict]]) -> dict[str, float]:
    """Host copies of the pending metrics; raises on the first non-finite loss, naming it."""
    if not pending:
        return {}
    host = jax.device_get(pending)
    for step_no, metrics in host:
        bad = sorted(k for k, v in metrics.items() if k.startswith("loss") and not np.isfinite(v))
        if bad:
            raise FloatingPointError(
                f"non-finite loss at step {step_no}: {', '.join(bad)} "
                "(no checkpoint was written after it; the last good one is kept)"
            )
    keys = host[-1][1].keys()
    mean = {k: float(np.mean([m[k] for _, m in host])) for k in keys}
    mean["lr"] = float(host[-1][1]["lr"])
    return mean


def _speed(metrics, steps, seconds, flops, peak_flops) -> dict[str, float]:
    """Throughput of the last window; MFU = analytic FLOPs per step x steps/s / peak FLOP/s."""
    audio = metrics.get("audio_seconds", 0.0) * steps
    out = {"steps_per_s": steps / seconds, "audio_s_per_s": audio / seconds}
    if flops:
        out["tflops_per_s"] = flops * steps / seconds / 1e12
        if peak_flops:
            out["mfu"] = flops * steps / seconds / peak_flops
    return out
