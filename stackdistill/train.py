"""Distillation with stacking: mesh -> data -> teacher -> student -> step -> restore -> loop.

`train_and_evaluate(config, workdir)` runs (or resumes) a whole run. At each stage boundary
the student's params and optimizer state grow by `stacking.grow` and the step compiles once
more. Checkpoints are exact: a run killed and restarted ends with bit-identical params.
"""

from __future__ import annotations

import copy
import logging
import pathlib
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from stackdistill import checkpoint, optim, sharding, stacking, step, targets, teacher
from stackdistill import flops as flops_lib
from stackdistill.models import student
from stackdistill.writers import RunWriter, Timer

log = logging.getLogger("stackdistill")


class _Preemption:
    """SIGTERM sets a flag; the loop saves at the next step boundary and returns.

    With several processes a SIGTERM reaches them at different steps (or only one of them),
    so JAX's preemption service (started by jax.distributed) catches it instead and the
    processes stop at the step it agrees on; stopping alone would hang the others' step.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._multiprocess = jax.process_count() > 1

    def __enter__(self):
        if not self._multiprocess and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, *_):
        self.requested = True

    def stop_before(self, step: int) -> bool:
        """Whether to save and return before `step` (every process asks at every step)."""
        if self._multiprocess:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def __exit__(self, *_):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> list[stacking.Stage]:
    """Refuses a config that cannot work before anything is loaded or compiled."""
    step.validate(config)
    stages = stacking.plan_stages(config.stacking, config.total_steps, config.student.num_layers)
    if config.batch_size % jax.process_count():
        raise ValueError(
            f"config.batch_size={config.batch_size} is not divisible by the "
            f"{jax.process_count()} processes"
        )
    if config.batch_size % num_devices:
        raise ValueError(
            f"config.batch_size={config.batch_size} is not divisible by the {num_devices} devices "
            "of the mesh (config.mesh.data x config.mesh.fsdp): the batch is split over all"
        )
    start = stages[0].depth
    step.initial_student_layers(config.distill, start)
    return stages


def _lineage_at(stages: list[stacking.Stage], method: str, stage_index: int) -> np.ndarray:
    lineage = np.arange(stages[0].depth)
    for s in stages[1 : stage_index + 1]:
        lineage = stacking.lineage_after(lineage, method, s.num_new)
    return lineage


def _grow_state(state: dict, stage: stacking.Stage, c: ml_collections.ConfigDict) -> dict:
    """The state of the previous stage grown to `stage.depth` (params and moments)."""
    return {
        **state,
        "params": stacking.grow(state["params"], c.method, stage.num_new),
        "opt_state": stacking.grow_opt_state(
            state["opt_state"], c.method, stage.num_new, c.reset_new_moments
        ),
        "stage": state["stage"] + 1,
    }


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs distillation to config.total_steps (resuming from workdir); returns the summary."""
    workdir = epath.Path(workdir)  # local paths and gs:// alike
    # ------------------------------------------------------------------ mesh
    mesh = sharding.make_mesh(config.mesh)
    stages = validate_config(config, mesh.size)
    method = config.stacking.method

    # ------------------------------------------------------------------ data
    from stackdistill import data as data_lib

    data_cfg = copy.deepcopy(config.data)
    data_cfg.batch_size = config.batch_size // jax.process_count()
    if data_cfg.source == "synthetic" and not pathlib.Path(data_cfg.path).is_absolute():
        data_cfg.path = str(workdir / data_cfg.path)  # the offline corpus lives in the run
    use_cache = bool(config.targets.dir)  # teacher targets read from disk, not computed
    shard = dict(
        seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count()
    )
    if use_cache:
        data_iter = targets.make_loader(config, data_cfg, workdir, **shard)
    else:
        data_iter = data_lib.make_loader(data_cfg, **shard)

    # ------------------------------------------------------------------ teacher
    teacher_path = teacher.prepare(config.teacher, workdir)
    t_cfg, t_params = teacher.load(teacher_path)
    t_cfg = t_cfg.replace(dtype=config.dtype)
    if max(config.distill.teacher_layers) > t_cfg.num_layers:
        raise ValueError(
            f"config.distill.teacher_layers={tuple(config.distill.teacher_layers)} asks for "
            f"layers beyond the teacher's {t_cfg.num_layers}"
        )
    if use_cache:
        targets.check_compatible(targets.read_meta(config, workdir), config, t_params)
    rep = sharding.replicated(mesh)
    t_params = jax.device_put(t_params, sharding.tree_shardings(t_params, mesh, config.mesh.params))

    # ------------------------------------------------------------------ student, optimizer
    s_cfg = student.student_encoder_config(config.student, t_cfg).replace(remat=config.remat)
    initial_layers = step.initial_student_layers(config.distill, stages[0].depth)
    schedule = optim.make_schedule(config.optim, stages)
    shared = config.student.frozen_shared_frontend
    tx = optim.make_optimizer(config.optim, schedule, frozen_frontend=shared)

    def fresh_state():
        params = student.init_params(
            jax.random.key(config.seed),
            s_cfg.replace(num_layers=stages[0].depth),
            t_cfg,
            t_params,
            tuple(config.distill.teacher_layers),
            config.student.init_from_teacher,
        )
        return step.init_state(params, tx, config.seed + 1)

    def state_shardings(state):
        return sharding.tree_shardings(state, mesh, config.mesh.params)

    # ------------------------------------------------------------------ restore
    ckpt = checkpoint.Checkpointer(workdir, config.checkpoint_every, config.keep_checkpoints)
    latest = ckpt.latest_step()
    stage_index = 0
    abstract = jax.eval_shape(fresh_state)
    if latest is not None:
        stage_index = int(ckpt.restore_meta(latest)["stage"])
        for s in stages[1 : stage_index + 1]:
            abstract = jax.eval_shape(lambda st, s=s: _grow_state(st, s, config.stacking), abstract)
        state = ckpt.restore(latest, _abstract(abstract, state_shardings(abstract)), data_iter)
        log.info("resumed from step %d (stage %d)", latest, stage_index)
    else:
        state = jax.jit(fresh_state, out_shardings=state_shardings(abstract))()
    first_step = int(state["step"])
    if use_cache:  # the targets come from disk: the step needs no teacher params on device
        t_params = {}

    # ------------------------------------------------------------------ loop
    writer = RunWriter(workdir, config.total_steps, first_step)
    batch_sh = sharding.batch_sharding(mesh)
    n = config.batch_size
    batch_abstract = {
        "audio": jax.ShapeDtypeStruct((n, config.data.max_samples), np.float32, sharding=batch_sh),
        "lengths": jax.ShapeDtypeStruct((n,), np.int32, sharding=batch_sh),
    }
    if use_cache:  # + "targets" (and "features" for a shared front-end)
        for key, (shape, dtype) in targets.batch_shapes(config, t_cfg, n).items():
            batch_abstract[key] = jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sh)
        if "features" in batch_abstract:  # no CNN runs at all: the waveform stays on the host
            del batch_abstract["audio"]
    stage_seconds: dict[int, float] = {}
    last_metrics: dict[str, float] = {}
    status = "completed"
    with _Preemption() as preemption:
        for stage in stages[stage_index:]:
            if stage.index > int(state["stage"]):
                state = _grow_state(state, stage, config.stacking)
                state = jax.device_put(state, state_shardings(state))
            lineage = _lineage_at(stages, method, stage.index)
            sources = step.target_sources(
                config.distill, lineage, initial_layers, config.stacking.follow
            )
            train_step = step.make_train_step(
                config.distill, t_cfg, s_cfg, sources, tx, schedule, shared, cached=use_cache
            )
            st_sh = state_shardings(state)
            jitted = jax.jit(
                train_step,
                in_shardings=(
                    st_sh,
                    sharding.tree_shardings(t_params, mesh, config.mesh.params),
                    batch_sh,
                ),
                out_shardings=(st_sh, rep),
                donate_argnums=0,
            )
            timer = Timer()
            compiled = jitted.lower(_abstract(state, st_sh), t_params, batch_abstract).compile()
            # Analytic: XLA's cost analysis counts a scanned layer stack only once.
            flops = flops_lib.step_flops(
                t_cfg,
                s_cfg.replace(num_layers=stage.depth),
                config.batch_size,
                config.data.max_samples,
                len(config.distill.teacher_layers),
                shared_frontend=shared,
                with_teacher=not use_cache,
            )
            writer.text(
                f"stage {stage.index}: depth {stage.depth}, steps {stage.start_step}-"
                f"{stage.end_step}, targets {sources} (teacher layer -> student hidden state), "
                f"compiled in {timer.lap():.1f}s, {_memory(compiled)}"
            )
            stage_timer = Timer()
            pending: list[tuple[int, dict]] = []
            window = Timer()
            window_steps = 0
            current = int(state["step"])
            while current < stage.end_step:
                if preemption.stop_before(current):
                    status = "preempted"
                    break
                local = next(data_iter)
                batch = data_lib.to_global({k: local[k] for k in batch_abstract}, batch_sh)
                same = all(batch[k].shape == v.shape for k, v in batch_abstract.items())
                fn = compiled if same else jitted
                state, metrics = fn(state, t_params, batch)
                current += 1
                window_steps += 1
                pending.append((current, metrics))
                log_now = current % config.log_every == 0 or current == stage.end_step
                if log_now or ckpt.manager.should_save(current):
                    last_metrics = _check_finite(pending)
                    pending = []
                    if log_now:
                        dt = window.lap()
                        last_metrics.update(
                            _speed(last_metrics, window_steps, dt, flops, config.peak_flops)
                        )
                        last_metrics["depth"] = stage.depth
                        last_metrics["data_skipped"] = getattr(data_iter, "num_skipped", 0)
                        writer.scalars(current, last_metrics)
                        window_steps = 0
                    _save(ckpt, current, state, data_iter, stage, lineage, config, s_cfg, sources)
            stage_seconds[stage.index] = stage_seconds.get(stage.index, 0.0) + stage_timer.lap()
            if status == "preempted":
                break
        _check_finite(pending)
        _save(
            ckpt,
            int(state["step"]),
            state,
            data_iter,
            stage,
            lineage,
            config,
            s_cfg,
            sources,
            force=True,
        )
        ckpt.close()
    skipped = getattr(data_iter, "skipped_examples", [])
    if skipped:
        writer.text(f"data: skipped {data_iter.num_skipped} unusable records, e.g. {skipped[:5]}")
    if hasattr(data_iter, "close"):
        data_iter.close()

    summary = {
        "status": status,
        "steps": int(state["step"]),
        "final_depth": stacking.stack_depth(state["params"]),
        "final_metrics": last_metrics,
        "stage_seconds": {str(k): v for k, v in stage_seconds.items()},
        "loss_history": writer.history,
        "stages": [s.__dict__ for s in stages],
    }
    writer.finish(summary, [s.start_step for s in stages[1:]])
    return summary


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = "distill") -> None:
    """--mode=distill."""
    del mode
    train_and_evaluate(config, workdir)


def _save(ckpt, current, state, data_iter, stage, lineage, config, s_cfg, sources, force=False):
    """Checkpoints the state with the metadata that says how to read it back."""
    meta = {
        "step": current,
        "stage": stage.index,
        "depth": stage.depth,
        "lineage": [int(x) for x in lineage],
        "encoder_config": s_cfg.replace(num_layers=stage.depth).to_dict(),
        "target_sources": {str(k): v for k, v in sources.items()},
        "time": time.time(),
    }
    if force and ckpt.latest_step() == current:
        return
    ckpt.save(current, state, data_iter, meta, config.to_dict(), force=force)


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
    """Throughput of the last window; MFU = XLA's FLOPs per step x steps/s / peak FLOP/s."""
    audio = metrics.get("audio_seconds", 0.0) * steps
    out = {"steps_per_s": steps / seconds, "audio_s_per_s": audio / seconds}
    if flops:
        out["tflops_per_s"] = flops * steps / seconds / 1e12
        if peak_flops:
            out["mfu"] = flops * steps / seconds / peak_flops
    return out


def _memory(compiled) -> str:
    try:
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
        return f"memory {total / 2**20:.0f} MiB (temp {m.temp_size_in_bytes / 2**20:.0f} MiB)"
    except Exception:  # noqa: BLE001
        return "memory n/a"
