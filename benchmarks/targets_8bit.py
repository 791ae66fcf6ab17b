"""Teacher targets in 8 bits against bfloat16: disk, reconstruction, loader rate, loss.

    python benchmarks/targets.py --parts=quant --workdir=/tmp/bench_targets

disk: the demo's fixed-crop targets (configs/demo.py: 200 espeak-ng utterances, tiny random
  teacher) built as bfloat16, int8 and float8_e4m3fn: bytes per audio-hour measured on disk,
  and from the formula for HuBERT Base (3 x 768 targets, 512 CNN channels, 50 frames/s);
  the reconstruction error of the 8-bit targets and features against the bfloat16 ones.
loader: records/s and GB/s of the grain loader over HuBERT Base-sized records (15.6 s,
  random values) written to local disk, per dtype (read back warm, from the page cache).
loss: the same short cached-targets run (3-layer student, shared front-end, same batches
  and init) from each dtype: its losses, and the int8/fp8-trained student scored on bf16.
"""

from __future__ import annotations

import copy
import json
import pathlib
import tempfile
import time

import harness
import jax
import numpy as np

DTYPES = ("bfloat16", "int8", "float8_e4m3fn")
VALUE_BYTES = {"bfloat16": 2, "int8": 1, "float8_e4m3fn": 1}
HUBERT_BASE = dict(layers=3, hidden=768, conv=512)


def bytes_per_second(layers: int, hidden: int, conv: int, dtype: str, audio: bool = True) -> float:
    """Stored bytes per audio second: int16 audio, targets + features, float32 scales (8 bit)."""
    values = 50 * (layers * hidden + conv) * VALUE_BYTES[dtype]
    scales = 0 if dtype == "bfloat16" else 50 * 4 * (layers + 1)
    return (2 * 16000 if audio else 0) + values + scales


def _build(workdir: pathlib.Path, dtype: str, synth_num: int = 200):
    from stackdistill import targets

    c = harness.demo_config(workdir, **{"targets.dtype": dtype})
    c.data.synth_num = synth_num
    c.targets.dir = str(workdir / f"targets_{dtype}_{c.data.max_samples}_{synth_num}")
    return c, targets.build(c, workdir)


def disk(workdir: pathlib.Path) -> list[dict]:
    """Per dtype: GB per audio-hour (measured, formula) and the error against bfloat16."""
    from stackdistill.data import targets as stored

    built = {d: _build(workdir, d) for d in DTYPES}
    ref = stored.TargetSource(built["bfloat16"][0].targets.dir)
    ref_by_name = {r["name"]: r for r in (ref[i] for i in range(len(ref)))}
    rows = []
    for dtype, (c, meta) in built.items():
        folder = pathlib.Path(c.targets.dir)
        on_disk = sum(p.stat().st_size for p in folder.glob("*.*"))
        t = c.teacher.random_arch
        row = {
            "targets": f"demo fixed_crop, {dtype}",
            "records": meta["records"],
            "on disk MB": round(on_disk / 1e6, 3),
            "GB/audio-h": round(on_disk / meta["audio_seconds"] * 3600 / 1e9, 4),
            "formula GB/audio-h": round(
                bytes_per_second(3, t["hidden_size"], t["conv_dim"][-1], dtype) * 3.6e-6, 4
            ),
        }
        source = stored.TargetSource(folder)
        for key in ("targets", "features"):
            sq_err = sq_ref = worst = 0.0
            for i in range(len(source)):
                r = source[i]
                x = stored.dequantize(r[key], r.get(f"{key}_scale"), np.float32)
                y = ref_by_name[r["name"]][key].astype(np.float32)
                sq_err += float(np.sum((x - y) ** 2))
                sq_ref += float(np.sum(y**2))
                peak = np.abs(y).max(-1, keepdims=True)
                worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(peak, 1e-30))))
            row[f"{key} rel. RMS err vs bf16"] = f"{np.sqrt(sq_err / sq_ref):.2e}"
            row[f"{key} max err / frame peak"] = f"{worst:.2e}"
        rows.append(row)
    for dtype in DTYPES:
        for audio in (True, False):
            rows.append(
                {
                    "targets": f"HuBERT Base 4/8/12 + CNN features, {dtype}"
                    + ("" if audio else ", no audio"),
                    "formula GB/audio-h": round(
                        bytes_per_second(**HUBERT_BASE, dtype=dtype, audio=audio) * 3.6e-6, 3
                    ),
                }
            )
    return rows


def loader_rate(records: int = 48, batch: int = 8, seconds: float = 15.625) -> list[dict]:
    """records/s and GB/s of the targets loader over HuBERT Base-sized records on local disk."""
    import ml_collections

    from stackdistill.data import recordio
    from stackdistill.data import targets as stored
    from stackdistill.models.config import EncoderConfig

    samples = int(seconds * 16000)
    t_cfg = EncoderConfig()
    frames = t_cfg.num_frames(samples)
    rng = np.random.default_rng(0)
    arrays = {
        "audio": rng.integers(-3000, 3000, samples).astype(np.int16),
        "targets": rng.normal(size=(3, frames, 768)).astype(np.float32),
        "features": rng.normal(size=(frames, 512)).astype(np.float32),
    }
    data = ml_collections.ConfigDict(
        dict(batch_size=batch, shuffle=True, num_epochs=None, max_samples=samples,
             normalize=False, read_threads=2, drop_remainder=True)
    )  # fmt: skip
    rows = []
    for dtype in DTYPES:
        with tempfile.TemporaryDirectory(dir="/tmp") as folder:
            record = stored.encode_record("u", arrays, frames, dtype)
            writer = recordio.writer(pathlib.Path(folder) / f"targets-p000-00000{recordio.SUFFIX}")
            for _ in range(records):
                writer.write(record)
            writer.close()
            meta = {"teacher_config": t_cfg.to_dict(), "teacher_layers": [4, 8, 12],
                    "mode": "fixed_crop", "dtype": dtype}  # fmt: skip
            (pathlib.Path(folder) / stored.META_FILE).write_text(json.dumps(meta))
            for with_audio in (True, False):
                loader = stored.make_loader(
                    folder, data, (4, 8, 12), True, seed=0, process_index=0, process_count=1,
                    with_audio=with_audio,
                )  # fmt: skip
                next(loader)  # start the threads
                start, n = time.perf_counter(), 2 * records // batch
                for _ in range(n):
                    next(loader)
                elapsed = time.perf_counter() - start
                rows.append(
                    {
                        "dtype": dtype,
                        "batch": "audio + targets + features" if with_audio else "no audio",
                        "MB/record": round(len(record) / 1e6, 3),
                        "records/s": round(n * batch / elapsed, 1),
                        "GB/s read": round(n * batch * len(record) / elapsed / 1e9, 3),
                        "batches of 24/s": round(n * batch / elapsed / 24, 2),
                    }
                )
    return rows


def loss_effect(workdir: pathlib.Path, steps: int = 80) -> list[dict]:
    """One short cached run per dtype from the same init and batches: loss, and scored on bf16."""
    import optax

    from stackdistill import distill, optim, targets, teacher
    from stackdistill.data import targets as stored
    from stackdistill.models import student

    runs = {}
    for dtype in DTYPES:
        c, _ = _build(workdir, dtype)
        c.student.frozen_shared_frontend = True
        t_cfg, t_params = teacher.load(teacher.prepare(c.teacher, workdir))
        s_cfg = student.student_encoder_config(c.student, t_cfg).replace(num_layers=3)
        layers = tuple(c.distill.teacher_layers)
        params = student.init_student(s_cfg, jax.random.key(0), t_cfg, t_params, layers)
        schedule = optax.constant_schedule(c.optim.learning_rate)
        tx = optim.make_optimizer(c.optim, schedule, frozen_frontend=True)
        fn = distill.make_train_step(
            c.distill, t_cfg, s_cfg, {4: 1, 8: 2, 12: 3}, tx, schedule, True, cached=True
        )
        step = jax.jit(fn)
        data_cfg = copy.deepcopy(c.data)
        data_cfg.batch_size = c.batch_size
        loader = stored.make_loader(
            targets.location(c, workdir), data_cfg, layers, True,
            seed=0, process_index=0, process_count=1, with_audio=False,
        )  # fmt: skip
        state = distill.init_state(jax.tree_util.tree_map(np.array, params), tx, 1)
        losses, batches = [], []
        for _ in range(steps):
            batch = next(loader)
            batches.append(batch)
            state, metrics = step(state, {}, batch)
            losses.append(float(metrics["loss"]))
        runs[dtype] = (losses, state, batches, step)
    ref_losses, _, ref_batches, ref_step = runs["bfloat16"]
    rows = []
    for dtype, (losses, state, _, _) in runs.items():
        # The trained student scored on the bf16 targets of the last 10 batches (no update kept).
        scored = [float(ref_step(state, {}, b)[1]["loss"]) for b in ref_batches[-10:]]
        rows.append(
            {
                "targets": dtype,
                "steps": steps,
                "first loss": round(losses[0], 5),
                "mean loss, last 10": round(float(np.mean(losses[-10:])), 5),
                "max |loss - bf16 loss| / bf16": f"{np.max(np.abs(np.subtract(losses, ref_losses)) / np.array(ref_losses)):.2e}",  # noqa: E501
                "scored on bf16 targets, last 10": round(float(np.mean(scored)), 5),
            }
        )
    return rows
