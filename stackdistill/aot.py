"""--mode=compile: will the run fit, and how fast would it be? Compiled for a TPU, without one.

    python -m stackdistill.main --config=configs/wavlm_base.py --workdir=DIR --mode=compile \\
        --config.compile.topology=v5e-16

For every stage depth of the run (or `config.compile.stages`), compiles exactly the train
step the run would compile (stage.py's setup and compile_step, as train.py uses them: mesh
rules, dtype, remat, fast path, global batch, crop) for the named TPU topology with libtpu's
compile-only devices (MaxText's train_compile), or for the local devices when the topology
is "". Prints one line per stage and writes `compile.json`: fits or not against the chip's
HBM and the HBM breakdown, then estimates of XLA's cost model (not measurements): step time,
audio-seconds per second per chip, MFU against the chip's bf16 peak, and the chip-hours of
the whole run. A config that
does not fit is refused, naming the stage and by how much.

The teacher's weights are not needed: its architecture comes from `config.teacher.random_arch`,
a local directory's config.json, or `KNOWN_TEACHERS`, and its params are `jax.eval_shape`d.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from typing import Any

import jax
import ml_collections

from stackdistill import chips, costmodel, fastpath, sharding, stacking
from stackdistill import models as models_lib
from stackdistill import stage as stage_lib
from stackdistill.models.config import EncoderConfig

log = logging.getLogger("stackdistill")
SAMPLE_RATE = 16_000
MAX_BATCH, MAX_BATCH_PROBES = 4096, 8  # find_batch's range and compiles
DISCLAIMER = (
    "estimates of XLA's TPU cost model for the compiled step, not measurements: the step time is "
    "a roofline (its flops at the chip's peak or its HBM traffic at full bandwidth, whichever is "
    "longer; a lower bound), the HBM traffic read off the compiled program's buffers (VMEM ones "
    "excluded); step_seconds_all_bytes counts every buffer as HBM, as XLA's bytes accessed does"
)

_BASE = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    conv_dim=[512] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
    conv_bias=False, feat_extract_norm="group", num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16, do_stable_layer_norm=False, layer_norm_eps=1e-5,
)  # fmt: skip
# The architecture fields of the hub teachers' config.json
# (https://huggingface.co/<id>/blob/main/config.json), for compiling without downloading them.
KNOWN_TEACHERS = {
    "facebook/hubert-base-ls960": {**_BASE, "model_type": "hubert", "feat_proj_layer_norm": True},
    "microsoft/wavlm-base-plus": {
        **_BASE, "model_type": "wavlm", "num_buckets": 320, "max_bucket_distance": 800,
    },
    "facebook/wav2vec2-xls-r-300m": {
        **_BASE, "model_type": "wav2vec2", "hidden_size": 1024, "num_hidden_layers": 24,
        "num_attention_heads": 16, "intermediate_size": 4096, "conv_bias": True,
        "feat_extract_norm": "layer", "do_stable_layer_norm": True,
    },
}  # fmt: skip


def default_config() -> ml_collections.ConfigDict:
    """What --mode=compile compiles for: topology ("" = local devices), stages, batch search."""
    c = ml_collections.ConfigDict()
    c.topology = ""  # "v5e-16", "v5litepod-16", "v4-8", "v5p-8", "v6e-8", "v5e:4x4"; "": local
    c.stages = ()  # stage indices to compile; (): all; (-1,): the deepest
    c.find_batch = False  # also report the largest per-chip batch that fits (more compiles)
    c.hbm_bytes = 0  # per-device memory to fit in (0: the chip's HBM)
    c.top_ops = 0  # > 0: compile.json lists the N source ops with the most bytes (costmodel.top)
    c.hlo_dir = ""  # a folder: each compiled step's optimized HLO text (costmodel reads it again)
    return c


@dataclasses.dataclass(frozen=True)
class Target:
    """What is compiled for: devices, their memory and peak, and the chips they make up."""

    name: str
    devices: list
    chip: chips.Chip | None
    num_chips: int
    hbm_bytes: int | None  # per device

    @property
    def peak_flops(self) -> float | None:
        """Dense bf16 FLOP/s per device."""
        return self.chip.peak_bf16_flops * self.num_chips / len(self.devices) if self.chip else None

    @property
    def hbm_bytes_per_s(self) -> float | None:
        """HBM bandwidth per device."""
        return self.chip.hbm_bytes_per_s * self.num_chips / len(self.devices) if self.chip else None


def target(c: ml_collections.ConfigDict) -> Target:
    """The devices of config.compile.topology (compile-only TPU ones) or the local devices."""
    override = int(c.get("hbm_bytes", 0) or 0)
    if c.topology:
        topo = chips.topology(c.topology)
        # jax 0.10.2 writes compile-only executables to the persistent cache but cannot read
        # them back ("PjRtCompiler must be constructed with a Client"): skip the cache.
        jax.config.update("jax_enable_compilation_cache", False)
        devices = chips.devices(topo)
        hbm = override or topo.chip.hbm_bytes * topo.num_chips // len(devices)
        return Target(topo.name, devices, topo.chip, topo.num_chips, hbm)
    devices = jax.devices()
    kind = devices[0].device_kind.lower()
    chip = next((ch for key, ch in _LOCAL_KINDS if key in kind), None)
    stats = devices[0].memory_stats() or {}
    hbm = override or stats.get("bytes_limit") or (chip.hbm_bytes if chip else None)
    return Target(f"local {devices[0].device_kind}", devices, chip, len(devices), hbm)


_LOCAL_KINDS = (  # device_kind -> chip (most specific first)
    ("v6 lite", chips.CHIPS["v6e"]),
    ("v5 lite", chips.CHIPS["v5e"]),
    ("v5", chips.CHIPS["v5p"]),
    ("v4", chips.CHIPS["v4"]),
)


def teacher_shapes(config: ml_collections.ConfigDict) -> tuple[EncoderConfig, Any]:
    """The run's teacher config and its params as ShapeDtypeStructs (no weights read)."""
    cfg = teacher_config(config)
    if max(config.distill.teacher_layers) > cfg.num_layers:
        raise ValueError(
            f"config.distill.teacher_layers={tuple(config.distill.teacher_layers)} asks for "
            f"layers beyond the teacher's {cfg.num_layers}"
        )
    params = jax.eval_shape(lambda: models_lib.init_params(cfg, jax.random.key(0)))
    return cfg, params


def teacher_config(config: ml_collections.ConfigDict) -> EncoderConfig:
    """The run's teacher architecture (random_arch, config.json or KNOWN_TEACHERS), with the
    run's dtype and fast-path options for the target's platform."""
    t = config.teacher
    if t.random_arch:
        cfg = EncoderConfig(**dict(t.random_arch))
    else:
        path = pathlib.Path(t.name).expanduser()
        if (path / "config.json").is_file():
            hf = json.loads((path / "config.json").read_text())
        elif t.name in KNOWN_TEACHERS:
            hf = KNOWN_TEACHERS[t.name]
        else:
            raise ValueError(
                f"config.teacher.name={t.name!r}: --mode=compile needs its architecture: a "
                "directory with config.json, or one of " + ", ".join(sorted(KNOWN_TEACHERS))
            )
        cfg = EncoderConfig.from_hf(hf)
    platform = "tpu" if (config.get("compile") or default_config()).topology else None
    return cfg.replace(dtype=config.dtype, **fastpath.encoder_options(config, platform))


def _setup(config, tgt: Target, t_cfg: EncoderConfig) -> stage_lib.Setup:
    """train.py's setup for this config on the target's devices (remat sized for its HBM)."""
    mesh = sharding.make_mesh(config.mesh, tgt.devices)
    return stage_lib.make_setup(config, mesh, t_cfg, tgt.hbm_bytes)


def _state_shapes(setup: stage_lib.Setup, stage: stacking.Stage, t_params) -> Any:
    """The train state at `stage` as ShapeDtypeStructs: fresh, then grown stage by stage."""
    first = jax.eval_shape(lambda tp: stage_lib.init_state(setup, tp), t_params)
    return stage_lib.shapes_at(setup, first, stage.index)


def compile_stage(setup: stage_lib.Setup, stage: stacking.Stage, t_params, tgt: Target) -> dict:
    """Compiles the stage's train step (stage.compile_step) and reports memory and estimates."""
    record = stage_lib.record(setup, stage)
    state = _state_shapes(setup, stage, t_params)
    t_in = {} if setup.use_targets else t_params
    start = time.perf_counter()
    quiet = log.level
    log.setLevel(logging.WARNING)  # compile_step's own line: ours says more
    try:
        compiled, _ = stage_lib.compile_step(setup, record, state, t_in)
    finally:
        log.setLevel(quiet)
    seconds = time.perf_counter() - start
    c, stage = setup.config, record.stage
    return report(
        compiled,
        tgt,
        c,
        stage=stage.index,
        depth=stage.depth,
        steps=stage.end_step - stage.start_step,
        flops=record.flops,
        compile_seconds=seconds,
    )


def report(
    compiled: Any,
    tgt: Target,
    c: ml_collections.ConfigDict,
    *,
    stage: int,
    depth: int,
    steps: int,
    flops: float,
    compile_seconds: float,
) -> dict:
    """compile.json's entry of one compiled train step: HBM against the target's, and the cost
    model's estimates for `steps` steps of global batch `c.batch_size` x `c.data.max_samples`;
    `flops` is the step's analytic count (MFU's numerator)."""
    m = compiled.memory_analysis()
    hbm = {
        "arguments": int(m.argument_size_in_bytes),
        "outputs": int(m.output_size_in_bytes),
        "temporaries": int(m.temp_size_in_bytes),
        "code": int(m.generated_code_size_in_bytes),
        "aliased": int(m.alias_size_in_bytes),  # donated state reused for the output
    }
    hbm["total"] = hbm["arguments"] + hbm["outputs"] + hbm["temporaries"] + hbm["code"]
    hbm["total"] -= hbm["aliased"]
    text = compiled.as_text()  # read once: the estimate, top_ops, hlo_dir
    cost = costmodel.estimate(compiled, text)
    devices = len(tgt.devices)
    out: dict[str, Any] = {
        "stage": stage,
        "depth": depth,
        "steps": steps,
        "batch_per_device": c.batch_size // devices,
        "compile_seconds": round(compile_seconds, 1),
        "hbm_per_device_bytes": hbm,
        "hbm_limit_bytes": tgt.hbm_bytes,
        "fits": None if tgt.hbm_bytes is None else hbm["total"] <= tgt.hbm_bytes,
        "estimate": {
            "flops_per_device": cost.flops,
            "hbm_bytes_per_device": cost.hbm_bytes,  # the HBM traffic (costmodel._hbm_bytes)
            "bytes_accessed_per_device": cost.bytes_accessed,  # XLA's: VMEM counted as HBM
            "analytic_flops_per_device": flops / devices,
            "xla_flops_loops_once": cost.xla_flops,
            "xla_optimal_seconds_loops_once": cost.xla_optimal_seconds,
            "loops": [list(x) for x in cost.loops],
        },
    }
    if tgt.peak_flops and tgt.hbm_bytes_per_s:
        e = out["estimate"]
        step = cost.roofline_seconds(tgt.peak_flops, tgt.hbm_bytes_per_s)
        audio = c.batch_size * c.data.max_samples / SAMPLE_RATE
        e["step_seconds"] = step  # the roofline of the HBM traffic: a lower bound
        e["bound"] = "compute" if cost.flops / tgt.peak_flops >= step else "memory"
        e["step_seconds_all_bytes"] = cost.all_bytes_seconds(tgt.peak_flops, tgt.hbm_bytes_per_s)
        e["mfu"] = flops / devices / step / tgt.peak_flops
        e["audio_s_per_s_per_chip"] = audio / step / tgt.num_chips
        e["chip_hours"] = out["steps"] * step * tgt.num_chips / 3600
    cc = c.get("compile") or {}
    top_ops = int(cc.get("top_ops", 0) or 0)
    if top_ops:  # where the bytes and flops go: the optimisation loop's map
        out["top_ops"] = costmodel.top(text, top_ops)
    if cc.get("hlo_dir"):  # for costmodel.hbm_bytes / top without compiling again
        path = pathlib.Path(cc.hlo_dir).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        name = path / f"stage{stage}_batch{out['batch_per_device']}.hlo.txt"
        name.write_text(text)
        out["hlo_file"] = str(name)
    return out


def _gb(n: float) -> str:
    """Bytes as GB, or MB below one GB."""
    return f"{n / 1e9:.2f} GB" if abs(n) >= 1e9 else f"{n / 1e6:.1f} MB"


def _ms(seconds: float) -> str:
    """Milliseconds, one decimal from 1 ms up, three significant digits below."""
    ms = seconds * 1e3
    return f"{ms:.1f} ms" if ms >= 1 else f"{ms:.3g} ms"


def _flop(n: float) -> str:
    return f"{n / 1e12:.2f} TFLOP" if n >= 1e12 else f"{n / 1e9:.3g} GFLOP"


def stage_line(r: dict, tgt: Target) -> str:
    """One console line for a compiled stage."""
    h = r["hbm_per_device_bytes"]
    limit = r["hbm_limit_bytes"]
    if r["fits"] is None:
        fit = f"HBM {_gb(h['total'])} per device (no limit known)"
    else:
        verdict = "fits" if r["fits"] else "DOES NOT FIT"
        fit = f"{verdict}: HBM {_gb(h['total'])} of {_gb(limit)} per device"
    fit += f" (args {_gb(h['arguments'])}, temp {_gb(h['temporaries'])}, out {_gb(h['outputs'])})"
    e = r["estimate"]
    speed = f"{_flop(e['flops_per_device'])}/device"
    if "step_seconds" in e:
        speed = (
            f"est. (XLA cost model) {_ms(e['step_seconds'])}/step {e['bound']}-bound, "
            f"MFU {e['mfu']:.1%}, {e['audio_s_per_s_per_chip']:.0f} audio-s/s/chip, {speed}, "
            f"{_gb(e['hbm_bytes_per_device'])} HBM traffic (VMEM as HBM: "
            f"{_ms(e['step_seconds_all_bytes'])})"
        )
    return (
        f"compile {tgt.name}: stage {r['stage']} depth {r['depth']} batch "
        f"{r['batch_per_device']}/device: {fit}; {speed}; compiled in {r['compile_seconds']}s"
    )


def _selected(stages: list, picks) -> list:
    if not picks:
        return stages
    try:
        return [stages[i] for i in sorted({i % len(stages) for i in picks}) if -len(stages) <= i]
    except (IndexError, TypeError):
        raise ValueError(
            f"config.compile.stages={tuple(picks)}: the run has stages 0-{len(stages) - 1}"
        ) from None


def _find_batch(config, tgt: Target, stage_total, stage_index: int) -> dict:
    """The largest per-device batch whose step fits, in a few compiles (`stage_total(c)`:
    the per-device HBM of the stage compiled for config `c`).

    Two compiles (the run's batch and twice it) give memory as a line in the batch; its
    crossing with the HBM limit is checked (then doubled while it fits: memory often grows
    less than linearly), then bisected between the largest batch that fits and the smallest
    that does not, to within 1/32 or `MAX_BATCH_PROBES` compiles.
    """
    if tgt.hbm_bytes is None:
        raise ValueError("config.compile.find_batch: the devices report no memory limit")
    totals: dict[int, int] = {}

    def total(per_device: int) -> int:
        if per_device not in totals:
            c = config.copy_and_resolve_references()
            c.batch_size = per_device * len(tgt.devices)
            totals[per_device] = stage_total(c)
            log.info("find_batch: %d per device: %s", per_device, _gb(totals[per_device]))
        return totals[per_device]

    def fits(b: int) -> bool:
        return total(b) <= tgt.hbm_bytes

    b0 = max(1, config.batch_size // len(tgt.devices))
    per_sample = max(1.0, (total(2 * b0) - total(b0)) / b0)
    guess = max(1, min(MAX_BATCH, int((tgt.hbm_bytes - total(b0)) / per_sample) + b0))
    fitting = [b for b in totals if fits(b)] + ([guess] if fits(guess) else [])
    lo = max(fitting, default=0)
    hi = min((b for b in totals if not fits(b)), default=None)
    while hi is None and len(totals) < MAX_BATCH_PROBES and lo < MAX_BATCH:
        step = min(MAX_BATCH, max(lo + 1, 2 * lo))
        lo, hi = (step, None) if fits(step) else (lo, step)
    while hi is not None and hi - lo > max(1, lo // 32) and len(totals) < MAX_BATCH_PROBES:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return {
        "stage": stage_index,
        "largest_batch_per_device": lo,
        "smallest_not_fitting": hi,
        "hbm_per_device_bytes_by_batch": {str(b): totals[b] for b in sorted(totals)},
    }


def compile_run(config: ml_collections.ConfigDict) -> dict:
    """Compiles the selected stages of the run for config.compile; returns compile.json's dict."""
    cc = config.get("compile") or default_config()
    tgt = target(cc)
    if tgt.hbm_bytes is None:
        log.warning("compile: %s reports no memory limit: fit not checked", tgt.name)
    if config.get("recipe", "") == "dp":  # DPHuBERT's pipeline: its two training steps
        from stackdistill.pruning import pipeline

        t_cfg = teacher_config(config)
        picks = _selected(list(range(len(pipeline.TRAINED))), tuple(cc.stages))
        reports = pipeline.compile_stages(config, tgt, t_cfg, report, picks)
        for r in reports:
            log.info("%s (%s)", stage_line(r, tgt), r["name"])
        out = _summary(config, tgt, reports, len(pipeline.TRAINED))
        if cc.find_batch:
            last = reports[-1]["stage"]

            def dp_total(c):
                r = pipeline.compile_stages(c, tgt, t_cfg, report, [last])[0]
                return r["hbm_per_device_bytes"]["total"]

            out["find_batch"] = _find_batch(config, tgt, dp_total, last)
        return out
    t_cfg, t_params = teacher_shapes(config)
    setup = _setup(config, tgt, t_cfg)
    reports = []
    for stage in _selected(setup.stages, tuple(cc.stages)):
        r = compile_stage(setup, stage, t_params, tgt)
        log.info("%s", stage_line(r, tgt))
        reports.append(r)
    out = _summary(config, tgt, reports, len(setup.stages))
    if cc.find_batch:
        last = reports[-1]["stage"]

        def total(c):
            s = _setup(c, tgt, t_cfg)
            r = compile_stage(s, s.stages[last], t_params, tgt)
            return r["hbm_per_device_bytes"]["total"]

        out["find_batch"] = _find_batch(config, tgt, total, last)
    return out


def _summary(config, tgt: Target, reports: list[dict], num_stages: int | None) -> dict:
    """compile.json: the target, the run's batch, each compiled stage, the run's chip-hours
    when every stage was compiled (`num_stages` None: `reports` is the whole run)."""
    out: dict[str, Any] = {
        "note": DISCLAIMER,
        "topology": tgt.name,
        "chip": tgt.chip.name if tgt.chip else None,
        "num_chips": tgt.num_chips,
        "num_devices": len(tgt.devices),
        "hbm_per_device_bytes": tgt.hbm_bytes,
        "peak_bf16_flops_per_device": tgt.peak_flops,
        "global_batch": config.batch_size,
        "crop_samples": config.data.max_samples,
        "dtype": config.dtype,
        "stages": reports,
        "fits": all(r["fits"] is not False for r in reports),
    }
    whole = num_stages is None or len(reports) == num_stages
    if whole and all("chip_hours" in r["estimate"] for r in reports):
        out["run_chip_hours"] = sum(r["estimate"]["chip_hours"] for r in reports)
    return out


def not_fitting(out: dict) -> str | None:
    """The refusal for a run that does not fit: the first stage that does not and by how much."""
    for r in out["stages"]:
        if r["fits"] is False:
            total, limit = r["hbm_per_device_bytes"]["total"], r["hbm_limit_bytes"]
            return (
                f"stage {r['stage']} (depth {r['depth']}) does not fit on {out['topology']}: "
                f"{_gb(total)} per device, {_gb(total - limit)} over the {_gb(limit)} of HBM. "
                "Lower config.batch_size or config.data.max_samples, set "
                "config.remat, or shard params (config.mesh.params='fsdp')"
            )
    return None


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = "compile") -> dict:
    """--mode=compile: compiles every selected stage, writes compile.json, refuses a misfit."""
    del mode
    out = compile_run(config)
    path = pathlib.Path(workdir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    (path / "compile.json").write_text(json.dumps(out, indent=1))
    if "run_chip_hours" in out:
        log.info(
            "compile: the whole run (%d steps) est. %.3g %s chip-hours (%s); wrote %s",
            sum(r["steps"] for r in out["stages"]),
            out["run_chip_hours"],
            out["chip"],
            DISCLAIMER,
            path / "compile.json",
        )
    if "find_batch" in out:
        fb = out["find_batch"]
        log.info(
            "compile: largest batch that fits at stage %d: %d per device (%s)",
            fb["stage"],
            fb["largest_batch_per_device"],
            f"{fb['smallest_not_fitting']} does not"
            if fb["smallest_not_fitting"]
            else f"no larger one tried within {MAX_BATCH_PROBES} compiles",
        )
    refusal = not_fitting(out)
    if refusal:
        raise ValueError(refusal)
    return out
