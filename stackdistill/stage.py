"""One growth stage as its step sees it: the run's setup, the stage's record, its compiled step.

`train.py` runs the stages (record -> compile -> run -> grow); `aot.py` (--mode=compile)
builds the same setup and compiles the same step for a TPU topology without running it, so
what it reports is the step the run would run.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from stackdistill import distill, fastpath, optim, sharding, stacking, targets
from stackdistill import flops as flops_lib
from stackdistill.models import student
from stackdistill.models.config import EncoderConfig
from stackdistill.writers import Timer

log = logging.getLogger("stackdistill")


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> list[stacking.Stage]:
    """Refuses a config that cannot work before anything is loaded or compiled."""
    distill.validate(config.distill)
    if config.distill.loss == "masked" and not config.student.get("mask_emb", False):
        raise ValueError(
            "config.distill.loss='masked' feeds the student masked input: set "
            "config.student.mask_emb=True (its learned mask embedding)"
        )
    if config.distill.loss == "masked" and config.targets.dir:
        raise ValueError(
            "config.distill.loss='masked' cannot use stored teacher targets "
            "(config.targets.dir): the masked teacher's outputs depend on the mask drawn at "
            "each step; unset config.targets.dir or choose another config.distill.loss"
        )
    block = student.layers_per_block(config.student)
    stages = stacking.plan_stages(
        config.stacking, config.total_steps, config.student.num_layers, block
    )
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
    distill.initial_student_layers(config.distill, start)
    return stages


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every stage is built from: the config, mesh, both models, optimizer, batch shapes."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    stages: list[stacking.Stage]
    teacher_cfg: EncoderConfig
    student_cfg: EncoderConfig  # at the final depth; each stage replaces num_layers
    tx: Any  # optax.GradientTransformation
    schedule: Any  # optax.Schedule
    use_targets: bool  # teacher targets read from disk (config.targets.dir), not computed
    batch_abstract: dict[str, jax.ShapeDtypeStruct]

    def shardings(self, tree: Any) -> Any:
        """Per-leaf shardings of params-like trees (state, teacher params) on the mesh."""
        return sharding.tree_shardings(tree, self.mesh, self.config.mesh.params)


def make_setup(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    t_cfg: EncoderConfig,
    device_bytes: int | None = None,
) -> Setup:
    """The run's setup on `mesh` (remat "auto" sized for `device_bytes`, else the device's)."""
    stages = validate_config(config, mesh.size)
    use_targets = bool(config.targets.dir)  # teacher targets read from disk, not computed
    s_cfg = student.student_encoder_config(config.student, t_cfg)
    remat = fastpath.remat_policy(config, s_cfg, config.batch_size // mesh.size, device_bytes)
    schedule = optim.make_schedule(config.optim, stages)
    tx = optim.make_optimizer(
        config.optim, schedule, frozen_frontend=config.student.frozen_shared_frontend
    )
    return Setup(
        config=config,
        mesh=mesh,
        stages=stages,
        teacher_cfg=t_cfg,
        student_cfg=s_cfg.replace(remat=remat),
        tx=tx,
        schedule=schedule,
        use_targets=use_targets,
        batch_abstract=batch_abstract(config, t_cfg, mesh, use_targets),
    )


def batch_abstract(config, t_cfg: EncoderConfig, mesh, use_targets: bool) -> dict[str, Any]:
    """Shapes and shardings of one global batch: what the step is compiled for."""
    batch_sh = sharding.batch_sharding(mesh)
    n = config.batch_size
    out = {
        "audio": jax.ShapeDtypeStruct((n, config.data.max_samples), np.float32, sharding=batch_sh),
        "lengths": jax.ShapeDtypeStruct((n,), np.int32, sharding=batch_sh),
    }
    if use_targets:  # + "targets" (and "features" for a shared front-end)
        for key, (shape, dtype) in targets.batch_shapes(config, t_cfg, n).items():
            out[key] = jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sh)
        if "features" in out:  # no CNN runs at all: the waveform stays on the host
            del out["audio"]
    return out


def init_state(setup: Setup, t_params) -> dict:
    """The first stage's train state (student initialised from the teacher as configured)."""
    c = setup.config
    params = student.init_student(
        setup.student_cfg.replace(num_layers=setup.stages[0].depth),
        jax.random.key(c.seed),
        setup.teacher_cfg,
        t_params,
        distill.head_layers(c.distill),
        c.student.init_from_teacher,
        head=c.student.head,
        copy_teacher_encoder_norm=c.student.copy_teacher_encoder_norm,
        fairseq=c.student.get("fairseq_init", False),
    )
    return distill.init_state(params, setup.tx, c.seed + 1)


def shapes_at(setup: Setup, first: Any, stage_index: int) -> Any:
    """The first stage's state shapes grown to stage `stage_index` (ShapeDtypeStructs)."""
    block = setup.student_cfg.layers_per_block
    for s in setup.stages[1 : stage_index + 1]:
        first = jax.eval_shape(lambda st, s=s: grown(st, s, setup.config.stacking, block), first)
    return first


@dataclasses.dataclass(frozen=True)
class StageRecord:
    """One stage as its step and checkpoints see it: depth, lineage, targets, cost."""

    stage: stacking.Stage
    lineage: tuple[int, ...]  # the initial-stack layer each layer descends from
    sources: dict[int, int]  # teacher layer -> student hidden state that predicts it
    student_cfg: EncoderConfig  # the student at this stage's depth
    flops: float  # analytic FLOPs of one step

    def checkpoint_meta(self, step: int) -> dict[str, Any]:
        """The metadata that says how to read a checkpoint at `step` back."""
        return {
            "step": step,
            "stage": self.stage.index,
            "depth": self.stage.depth,
            "lineage": list(self.lineage),
            "encoder_config": self.student_cfg.to_dict(),
            "target_sources": {str(k): v for k, v in self.sources.items()},
            "time": time.time(),
        }


def record(setup: Setup, stage: stacking.Stage) -> StageRecord:
    """Depth, lineage, target sources and step FLOPs of `stage`."""
    c = setup.config
    lineage = np.arange(setup.stages[0].depth)
    for s in setup.stages[1 : stage.index + 1]:
        lineage = stacking.lineage_after(
            lineage, c.stacking.method, s.num_new, setup.student_cfg.layers_per_block
        )
    initial_layers = distill.initial_student_layers(c.distill, setup.stages[0].depth)
    sources = distill.target_sources(c.distill, lineage, initial_layers, c.stacking.follow)
    student_cfg = setup.student_cfg.replace(num_layers=stage.depth)
    # Analytic: XLA's cost analysis counts a scanned layer stack only once.
    flops = flops_lib.step_flops(
        setup.teacher_cfg,
        student_cfg,
        c.batch_size,
        c.data.max_samples,
        # one head per target (every layer with targets="every_layer"); none for STaR
        0 if c.distill.loss in distill.HEADLESS_LOSSES else len(sources),
        shared_frontend=c.student.frozen_shared_frontend,
        with_teacher=not setup.use_targets,
        teacher_passes=2 if c.distill.loss == "masked" else 1,  # unmasked and masked
        gram_layers=len(sources) if c.distill.loss == "star" else 0,
    )
    return StageRecord(stage, tuple(int(x) for x in lineage), sources, student_cfg, flops)


def under_mesh(step, mesh: jax.sharding.Mesh):
    """`step` traced with `mesh` as the abstract mesh: Pallas kernels then run per device."""

    @functools.wraps(step)
    def wrapped(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return step(*args)

    return wrapped


def compile_step(setup: Setup, rec: StageRecord, state, t_params):
    """The stage's step, jitted and compiled ahead for the batch shape; logs time and memory.

    Returns (compiled, jitted): the compiled step for full batches, the jitted one for others.
    """
    train_step = distill.make_train_step(
        setup.config.distill,
        setup.teacher_cfg,
        setup.student_cfg,
        rec.sources,
        setup.tx,
        setup.schedule,
        setup.config.student.frozen_shared_frontend,
        cached=setup.use_targets,
    )
    if "flash" in (setup.teacher_cfg.attention, setup.student_cfg.attention):
        train_step = under_mesh(train_step, setup.mesh)
    st_sh = setup.shardings(state)
    jitted = jax.jit(
        train_step,
        in_shardings=(st_sh, setup.shardings(t_params), sharding.batch_sharding(setup.mesh)),
        out_shardings=(st_sh, sharding.replicated(setup.mesh)),
        donate_argnums=0,
    )
    timer = Timer()
    compiled = jitted.lower(abstract(state, st_sh), t_params, setup.batch_abstract).compile()
    stage = rec.stage
    log.info(
        "stage %d: depth %d, steps %d-%d, targets %s (teacher layer -> student hidden state), "
        "compiled in %.1fs, %s",
        stage.index,
        stage.depth,
        stage.start_step,
        stage.end_step,
        rec.sources,
        timer.lap(),
        _memory(compiled),
    )
    return compiled, jitted


def grow(setup: Setup, state: dict, stage: stacking.Stage) -> dict:
    """The state grown to `stage`, laid out on the mesh again."""
    state = grown(state, stage, setup.config.stacking, setup.student_cfg.layers_per_block)
    return jax.device_put(state, setup.shardings(state))


def grown(state: dict, stage: stacking.Stage, c: ml_collections.ConfigDict, block: int = 1) -> dict:
    """The state of the previous stage grown to `stage.depth` (params and moments).

    `block`: layers per reuse block (whole blocks grow; see stacking.py).
    """
    return {
        **state,
        "params": stacking.grow(state["params"], c.method, stage.num_new, block),
        "opt_state": stacking.grow_opt_state(
            state["opt_state"], c.method, stage.num_new, c.reset_new_moments, block
        ),
        "stage": state["stage"] + 1,
    }


def abstract(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` with the given shardings (what a step is lowered for)."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings
    )


def _memory(compiled) -> str:
    try:
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
        return f"memory {total / 2**20:.0f} MiB (temp {m.temp_size_in_bytes / 2**20:.0f} MiB)"
    except Exception:  # noqa: BLE001
        return "memory n/a"
