"""DPHuBERT / DPWavLM as one resumable run: pyf98/DPHuBERT run.sh's three stages in one workdir.

`run(config, workdir)` (a config with `recipe = "dp"`, stackdistill/recipes/dp.py) does:

- `prune/`: the student, a copy of the teacher (run.sh L20), trained with the joint objective
  (distill loss + Lagrangian, `objective.make_train_step`; distill.py, run.sh L48-75) for
  `prune.steps`, the target sparsity warmed up; orbax checkpoints every `checkpoint_every`.
- `pruned/`: their prune step (prune.py L11-67): deterministic gates -> `prune.prune` +
  `prune.shrink_ffn`; `encoder_config.json` and `params.npz` (student under "student/",
  the distill heads under "heads/<i>/", kept as prune.py L16-18, L65 keeps them).
- `final/`: the final distillation of the pruned model from the teacher with the same loss,
  no gates (final_distill.py, run.sh L87-110), from the pruned model and its heads
  (final_distill.py L93); checkpoints, then `encoder_config.json` and `params.npz`, and
  their `pruned_hubert_base.pth` (`their_format`; the name theirs gives WavLM too).

A stage whose `DONE.json` exists is skipped; a killed stage resumes from its newest
checkpoint (params, optimizer states, step and the data iterator), so the final params are
bit-identical to an uninterrupted run's. `pipeline_config.json` holds the config the run
goes on with: a rerun that changes a field of the run's meaning is refused (`resume.check`).
`summary.json`: params before / after pruning (their count, `pruning.params`) and each
stage's wall-clock (summed over resumes).

Pruning with stacking (`config.prune.depth` = d < the teacher's L layers, L = r * d): the
pruning stage trains a student of the teacher's every r-th layer (layers r, 2r, ..., L: each
the top of its block of r), distilled at the teacher's layers divided by r ("0.4,8,12" of
12 layers at d = 6: student "0.2,4,6"); its Lagrangian constrains the parameter count of the
model it will grow into. The prune step prunes it, then interleaved stacking grows every
pruned layer into r adjacent copies (`stacking.grow`, d -> 2d -> ... -> L), so each block's
last copy again sits at the teacher layer it learned; the final distillation trains the
grown model at depth L with their loss. The pruning stage, the costly one, runs a student
of 1/r of the teacher's layers.

Every device of every process: `config.mesh` (as a distillation run's, `sharding.py`) lays
the batch over ('data', 'fsdp') and the student, gates, heads and optimizer states (and the
teacher) replicated or FSDP-sharded; the batch size must divide over the devices. With
several processes (jax.distributed: TPU pod slices, multi-host GPUs) each reads its own
shard of the data (batch_size / processes rows) and checkpoints its own data iterator;
process 0 writes the logs, the stages' files and summary.json, and the others wait for them
at a barrier (a process whose host does not see them writes its own, identical copy).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath

from stackdistill import checkpoint, distributed, fastpath, resume, sharding, stacking, teacher
from stackdistill import data as data_lib
from stackdistill import models as models_lib
from stackdistill import stage as stage_lib
from stackdistill.data import config as data_config
from stackdistill.models.config import EncoderConfig
from stackdistill.pruning import hardconcrete, lagrangian, objective, params, prune, store

log = logging.getLogger("stackdistill")

STAGES = ("prune", "pruned", "final")
DONE = "DONE.json"
CONFIG_FILE = "pipeline_config.json"
# Fields whose change makes a different run (the saved stages would not be its stages).
REFUSE = ("recipe", "teacher", "data", "seed", "batch_size", "dtype", "dp", "prune", "final")


# ---------------------------------------------------------------------- config, plan, guard


def units(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The gated units of `config.prune.units` (their --pruning_units, comma-separated)."""
    return tuple(u.strip() for u in str(config.prune.units).split(",") if u.strip())


def distill_spec(config: ml_collections.ConfigDict) -> objective.DistillSpec:
    """Their distill flags from `config.dp` (ValueError naming the field when they are bad)."""
    d = config.dp
    try:
        return objective.DistillSpec.parse_layers(
            str(d.layers),
            mode=d.mode,
            l2_weight=d.l2_weight,
            l1_weight=d.l1_weight,
            cos_weight=d.cos_weight,
            cos_type=d.cos_type,
        )
    except ValueError as e:
        raise ValueError(f"config.dp ({d.layers=!s}, {d.mode=!s}, {d.cos_type=!s}): {e}") from e


def layer_copies(config: ml_collections.ConfigDict, num_teacher_layers: int) -> int:
    """r: the pruning stage's student has every r-th of the teacher's layers (prune.depth)."""
    depth = int(config.prune.get("depth", 0)) or num_teacher_layers
    if depth > num_teacher_layers or num_teacher_layers % depth:
        raise ValueError(
            f"config.prune.depth={depth}: must divide the teacher's {num_teacher_layers} "
            "layers (the pruned student grows back to them by interleaved stacking; 0: all)"
        )
    return num_teacher_layers // depth


def student_spec(config: ml_collections.ConfigDict, r: int) -> objective.DistillSpec:
    """The distill spec at the pruning stage's depth: every distill layer divided by r."""
    spec = distill_spec(config)
    if any(layer % r for layer in spec.layers):
        raise ValueError(
            f"config.dp.layers={config.dp.layers!r}: with config.prune.depth="
            f"{config.prune.depth} (every {r}th teacher layer) each distill layer must be a "
            f"multiple of {r}"
        )
    groups = tuple(tuple(layer // r for layer in g) for g in spec.layer_groups)
    return dataclasses.replace(spec, layer_groups=groups)


def every_rth_layer(tree: Any, r: int) -> Any:
    """The teacher's layers r, 2r, ..., L (1-based) of every `layers` subtree."""
    index = np.arange(r - 1, stacking.stack_depth(tree), r)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x[index] if stacking.under_layers(path) else x, tree
    )


def grow_back(tree: Any, r: int) -> Any:
    """Interleaved stacking of every `layers` subtree to r times its depth: each layer
    followed by its r - 1 copies (d -> 2d -> ... -> r d, `stacking.grow`)."""
    depth = stacking.stack_depth(tree)
    for _ in range(r - 1):
        tree = stacking.grow(tree, "interleaved", num_new=depth)
    return tree


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses a DP config that cannot run, naming the field, before anything is loaded."""
    if config.get("recipe") != "dp":
        raise ValueError(f"config.recipe={config.get('recipe')!r}: the DP pipeline needs 'dp'")
    for name in ("prune", "final", "dp"):
        if name not in config:
            raise ValueError(f"config has no section {name!r} (build it with recipes/dp.py)")
    bad = set(units(config)) - set(hardconcrete.UNITS)
    if bad or not units(config):
        raise ValueError(
            f"config.prune.units={config.prune.units!r}: a comma-separated subset of "
            f"{','.join(hardconcrete.UNITS)} (run.sh L32 uses conv,head,interm)"
        )
    if not 0.0 < config.prune.target_sparsity < 1.0:
        raise ValueError(f"config.prune.target_sparsity={config.prune.target_sparsity}: in (0, 1)")
    if config.prune.conv not in prune.CONV_MODES:
        raise ValueError(f"config.prune.conv={config.prune.conv!r}: one of {prune.CONV_MODES}")
    for field in ("prune.reg_learning_rate", "prune.learning_rate", "final.learning_rate"):
        if not _get(config, field) > 0:
            raise ValueError(f"config.{field}={_get(config, field)}: must be > 0")
    for stage in ("prune", "final"):
        steps, warmup = _get(config, f"{stage}.steps"), _get(config, f"{stage}.warmup")
        if not (isinstance(steps, int) and steps > 0):
            raise ValueError(f"config.{stage}.steps={steps!r}: a positive number of steps")
        if not 0 <= warmup <= steps:
            raise ValueError(f"config.{stage}.warmup={warmup}: between 0 and {stage}.steps")
    if int(config.prune.get("depth", 0)) < 0:
        raise ValueError(f"config.prune.depth={config.prune.depth}: >= 0 (0: the teacher's)")
    if config.prune.sparsity_warmup < 0:
        raise ValueError(f"config.prune.sparsity_warmup={config.prune.sparsity_warmup}: >= 0")
    for field in ("batch_size", "checkpoint_every", "log_every", "keep_checkpoints"):
        if not int(config[field]) > 0:
            raise ValueError(f"config.{field}={config[field]}: must be > 0")
    mesh = _mesh(config)
    if config.batch_size % mesh.size:
        raise ValueError(
            f"config.batch_size={config.batch_size} does not split over the {mesh.size} "
            "devices of config.mesh: make it a multiple of them"
        )
    distill_spec(config)


def _mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """The local devices' ('data', 'fsdp') mesh of `config.mesh` (default: all on 'data')."""
    return sharding.make_mesh(config.get("mesh") or sharding.default_config())


def _shardings(config: ml_collections.ConfigDict, tree: Any, mesh=None) -> Any:
    """Each leaf's sharding on `mesh` (default `config.mesh` of the local devices):
    replicated or FSDP (mesh.params)."""
    mesh_cfg = config.get("mesh") or sharding.default_config()
    return sharding.tree_shardings(tree, mesh or _mesh(config), mesh_cfg.params)


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    section, field = dotted.split(".")
    return config[section][field]


def plan(workdir: str | epath.PathLike) -> dict[str, bool]:
    """Which stages are complete (their DONE.json exists) in `workdir`, in run order."""
    workdir = epath.Path(workdir)
    return {stage: (workdir / stage / DONE).exists() for stage in STAGES}


def guard(config: ml_collections.ConfigDict, workdir: str | epath.PathLike) -> list[str]:
    """Refuses (resume.ResumeMismatch) a config that changes the run `workdir` holds, naming
    every such field; returns the notes of the changes that pass (none for a new run)."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        return []
    notes = resume.check(
        json.loads(path.read_text()),
        _as_json(config),
        refuse=REFUSE,
        allow=resume.parse_allow(config.get("resume_changed", "")),
        free=resume.RUN_FREE,
        ignore=("resume_changed",),
        what=f"the DP pipeline in {workdir}",
        way_out="To run a different pipeline, use a new --workdir; to change these fields "
        "on purpose, add --config.resume_changed=FIELD1,FIELD2 (or allow).",
    )
    for note in notes:
        log.info("resume: %s", note)
    return notes


def record(config: ml_collections.ConfigDict, workdir: str | epath.PathLike) -> None:
    """Records the config the run goes on with (once the teacher loaded: a typo fixed in the
    teacher's name is not a change of run)."""
    if jax.process_index() == 0:
        store.write_json(epath.Path(workdir) / CONFIG_FILE, _as_json(config))


def _written(tag: str, path: epath.Path, write) -> None:
    """`write()` by process 0, then a barrier; a process that still does not see `path` (its
    host does not share the folder) writes its own, identical copy."""
    distributed.write_once(write, path.exists, f"dp:{tag}")


def _host(tree: Any) -> Any:
    """Numpy copies of global arrays (gathered across processes where sharded): collective."""
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree_util.tree_map(one, tree)


def _as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(json.dumps(config.to_dict()))


# ---------------------------------------------------------------------- the run


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = "distill") -> dict[str, Any]:
    """Runs (or resumes) the three stages in `workdir`; returns the summary (summary.json)."""
    del mode
    validate(config)
    workdir = epath.Path(workdir)
    guard(config, workdir)
    done = plan(workdir)
    if all(done.values()):
        log.info("the DP pipeline in %s is finished: nothing to do", workdir)
        return _summary(config, workdir, "completed")
    log.info(
        "DP pipeline in %s: %s",
        workdir,
        ", ".join(f"{s} {'done' if d else 'to run'}" for s, d in done.items()),
    )
    t_cfg, t_host = teacher.load(teacher.prepare(config.teacher, str(workdir)))
    t_cfg = t_cfg.replace(dtype=config.dtype, **fastpath.encoder_options(config))
    spec = distill_spec(config)
    if max(spec.layers) > t_cfg.num_layers:
        raise ValueError(
            f"config.dp.layers={config.dp.layers!r}: layer {max(spec.layers)} is beyond the "
            f"teacher's {t_cfg.num_layers} layers"
        )
    student_spec(config, layer_copies(config, t_cfg.num_layers))  # refuses a bad prune.depth
    record(config, workdir)
    t_params = jax.device_put(t_host, _shardings(config, t_host))
    if not done["prune"] and _train_stage(
        config, workdir, "prune", _prune_setup(config, t_cfg, t_host, spec), t_params
    ):
        return _summary(config, workdir, "preempted")
    if not done["pruned"]:
        _prune_step(config, workdir, t_cfg, t_host, spec)
    if not done["final"]:
        setup = _final_setup(config, workdir, t_cfg, spec)
        if _train_stage(config, workdir, "final", setup, t_params):
            return _summary(config, workdir, "preempted")
        trainable = _host(_restore(config, workdir, "final", setup))
        final = workdir / "final"

        def write_final():
            store.save_model(final, setup["cfg"], trainable)
            store.save_theirs(final, setup["cfg"], trainable, spec)
            store.write_json(final / DONE, store.read_json(final / "progress.json"))

        _written("final", final / DONE, write_final)
    return _summary(config, workdir, "completed")


def _prune_setup(config, t_cfg: EncoderConfig, t_host, spec) -> dict[str, Any]:
    """Fresh state and step of the pruning stage (distill.py L65-139, lightning.py L200-238)."""
    p, c = config.prune, config.dp
    schedule = objective.linear_decay_schedule(p.warmup, p.steps)
    tx_main = _adamw(p.learning_rate, schedule, c.weight_decay)
    tx_reg = lagrangian.optimizer(p.reg_learning_rate, schedule)
    key = jax.random.key(config.seed)
    r = layer_copies(config, t_cfg.num_layers)  # 1: the student is the whole teacher
    s_cfg = t_cfg.replace(num_layers=t_cfg.num_layers // r)

    def init(t_params):
        gates = hardconcrete.init_gates(
            jax.random.fold_in(key, 1),
            s_cfg.conv_dim,
            s_cfg.num_layers,
            s_cfg.num_heads,
            s_cfg.intermediate_size,
            units(config),
        )
        d = t_cfg.hidden_size
        heads = objective.init_heads(jax.random.fold_in(key, 2), spec, d, d)
        student = every_rth_layer(t_params, r)
        return objective.init_state(student, heads, gates, tx_main, tx_reg)

    step = objective.make_train_step(
        t_cfg,
        s_cfg,
        student_spec(config, r),
        tx_main,
        tx_reg,
        p.target_sparsity,
        p.sparsity_warmup,
        c.clip_norm,
        target_spec=spec,
        layer_copies=r,
    )
    lr = lambda s: p.learning_rate * float(schedule(s))  # noqa: E731
    return dict(
        fresh=lambda: _copy(init(t_host)),
        init=init,
        step=step,
        steps=p.steps,
        key=jax.random.fold_in(key, 10),
        lr=lr,
        cfg=s_cfg,
        teacher_cfg=t_cfg,
    )


def _final_setup(config, workdir: epath.Path, t_cfg: EncoderConfig, spec) -> dict[str, Any]:
    """Fresh state and step of the final distillation (final_distill.py L61-128)."""
    cfg, tree = store.load_model(workdir / "pruned")
    mask = prune.removed_blocks_mask(cfg, tree["student"])  # removed blocks stay removed
    setup = _final_step(config, t_cfg, cfg, spec, mask)
    setup["fresh"] = lambda: _copy(setup["init"](tree["student"], tree["heads"]))
    return setup


def _final_step(config, t_cfg: EncoderConfig, cfg: EncoderConfig, spec, mask=None) -> dict:
    """The final distillation's step and optimizer for a pruned model of config `cfg`."""
    f = config.final
    schedule = objective.linear_decay_schedule(f.warmup, f.steps)
    tx = _adamw(f.learning_rate, schedule, config.dp.weight_decay)
    step = objective.make_distill_step(t_cfg, cfg, spec, tx, config.dp.clip_norm, mask)
    lr = lambda s: f.learning_rate * float(schedule(s))  # noqa: E731
    key = jax.random.fold_in(jax.random.key(config.seed), 20)
    init = lambda student, heads: objective.init_distill_state(student, heads, tx)  # noqa: E731
    return dict(init=init, step=step, steps=f.steps, key=key, lr=lr, cfg=cfg, teacher_cfg=t_cfg)


def _adamw(lr: float, schedule, weight_decay: float) -> optax.GradientTransformation:
    """torch.optim.AdamW's defaults (betas 0.9/0.999, eps 1e-8) at lr x their schedule."""
    return optax.adamw(lambda n: lr * schedule(n), 0.9, 0.999, 1e-8, weight_decay=weight_decay)


def _copy(tree: Any) -> Any:
    """Fresh device arrays, one per leaf (the state is donated: no leaf may alias another)."""
    return jax.tree_util.tree_map(lambda x: jnp.array(np.asarray(x)), tree)


# ---------------------------------------------------------------------- a training stage


def _train_stage(config, workdir: epath.Path, name: str, setup: dict, t_params) -> bool:
    """Runs stage `name` to its last step from its newest checkpoint; True if preempted."""
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    mesh = _mesh(config)
    data_cfg = data_config.for_run(config.data, workdir)
    data_cfg.batch_size = config.batch_size // jax.process_count()  # this process's rows
    data_iter = data_lib.make_loader(
        data_cfg,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    ckpt = checkpoint.Checkpointer(folder, config.checkpoint_every, config.keep_checkpoints)
    view = _View(folder, name, setup["steps"])
    try:
        state = setup["fresh"]()
        st_sh = _shardings(config, state)
        state = jax.device_put(state, st_sh)
        past, past_compile = 0.0, 0.0
        latest = ckpt.latest_step()
        if latest is not None:
            meta = ckpt.restore_meta(latest)
            state = ckpt.restore(latest, _abstract(state, st_sh), data_iter)
            past = meta["seconds"]
            past_compile = meta.get("compile_seconds", 0.0)
            log.info("%s: resumed from step %d", name, latest)
        step_no = int(state.step)
        if jax.process_index() == 0:
            store.truncate_metrics(folder / "metrics.jsonl", step_no)
        view.start(step_no)
        t_sh = jax.tree_util.tree_map(lambda x: x.sharding, t_params)
        step_fn = _jit(setup, mesh, st_sh, t_sh)
        batch_sh = sharding.batch_sharding(mesh)
        compiled, shape, compile_s = None, None, 0.0  # ahead for the first batch's shape
        start, preempted = time.monotonic(), False
        with distributed.Preemption() as preemption:
            while step_no < setup["steps"]:
                if preemption.stop_before(step_no):
                    preempted = True
                    break
                local = next(data_iter)
                key = jax.random.fold_in(setup["key"], step_no)
                batch = data_lib.to_global({k: local[k] for k in ("audio", "lengths")}, batch_sh)
                args = (state, t_params, batch["audio"], batch["lengths"], key)
                if compiled is None:
                    clock, shape = time.monotonic(), args[2].shape
                    compiled = step_fn.lower(*args).compile()
                    compile_s = time.monotonic() - clock
                    log.info("%s: step compiled in %.1fs", name, compile_s)
                state, metrics = (compiled if args[2].shape == shape else step_fn)(*args)
                step_no += 1
                view.step()
                if step_no % config.log_every == 0 or step_no == setup["steps"]:
                    _log(folder, name, step_no, setup, metrics, view)
                seconds = past + time.monotonic() - start
                meta = {"step": step_no, "stage": STAGES.index(name), "seconds": seconds}
                meta["compile_seconds"] = past_compile + compile_s
                ckpt.save(step_no, state, data_iter, meta, config.to_dict())
            seconds = past + time.monotonic() - start
            meta = {"step": step_no, "stage": STAGES.index(name), "seconds": seconds}
            meta["compile_seconds"] = past_compile + compile_s
            if ckpt.latest_step() != step_no:
                ckpt.save(step_no, state, data_iter, meta, config.to_dict(), force=True)
    finally:
        ckpt.close()
        view.close()
    if preempted:
        log.warning("%s: preempted at step %d, checkpoint saved; rerun to resume", name, step_no)
        return True
    last = store.last_metrics(folder / "metrics.jsonl")
    # seconds: the stage's wall-clock over every run of it; compile_seconds: its part spent
    # compiling the step ahead (one compile per run: a resumed stage compiles again)
    record = {"steps": step_no, "seconds": seconds, "compile_seconds": meta["compile_seconds"]}
    record["metrics"] = last
    # final: DONE once its params are written (run)
    path = folder / (DONE if name == "prune" else "progress.json")
    _written(f"{name}-done", path, lambda: store.write_json(path, record))
    return False


class _View:
    """What a person watches: a progress bar on a terminal (a log file gets the lines) and
    TensorBoard events in <stage>/tensorboard, as a distillation run's (`writers.RunWriter`)."""

    def __init__(self, folder: epath.Path, name: str, steps: int):
        self.folder, self.name, self.steps = folder, name, steps
        self.bar = self.tb = None

    def start(self, step: int) -> None:
        if jax.process_index() != 0:
            return
        from tensorboardX import SummaryWriter
        from tqdm import tqdm

        self.tb = SummaryWriter(str(self.folder / "tensorboard"))
        self.bar = tqdm(
            total=self.steps, initial=step, unit="step", desc=self.name, disable=None,
            dynamic_ncols=True,
        )  # fmt: skip

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        for handle in (self.bar, self.tb):
            if handle is not None:
                handle.close()


def _log(folder: epath.Path, name: str, step: int, setup: dict, metrics: dict, view: _View) -> None:
    """One metrics line (host floats) to <stage>/metrics.jsonl, TensorBoard and the console
    (and the bar's loss); a non-finite loss raises."""
    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
    bad = sorted(k for k, v in host.items() if k.startswith("loss") and not np.isfinite(v))
    if bad:
        raise FloatingPointError(f"{name}: non-finite {', '.join(bad)} at step {step}")
    host["lr"] = setup["lr"](step - 1)
    if view.tb is None:  # not process 0
        return
    with (folder / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": step, **host}) + "\n")
    for k, v in host.items():
        view.tb.add_scalar(k, v, step)
    view.tb.flush()
    view.bar.set_postfix({"loss": f"{host['loss']:.4g}"}, refresh=False)
    extra = f" sparsity {host['sparsity_expected']:.3f}" if "sparsity_expected" in host else ""
    log.info("%s step %d/%d: loss %.4f%s", name, step, setup["steps"], host["loss"], extra)


def _jit(setup: dict, mesh: jax.sharding.Mesh, st_sh: Any, t_sh: Any):
    """The stage's step jitted for `mesh` (state donated, batch split, key and metrics
    replicated); traced under the mesh when an encoder runs Pallas's flash attention (its
    kernels then run per device, as a distillation run's: `stage.under_mesh`)."""
    step = setup["step"]
    if "flash" in (setup["cfg"].attention, setup["teacher_cfg"].attention):
        step = stage_lib.under_mesh(step, mesh)
    batch_sh, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(st_sh, t_sh, batch_sh, batch_sh, rep),
        out_shardings=(st_sh, rep),
        donate_argnums=0,
    )


def _abstract(state: Any, shardings: Any) -> Any:
    """Shapes, dtypes and shardings of `state` (an orbax restore target)."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )


def _restore(config, workdir: epath.Path, name: str, setup: dict) -> Any:
    """The trainables of stage `name`'s newest checkpoint (its last step once it is done)."""
    ckpt = checkpoint.Checkpointer(workdir / name, config.checkpoint_every, 1)
    try:
        step = ckpt.latest_step()
        fresh = setup["fresh"]()
        target = _abstract(fresh, _shardings(config, fresh))
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
        return ckpt.manager.restore(step, args=args)["state"].trainable
    finally:
        ckpt.close()


# ---------------------------------------------------------------------- the prune step


def _prune_step(config, workdir: epath.Path, t_cfg: EncoderConfig, t_host, spec) -> None:
    """prune.py on the pruning stage's last state: pruned/ (config, params, heads, sizes)."""
    start = time.monotonic()
    setup = _prune_setup(config, t_cfg, t_host, spec)
    trainable = _host(_restore(config, workdir, "prune", setup))
    s_cfg = setup["cfg"]  # the pruning stage's student: every r-th teacher layer
    r = t_cfg.num_layers // s_cfg.num_layers
    det = hardconcrete.deterministic_gates(trainable["gates"])
    kept = prune.kept_units(s_cfg, det)
    cfg, student = prune.prune(s_cfg, trainable["student"], trainable["gates"], config.prune.conv)
    cfg, student = prune.shrink_ffn(cfg, student)
    if r > 1:  # pruning with stacking: each pruned layer grows into r adjacent copies
        student, cfg = grow_back(student, r), cfg.replace(num_layers=t_cfg.num_layers)
        kept = {k: v if k == "conv_channels" else np.repeat(v, r) for k, v in kept.items()}
    folder = workdir / "pruned"
    before, total = float(params.count(s_cfg)), params.teacher_num_params(t_cfg)
    after = float(params.count(t_cfg, **kept))
    expected = params.expected_sparsity(s_cfg, trainable["gates"], r)
    record = {
        "params_before": int(round(before)),
        "params_after": int(round(after)),
        "teacher_num_params": total,
        "sparsity": 1.0 - after / total,
        "expected_sparsity": float(expected),
        "depth": {"pruned": s_cfg.num_layers, "final": cfg.num_layers},
        "array_params": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(student))),
        "kept": {k: np.asarray(v).astype(int).tolist() for k, v in kept.items()},
        "seconds": time.monotonic() - start,
    }
    log.info(
        "pruned: %d -> %d params (sparsity %.3f of the teacher's %d)",
        record["params_before"],
        record["params_after"],
        record["sparsity"],
        total,
    )

    def write():
        store.save_model(folder, cfg, {"student": student, "heads": trainable["heads"]})
        store.write_json(folder / DONE, record)

    _written("pruned", folder / DONE, write)


# ---------------------------------------------------------------------- summary


def _summary(config, workdir: epath.Path, status: str) -> dict[str, Any]:
    """summary.json: status, params before / after pruning, each stage's wall-clock."""
    done = {s: store.read_json(workdir / s / DONE) for s in STAGES}
    pruned = done["pruned"]
    summary = {
        "recipe": "dp",
        "status": status,
        "teacher": config.teacher.name,
        "params": {
            k: pruned.get(k)
            for k in ("teacher_num_params", "params_before", "params_after", "sparsity")
        },
        "target_sparsity": config.prune.target_sparsity,
        "depth": pruned.get("depth"),  # the pruning stage's student and the final model
        "seconds": {s: done[s].get("seconds") for s in STAGES},
        "compile_seconds": {s: done[s].get("compile_seconds") for s in ("prune", "final")},
        "steps": {s: done[s].get("steps") for s in ("prune", "final")},
        "final_metrics": done["final"].get("metrics", {}),
    }
    if jax.process_index() == 0:
        store.write_json(workdir / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------- --mode=compile


TRAINED = ("prune", "final")  # the stages that train: --mode=compile's two steps


def compile_stages(
    config: ml_collections.ConfigDict,
    tgt: Any,
    t_cfg: EncoderConfig,
    report,
    picks: list[int] | None = None,
) -> list[dict[str, Any]]:
    """--mode=compile of the pipeline (`aot.py`): its two training steps compiled for `tgt`'s
    devices (a TPU topology without a TPU, or the local ones) as `run` would compile them,
    for the teacher `t_cfg`; each `report(compiled, tgt, config, stage=, depth=, steps=,
    flops=, compile_seconds=)` (`aot.report`: HBM, the cost model's estimates).

    The pruning step is the run's (the gated teacher-sized student, or `prune.depth`'s). The
    final step's widths come from the pruning, which has not run: it is compiled at the
    unpruned widths, the largest the pruned model can have (an upper bound on its memory
    and time). `picks`: the indices into TRAINED to compile (default both).
    """
    from stackdistill import flops

    validate(config)
    devices = len(tgt.devices)
    if config.batch_size % devices:
        raise ValueError(
            f"config.batch_size={config.batch_size} does not split over the {devices} devices "
            f"of {tgt.name}: make it a multiple of them"
        )
    spec = distill_spec(config)
    student_spec(config, layer_copies(config, t_cfg.num_layers))  # refuses a bad prune.depth
    mesh = sharding.make_mesh(config.get("mesh") or sharding.default_config(), tgt.devices)
    t_params = jax.eval_shape(lambda: models_lib.init_params(t_cfg, jax.random.key(0)))
    d = t_cfg.hidden_size
    heads = jax.eval_shape(lambda: objective.init_heads(jax.random.key(0), spec, d, d))
    prune_setup = _prune_setup(config, t_cfg, t_params, spec)
    final_setup = _final_step(config, t_cfg, t_cfg, spec)
    stages = (
        (TRAINED[0], prune_setup, lambda: jax.eval_shape(prune_setup["init"], t_params)),
        (TRAINED[1], final_setup, lambda: jax.eval_shape(final_setup["init"], t_params, heads)),
    )
    t_sh = _shardings(config, t_params, mesh)
    batch_sh, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    b, n = config.batch_size, config.data.max_samples
    inputs = (
        _abstract(t_params, t_sh),
        jax.ShapeDtypeStruct((b, n), np.float32, sharding=batch_sh),
        jax.ShapeDtypeStruct((b,), np.int32, sharding=batch_sh),
        jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=rep),
    )
    reports = []
    for index, (name, setup, init) in enumerate(stages):
        if picks is not None and index not in picks:
            continue
        state = init()
        st_sh = _shardings(config, state, mesh)
        start = time.perf_counter()
        compiled = _jit(setup, mesh, st_sh, t_sh).lower(_abstract(state, st_sh), *inputs).compile()
        seconds = time.perf_counter() - start
        step_flops = flops.step_flops(t_cfg, setup["cfg"], b, n, len(spec.layer_groups))
        r = report(
            compiled, tgt, config, stage=index, depth=setup["cfg"].num_layers,
            steps=setup["steps"], flops=step_flops, compile_seconds=seconds,
        )  # fmt: skip
        reports.append({"name": name, **r})
    return reports
