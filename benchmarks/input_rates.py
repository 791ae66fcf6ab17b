"""Audio-seconds per second per host core of each input format, and the cores a GPU needs.

Used by `benchmarks/data_pipeline.py --per-core`. Each format is read record by record on
one thread and timed in CPU seconds of this process (time.process_time), so that other jobs
on a shared machine do not count, up to the batch-ready example the loader hands on:

- flac 16 kHz (LibriSpeech): decode the crop's frames, crop to 250,000 samples;
- flac 24 kHz: the same plus polyphase resampling to 16 kHz;
- packed ArrayRecord (stackdistill/data/pack.py: int16 16 kHz): read, decode, crop;
- teacher-target ArrayRecord (stackdistill/data/targets.py) at HuBERT Base's size (layers
  4/8/12 of width 768 + 512 CNN features, bfloat16, 780 frames per 15.6 s crop): read,
  decode, pad, with the audio (own CNN) or without (shared front-end reads the features).

The shards are read back right after writing, so from the page cache: these are CPU rates,
not disk rates (the bytes per second a disk must sustain are printed beside them).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import soundfile as sf
from scipy import signal

from stackdistill.data import audio, pack, recordio, sources
from stackdistill.data import targets as targets_data
from stackdistill.models.config import EncoderConfig

CROP = 250_000  # samples: the paper's 15.6 s crop
BATCH, CROP_SECONDS = 24, CROP / 16_000
# Step times on one H200, bf16, batch 24 x 15.6 s (benchmarks/RESULTS.md, 2026-11-27): the
# live 12 x 384 step, the cached + shared front-end step, and each at the 40% MFU target.
STEPS = {
    "live step, 0.140 s (measured)": (0.140, "audio"),
    "live step at 40% MFU, 0.037 s": (0.140 * 0.106 / 0.40, "audio"),
    "cached + shared step, 0.064 s (measured)": (0.0639, "targets"),
    "cached + shared at 40% MFU, 0.008 s": (0.008, "targets"),
}


def _rate(
    records: list[Any], read: Callable[[Any], tuple[int, int]], min_cpu_s: float = 1.0
) -> dict[str, float]:
    """Times `read` (record -> (samples delivered, bytes read)) over the records, one thread,
    in passes until at least `min_cpu_s` CPU seconds are spent."""
    read(records[0])  # warm-up: imports, first-file costs
    cpu, wall = time.process_time(), time.perf_counter()
    samples = nbytes = count = 0
    while not count or time.process_time() - cpu < min_cpu_s:
        for record in records:
            n, b = read(record)
            samples, nbytes, count = samples + n, nbytes + b, count + 1
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    seconds = samples / audio.SAMPLE_RATE
    return {"audio_s": seconds, "cpu_s": cpu, "wall_s": wall, "bytes": nbytes,
            "audio_s_per_core_s": seconds / cpu, "mb_per_audio_s": nbytes / seconds / 1e6,
            "records_per_core_s": count / cpu, "records_read": count}  # fmt: skip


def _flac_records(corpus: str, out_dir: str, count: int, rate: int) -> list[dict[str, Any]]:
    """`count` flac records of the LibriSpeech-like corpus, rewritten at `rate` Hz if not 16k."""
    records = sources.librispeech_records(corpus, ("train-clean-100",))[:count]
    if rate == audio.SAMPLE_RATE:
        return records
    os.makedirs(out_dir, exist_ok=True)
    out = []
    for r in records:
        path = os.path.join(out_dir, os.path.basename(r["path"]))
        if not os.path.exists(path):
            x = sf.read(r["path"], dtype="float32")[0]
            g = math.gcd(rate, audio.SAMPLE_RATE)
            y = signal.resample_poly(x, rate // g, audio.SAMPLE_RATE // g)
            sf.write(path, np.clip(y, -1, 1), rate)
        out.append({**r, "path": path})
    return out


def _example(samples: np.ndarray) -> int:
    """What the loader does after decoding: float32, padded to the crop length."""
    wav = np.zeros(CROP, np.float32)
    wav[: len(samples)] = audio.to_float(samples)
    return len(samples)


def _targets_shard(path: str, count: int) -> tuple[dict[str, Any], list[int]]:
    """A teacher-target shard of HuBERT Base's size (random bf16 values); its meta, indices."""
    from array_record.python.array_record_module import ArrayRecordWriter

    cfg = EncoderConfig()
    frames = cfg.num_frames(CROP)
    meta = {"teacher_config": cfg.to_dict(), "teacher_layers": [4, 8, 12], "mode": "fixed_crop"}
    if not os.path.exists(path):
        rng = np.random.default_rng(0)
        writer = ArrayRecordWriter(path + ".tmp", "group_size:1")  # as stackdistill.targets
        for i in range(count):
            arrays = {
                "audio": (rng.standard_normal(CROP) * 3000).astype(np.int16),
                "targets": rng.standard_normal((3, frames, 768), np.float32).astype(
                    recordio.BFLOAT16
                ),
                "features": rng.standard_normal((frames, 512), np.float32).astype(
                    recordio.BFLOAT16
                ),
            }
            writer.write(targets_data.encode_record(f"r{i}", arrays, frames))
        writer.close()
        os.replace(path + ".tmp", path)
    return meta, list(range(count))


def per_core_rates(corpus: str, work_dir: str, count: int = 40) -> dict[str, dict[str, float]]:
    """Per-format rates (see the module docstring) on `count` records of each."""
    import grain

    os.makedirs(work_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    for rate in (16_000, 24_000):
        records = _flac_records(corpus, os.path.join(work_dir, f"flac{rate}"), count, rate)
        out[f"flac {rate // 1000} kHz"] = _rate(
            records,
            lambda r: (_example(audio.load(r, rng, CROP)), os.path.getsize(r["path"])),
        )
    packed_dir = os.path.join(work_dir, "packed")
    if not os.path.isdir(packed_dir):
        pack.pack(sources.librispeech_records(corpus, ("train-clean-100",))[:count], packed_dir, 1)
    packed = grain.sources.ArrayRecordDataSource(
        sorted(os.path.join(packed_dir, f) for f in os.listdir(packed_dir))
    )

    def read_packed(i: int) -> tuple[int, int]:
        data = packed[i]
        record = pack.decode_record(data)
        return _example(audio.load(record, rng, CROP)), len(data)

    out["ArrayRecord, packed audio"] = _rate(list(range(len(packed))), read_packed)
    shard = os.path.join(work_dir, "targets-hubert-base" + recordio.SUFFIX)
    meta, indices = _targets_shard(shard, min(count, 24))
    targets = grain.sources.ArrayRecordDataSource([shard])
    for with_audio in (True, False):
        crop = targets_data.CropExample(meta, (4, 8, 12), True, CROP, False, 0, 0, with_audio)

        def read_targets(i: int, crop=crop) -> tuple[int, int]:
            data = targets[i]
            example = crop(i, targets_data.decode_record(data))
            return int(example["lengths"]), len(data)

        name = "ArrayRecord, targets + features" + (" + audio" if with_audio else "")
        out[name] = _rate(indices, read_targets)
    return out


def cores_table(rates: dict[str, dict[str, float]], machine: str, count: int) -> str:
    """Markdown: per-core rates, then the host cores each step rate needs."""
    lines = [
        f"\n### Per host core ({machine}; one thread, CPU seconds; {count} distinct records each, "
        "read in passes for >= 1 CPU s)\n",
        "| format | audio-s per core-s | records per core-s | MB per audio-s | CPU s | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rates.items():
        lines.append(
            f"| {name} | {r['audio_s_per_core_s']:.0f} | {r['records_per_core_s']:.1f} "
            f"| {r['mb_per_audio_s']:.3f} | {r['cpu_s']:.2f} | {r['wall_s']:.2f} |"
        )
    names = list(rates)
    lines += [
        f"\n### Host cores per GPU (batch {BATCH} x {CROP_SECONDS:.3g} s per step)\n",
        "| step | audio-s/s | " + " | ".join(names) + " | disk MB/s |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    for step, (seconds, kind) in STEPS.items():
        need = BATCH * CROP_SECONDS / seconds
        cells = []
        for name in names:
            usable = ("targets" in name) == (kind == "targets")
            cells.append(f"{need / rates[name]['audio_s_per_core_s']:.1f}" if usable else "-")
        fmt = next(n for n in names if ("targets" in n) == (kind == "targets"))
        disk = need * rates[fmt if kind == "audio" else names[-1]]["mb_per_audio_s"]
        lines.append(f"| {step} | {need:,.0f} | " + " | ".join(cells) + f" | {disk:,.0f} |")
    return "\n".join(lines)
