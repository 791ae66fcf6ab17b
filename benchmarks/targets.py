"""Teacher targets: disk per audio-hour and step time, live teacher vs stored targets.

    python benchmarks/targets.py --parts=disk,step --big --workdir=/tmp/bench_targets

disk: builds the fixed-crop and whole-utterance targets of the offline demo (configs/demo.py:
  200 espeak-ng utterances, tiny random teacher) and reports bytes per audio-hour, measured
  and from the formula, plus the formula for HuBERT Base (3 x 768 targets, 512 CNN channels);
  then how far whole-utterance targets sit from live crop targets (the context effect).
step: seconds per full-depth (12-layer) step, timed alternately: live teacher vs stored
  targets, with the student's own CNN or the shared front-end (stored: CNN features read from
  disk), on the demo sizes and on a bigger CPU-sized pair (--big: teacher 12 x 256, CNN 128).
paper: the same step times at paper size (HuBERT Base + 12 x 384, 24 x 15.6 s; for a GPU).
quant: targets in int8 / float8 against bfloat16 (benchmarks/targets_8bit.py).
Whole runs against the 2x target: benchmarks/end_to_end.py.
Results go to stdout as markdown tables and to WORKDIR/results.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import statistics
import time

import harness
import jax
import jax.numpy as jnp
import numpy as np

HUBERT_BASE = dict(layers=3, hidden=768, conv=512)


def bytes_per_second(layers: int, hidden: int, conv: int, features: bool) -> float:
    """Stored bytes per second of audio: int16 audio + bf16 targets (+ features), 50 frames/s."""
    return 2 * 16000 + 2 * 50 * (layers * hidden + (conv if features else 0))


def paper_record_rate(num: int = 48) -> dict:
    """Host cost of one HuBERT Base-sized record (15.6 s): decode + crop/pad, ms per example."""
    from stackdistill.data import recordio
    from stackdistill.data import targets as stored
    from stackdistill.models.config import EncoderConfig

    rng = np.random.default_rng(0)
    arrays = {
        "audio": rng.integers(-3000, 3000, 250_000).astype(np.int16),
        "targets": rng.normal(size=(3, 780, 768)).astype(recordio.BFLOAT16),
        "features": rng.normal(size=(780, 512)).astype(recordio.BFLOAT16),
    }
    record = stored.encode_record("u", arrays, 780)
    meta = {
        "teacher_config": EncoderConfig().to_dict(),  # HuBERT Base
        "teacher_layers": [4, 8, 12],
        "mode": "fixed_crop",
    }
    crop = stored.CropExample(meta, (4, 8, 12), True, 250_000, False, 0, 0)
    start = time.perf_counter()
    for i in range(num):
        crop(i, stored.decode_record(record))
    ms = 1e3 * (time.perf_counter() - start) / num
    return {
        "targets": "HuBERT Base record, host decode + pad",
        "ms/example": round(ms, 2),
        "MB/record": round(len(record) / 1e6, 2),
    }


def disk(workdir: pathlib.Path) -> list[dict]:
    """Builds the demo's fixed-crop and whole targets; bytes per audio-hour, measured, formula."""
    from stackdistill import targets

    rows = []
    for mode in ("fixed_crop", "whole"):
        c = harness.demo_config(workdir, **{"targets.mode": mode})
        c.targets.dir = str(workdir / f"targets_{mode}_{c.data.max_samples}")
        meta = targets.build(c, workdir)
        on_disk = sum(p.stat().st_size for p in pathlib.Path(c.targets.dir).glob("*.*"))
        t = c.teacher.random_arch
        formula = bytes_per_second(3, t["hidden_size"], t["conv_dim"][-1], True)
        rows.append(
            {
                "targets": f"demo, {mode}",
                "records": meta["records"],
                "audio_s": round(meta["audio_seconds"], 1),
                "records MB": round(meta["bytes"] / 1e6, 2),
                "on disk MB (zstd)": round(on_disk / 1e6, 2),
                "GB/audio-h": round(on_disk / meta["audio_seconds"] * 3600 / 1e9, 3),
                "formula GB/audio-h": round(formula * 3600 / 1e9, 3),
                "build s": round(meta["build_seconds"], 1),
                "teacher s": round(meta["teacher_seconds"], 1),
            }
        )
    for features in (False, True):
        formula = bytes_per_second(**HUBERT_BASE, features=features)
        rows.append(
            {
                "targets": "HuBERT Base 4/8/12" + (" + CNN features" if features else ""),
                "formula GB/audio-h": round(formula * 3600 / 1e9, 3),
                "of which targets": round(2 * 50 * 3 * 768 * 3600 / 1e9, 3),
            }
        )
    return rows + [paper_record_rate()]


def context_effect(workdir: pathlib.Path, crop: int, max_crops: int = 48) -> list[dict]:
    """How far whole-utterance targets sit from live crop targets (utterances > one crop)."""
    from stackdistill import models, targets, teacher
    from stackdistill.data import targets as stored

    c = harness.demo_config(workdir, **{"data.max_samples": crop, "targets.mode": "whole"})
    c.targets.dir = str(workdir / f"targets_whole_{crop}")
    meta = targets.build(c, workdir)
    t_cfg, t_params = teacher.load(teacher.prepare(c.teacher, workdir))
    layers = meta["teacher_layers"]
    source = stored.TargetSource(c.targets.dir)
    cropper = stored.CropExample(meta, layers, False, c.data.max_samples, False, c.seed, 0)
    encode = jax.jit(lambda w, n: models.encode(t_cfg, t_params, w, n).hidden_states)
    long = [i for i in range(len(source)) if source[i]["num_samples"] > c.data.max_samples]
    sq_diff, sq_live, frames = np.zeros(len(layers)), np.zeros(len(layers)), 0
    for i in long[:max_crops]:
        example = cropper(i, source[i])
        n = int(example["lengths"])
        t = t_cfg.num_frames(n)
        live = np.asarray(encode(example["audio"][None], np.array([n])))
        for row, k in enumerate(layers):
            whole_td = example["targets"][row, :t].astype(np.float32)
            sq_diff[row] += np.sum(np.mean((whole_td - live[k, 0, :t]) ** 2, axis=-1))
            sq_live[row] += np.sum(np.mean(live[k, 0, :t] ** 2, axis=-1))
        frames += t
    return [
        {
            "crop samples": crop,
            "teacher layer": k,
            "utterances longer than a crop": f"{len(long)}/{len(source)}",
            "MSE(whole-utterance target, live crop target)": round(sq_diff[row] / frames, 4),
            "relative to mean square of target": round(sq_diff[row] / sq_live[row], 4),
        }
        for row, k in enumerate(layers)
    ]


def _label(cached: bool, shared: bool) -> str:
    return ("stored targets" if cached else "live teacher") + (
        " + shared front-end" if shared else ", own CNN"
    )


def time_steps(c, t_cfg, t_params, batch, cases, repeats: int, steps: int) -> dict:
    """Median seconds per step of each (cached, shared, depth) case, timed alternately."""
    import optax

    from stackdistill import distill, optim
    from stackdistill.models import student

    s_cfg = student.student_encoder_config(c.student, t_cfg)
    layers = tuple(c.distill.teacher_layers)
    schedule = optax.constant_schedule(1e-4)
    runs = {}
    for cached, shared, depth in cases:
        params = student.init_student(
            s_cfg.replace(num_layers=depth), jax.random.key(0), t_cfg, t_params, layers
        )
        sources = {4: max(depth // 3, 1), 8: max(2 * depth // 3, 1), 12: depth}
        tx = optim.make_optimizer(c.optim, schedule, frozen_frontend=shared)
        fn = distill.make_train_step(
            c.distill, t_cfg, s_cfg, sources, tx, schedule, shared, cached=cached
        )
        keys = ("audio", "lengths") + (("targets",) if cached else ())
        keys += ("features",) if cached and shared else ()
        inputs = {k: batch[k] for k in keys}
        jitted = jax.jit(fn, donate_argnums=0)
        # Fresh buffers: teacher-initialised leaves may alias t_params, and state is donated.
        state = distill.init_state(jax.tree_util.tree_map(jnp.array, params), tx, 1)
        for _ in range(2):  # compile and warm up
            state, metrics = jitted(state, t_params, inputs)
        jax.block_until_ready(metrics)
        runs[(cached, shared, depth)] = [jitted, state, inputs, []]
    for _ in range(repeats):  # alternate, so load from other jobs hits all cases alike
        for entry in runs.values():
            jitted, state, inputs, times = entry
            start = time.perf_counter()
            for _ in range(steps):
                state, metrics = jitted(state, t_params, inputs)
            jax.block_until_ready(metrics)
            times.append((time.perf_counter() - start) / steps)
            entry[1] = state
    return {case: statistics.median(entry[3]) for case, entry in runs.items()}


def step_times(workdir: pathlib.Path, big: bool, repeats: int, steps: int) -> list[dict]:
    """Seconds per full-depth step, live/stored x own CNN/shared, batches from real targets."""
    from stackdistill import targets, teacher
    from stackdistill.data import targets as stored

    name = "big" if big else "demo"
    c = harness.demo_config(workdir, big, **{"targets.dir": str(workdir / f"targets_step_{name}")})
    targets.build(c, workdir)
    t_cfg, t_params = teacher.load(teacher.prepare(c.teacher, workdir))
    c.student.frozen_shared_frontend = True
    data_cfg = copy.deepcopy(c.data)
    data_cfg.batch_size = c.batch_size
    # Audio for the live cases, the CNN features for the shared ones.
    loader = stored.make_loader(
        targets.location(c, workdir), data_cfg, c.distill.teacher_layers, True,
        seed=0, process_index=0, process_count=1, with_audio=True,
    )  # fmt: skip
    batch = jax.device_put(next(loader))
    cases = [(cached, shared, 12) for cached in (False, True) for shared in (False, True)]
    times = time_steps(c, t_cfg, t_params, batch, cases, repeats, steps)
    base = times[(False, False, 12)]
    rows = [
        {
            "config": name,
            "step": _label(cached, shared),
            "s/step": round(t, 4),
            "speed-up": round(base / t, 2),
        }
        for (cached, shared, _), t in times.items()
    ]
    load_rate = _loader_rate(loader, 20)
    rows.append({"config": name, "step": "targets loader alone", "s/step": round(load_rate, 4)})
    return rows


def paper_steps(repeats: int, steps: int, batch_size: int, max_samples: int) -> list[dict]:
    """HuBERT Base teacher (random weights) + the paper's 12 x 384 student, bfloat16, batches
    made in memory: ms/step per depth, and the projected 4-stage run time (steps only)."""
    from stackdistill import config as config_lib
    from stackdistill import models
    from stackdistill.models.config import EncoderConfig

    c = config_lib.base_config()
    c.dtype = "bfloat16"
    t_cfg = EncoderConfig(dtype="bfloat16")
    t_params = models.init_params(t_cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    lengths = rng.integers(max_samples // 2, max_samples + 1, batch_size).astype(np.int32)
    wav = (0.1 * rng.standard_normal((batch_size, max_samples))).astype(np.float32)
    wav[np.arange(max_samples)[None] >= lengths[:, None]] = 0.0
    out = jax.jit(lambda w, n: models.encode(t_cfg, t_params, w, n))(wav, lengths)
    ids = list(c.distill.teacher_layers)
    batch = {
        "audio": jnp.asarray(wav),
        "lengths": jnp.asarray(lengths),
        "targets": jnp.stack([out.hidden_states[k] for k in ids], 1).astype(jnp.bfloat16),
        "features": out.features.astype(jnp.bfloat16),
    }
    depths = (3, 6, 9, 12)
    cases = [(False, False, d) for d in depths] + [(True, True, d) for d in depths]
    cases += [(False, True, d) for d in depths] + [(True, False, 12)]
    times = time_steps(c, t_cfg, t_params, batch, cases, repeats, steps)
    rows = [
        {"config": "paper", "step": _label(ca, sh), "depth": d, "ms/step": round(1e3 * t, 2)}
        for (ca, sh, d), t in times.items()
    ]
    base = 4 * times[(False, False, 12)]  # no stacking: 4 stage-lengths at full depth
    for cached, shared in ((False, False), (False, True), (True, True)):
        staged = sum(times[(cached, shared, d)] for d in depths)
        rows.append(
            {
                "config": "paper",
                "step": "projected run: interleaved 3-6-9-12, " + _label(cached, shared),
                "speed-up vs none + live": round(base / staged, 2),
            }
        )
    return rows


def _loader_rate(loader, batches: int) -> float:
    """Seconds per batch of the targets' grain loader (host side only)."""
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return (time.perf_counter() - start) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="/tmp/bench_targets")
    parser.add_argument("--parts", default="disk,step")
    parser.add_argument("--crop", type=int, default=16000, help="context: max_samples")
    parser.add_argument("--big", action="store_true", help="step: also the bigger config")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timed-steps", type=int, default=5)
    args = parser.parse_args()
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results = {"uptime_before": os.popen("uptime").read().strip()}
    parts = args.parts.split(",")
    if "disk" in parts:
        results["disk"] = disk(workdir)
        print(harness.table(results["disk"]), flush=True)
        results["context"] = [r for m in (args.crop, 8000) for r in context_effect(workdir, m)]
        print(harness.table(results["context"]), flush=True)
    if "step" in parts:
        results["step"] = []
        for big in (False, True) if args.big else (False,):
            results["step"] += step_times(workdir, big, args.repeats, args.timed_steps)
        print(harness.table(results["step"]), flush=True)
    if "quant" in parts:  # 8-bit targets against bfloat16 (benchmarks/targets_8bit.py)
        import targets_8bit

        for name, rows in (
            ("quant_disk", lambda: targets_8bit.disk(workdir)),
            ("quant_loader", targets_8bit.loader_rate),
            ("quant_loss", lambda: targets_8bit.loss_effect(workdir)),
        ):
            results[name] = rows()
            print(harness.table(results[name]), flush=True)
    if "paper" in parts:
        results["paper"] = paper_steps(args.repeats, args.timed_steps, 24, 250_000)
        print(harness.table(results["paper"]), flush=True)
    results["uptime_after"] = os.popen("uptime").read().strip()
    print(results["uptime_before"], "|", results["uptime_after"])
    (workdir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
