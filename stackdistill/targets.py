"""Teacher targets: run the teacher once over the corpus, train later from its outputs.

    python -m stackdistill.main --config=configs/X.py --workdir=DIR --mode=cache \\
        --config.targets.dir=targets     # then train from them:
    python -m stackdistill.main --config=configs/X.py --workdir=DIR \\
        --config.targets.dir=targets

What is stored, per record: the audio (int16, what the student reads), the supervised teacher
layers `config.distill.teacher_layers` (valid frames only) and, unless `targets.features` is
off, the teacher's CNN features: a student with `frozen_shared_frontend` reads those, so a step
from stored targets runs neither the teacher nor any CNN. Both are stored as
`config.targets.dtype`: "bfloat16", or "int8" / "float8_e4m3fn" with a scale per frame (half
the disk; data/targets.py quantises and its loader dequantises). Modes (`config.targets.mode`):

- "fixed_crop": for each epoch seed e < `targets.epochs` and utterance i, one crop of at most
  `data.max_samples` samples drawn from (config.seed, e, i), zero-padded to max_samples for
  the teacher exactly as the live step pads it. Stored targets then equal the live teacher's
  on the same crop up to bfloat16 rounding. One pass over them is `targets.epochs` epochs.
- "whole": each utterance (cut to `targets.max_utterance_samples`) is run whole, padded to a
  multiple of one second (at least max_samples); training takes a random crop at a multiple of
  the hop (320 samples) and the targets of the matching frames. The teacher saw the whole
  utterance, so its targets carry context beyond the crop and differ from live targets
  (attention, and HuBERT Base's GroupNorm over time): benchmarks/RESULTS.md measures what it
  does to the loss.

The targets are keyed to the teacher by a fingerprint of its params; training refuses targets
from another teacher, other layers, another crop length, or without the features it needs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from stackdistill import resume, teacher
from stackdistill.data import audio, recordio, sources
from stackdistill.data import config as data_config
from stackdistill.data import targets as stored  # their records on disk and the reader
from stackdistill.models.config import EncoderConfig
from stackdistill.models.encoder import Encoder

log = logging.getLogger("stackdistill")
MODES = ("fixed_crop", "whole")
BUCKET_SECONDS = 1  # whole mode pads each utterance to a multiple of this for the teacher


def default_config() -> ml_collections.ConfigDict:
    """Teacher targets, built by `--mode=cache`; with `dir` set, training reads them from there."""
    c = ml_collections.ConfigDict()
    c.dir = ""  # "" = live teacher; relative paths go under the workdir
    c.mode = "fixed_crop"  # "fixed_crop": one crop per utterance and epoch | "whole"
    c.epochs = 1  # fixed_crop: crops stored per utterance (epoch seeds 0..n-1)
    c.features = True  # also store the CNN features (what a shared front-end reads)
    c.shards = 8  # ArrayRecord files written per process
    c.max_utterance_samples = 640_000  # whole: longer utterances are cut to this (40 s)
    c.dtype = "bfloat16"  # storage of targets and features: "bfloat16" | "int8" | "float8_e4m3fn"
    return c


def location(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> epath.Path:
    """The targets dir: config.targets.dir, relative paths under the workdir (or gs://)."""
    name = config.targets.dir
    if not name:
        raise ValueError("config.targets.dir is empty: name the folder of the teacher targets")
    if "://" in name or pathlib.Path(name).expanduser().is_absolute():
        return epath.Path(name).expanduser()
    return epath.Path(workdir) / name


def fingerprint(params: Any) -> str:
    """A hash of the teacher's params (paths, shapes and values)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        value = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}{value.shape}{value.dtype}".encode())
        h.update(value.tobytes())
    return h.hexdigest()[:32]


def padded_length(num_samples: int, mode: str, max_samples: int) -> int:
    """Samples the teacher's input is zero-padded to (fixed crops: the live step's length)."""
    if mode == "fixed_crop" or num_samples <= max_samples:
        return max_samples
    bucket = BUCKET_SECONDS * audio.SAMPLE_RATE
    return math.ceil(num_samples / bucket) * bucket


def _utterances(config, records, process_index, process_count):
    """(name, float32 samples) of this process's jobs: crops or whole utterances; skips bad."""
    t = config.targets
    mode, epochs = t.mode, (t.epochs if t.mode == "fixed_crop" else 1)
    limit = config.data.max_samples if mode == "fixed_crop" else t.max_utterance_samples
    for epoch in range(epochs):
        for index in range(process_index, len(records), process_count):
            record = records[index]
            name = str(record.get("name", record.get("path", f"#{index}")))
            rng = np.random.default_rng([config.seed, epoch, index])
            try:
                samples = audio.load(record, rng, limit)
            except audio.BadAudio as e:
                yield name, None, str(e)
                continue
            if len(samples) < config.data.min_samples:
                yield name, None, f"too short ({len(samples)} samples)"
                continue
            # Stored as int16: the teacher sees exactly what the student will read.
            pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)
            yield (f"{name}@{epoch}" if mode == "fixed_crop" else name), pcm, None


def _teacher_fn(t_cfg: EncoderConfig, layer_ids: tuple[int, ...], with_features: bool, dtype: str):
    """Jitted (params, wav, lengths) -> (targets (B, K, T, D), features (B, T, C)).

    bfloat16 for bfloat16 storage; float32 for the 8-bit types (quantised on the host).
    """
    out_dtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32

    def forward(params, wav, lengths):
        out = Encoder(t_cfg).apply({"params": params}, wav, lengths)
        targets = jnp.stack([out.hidden_states[k] for k in layer_ids], axis=1)
        features = out.features.astype(out_dtype) if with_features else None
        return targets.astype(out_dtype), features

    return jax.jit(forward)


class _ShardWriter:
    """Spreads records over this process's shards in order (expected count known ahead).

    `only`: the shard indices to write (a rebuild of missing shards); the records of the
    others are counted, not written, so each record lands in the shard it was first built in.
    """

    def __init__(
        self,
        out: pathlib.Path,
        process_index: int,
        num_shards: int,
        expected: int,
        only: set[int] | None = None,
    ):
        self._num_shards = num_shards
        self._writers = {
            k: recordio.writer(shard_path(out, process_index, k))
            for k in range(num_shards)
            if only is None or k in only
        }
        self._expected = max(expected, 1)
        self.count = 0
        self.bytes = 0

    def _shard(self, count: int) -> int:
        return min(count * self._num_shards // self._expected, self._num_shards - 1)

    def wants(self, num_records: int) -> bool:
        """Whether any of the next `num_records` records goes to a shard being written."""
        return any(self._shard(self.count + i) in self._writers for i in range(num_records))

    def write(self, record: bytes | None) -> None:
        """Writes `record` to its shard (None: a record of a shard not being written)."""
        writer = self._writers.get(self._shard(self.count))
        if writer is not None and record is not None:
            writer.write(record)
            self.bytes += len(record)
        self.count += 1

    def close(self) -> None:
        for w in self._writers.values():
            w.close()


def shard_path(out: pathlib.Path, process_index: int, k: int) -> pathlib.Path:
    """Shard k of process `process_index` in the targets folder `out`."""
    return out / f"targets-p{process_index:03d}-{k:05d}{recordio.SUFFIX}"


def _missing_shards(out: pathlib.Path, process_index: int, num_shards: int) -> set[int]:
    """The shards of this process deleted from a finished folder (none when none is left:
    such a folder is not a build to repair)."""
    missing = {k for k in range(num_shards) if not shard_path(out, process_index, k).exists()}
    return missing if len(missing) < num_shards else set()


def build(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Runs the teacher over the corpus and writes its targets; returns their targets.json."""
    t = config.targets
    if t.mode not in MODES:
        raise ValueError(f"config.targets.mode must be one of {MODES}, got {t.mode!r}")
    if t.epochs < 1:
        raise ValueError(f"config.targets.epochs must be >= 1, got {t.epochs}")
    if t.dtype not in stored.DTYPES:
        raise ValueError(f"config.targets.dtype must be one of {stored.DTYPES}, got {t.dtype!r}")
    out = location(config, workdir)
    if "://" in str(out):
        raise ValueError(
            f"config.targets.dir={str(out)!r}: teacher targets are written on a local disk; build "
            "them there and copy the folder to the bucket (gcloud storage cp -r), then train"
        )
    out = pathlib.Path(out)
    if (out / stored.META_FILE).is_file():
        meta = stored.read_meta(out)
        check(meta, config, out)  # refuses targets of another config
        if meta.get("dtype", "bfloat16") != t.dtype:
            raise ValueError(
                f"config.targets.dtype={t.dtype!r} but {out} already holds {meta['dtype']!r} "
                "targets: build them in another folder"
            )
        missing = _missing_shards(out, jax.process_index(), meta.get("shards", t.shards))
        if not missing:
            log.info("teacher targets already built in %s (%d records)", out, meta["records"])
            return meta
        return _write(config, workdir, out, only=missing, shards=meta.get("shards", t.shards))
    out.mkdir(parents=True, exist_ok=True)
    return _write(config, workdir, out, only=None, shards=t.shards)


def _write(config, workdir, out: pathlib.Path, only: set[int] | None, shards: int) -> dict:
    """Runs the teacher and writes this process's shards (`only` those, for a rebuild)."""
    t = config.targets
    pi, pc = jax.process_index(), jax.process_count()

    t_cfg, t_params = teacher.for_run(config, workdir)
    if only is not None and stored.read_meta(out)["teacher_fingerprint"] != fingerprint(t_params):
        raise ValueError(f"{out} was built by another teacher: rebuild all of it in a new folder")
    layer_ids = tuple(int(k) for k in config.distill.teacher_layers)
    data_cfg = data_config.for_run(config.data, workdir)
    records, description = sources.open_source(data_cfg)

    forward = _teacher_fn(t_cfg, layer_ids, t.features, t.dtype)
    batch_size = max(config.batch_size // pc, 1)
    epochs = t.epochs if t.mode == "fixed_crop" else 1
    expected = epochs * len(range(pi, len(records), pc))
    writer = _ShardWriter(out, pi, shards, expected, only)
    pending: dict[int, list[tuple[str, np.ndarray]]] = {}
    stats = {"audio_seconds": 0.0, "teacher_seconds": 0.0, "skipped": []}
    started = time.perf_counter()

    def flush(length: int) -> None:
        rows = pending.pop(length)
        if not writer.wants(len(rows)):  # a rebuild: these rows' shard is intact
            for _ in rows:
                writer.write(None)
            return
        wav = np.zeros((batch_size, length), np.float32)
        lengths = np.full(batch_size, length, np.int32)  # unused rows: full-length silence
        for row, (_, pcm) in enumerate(rows):
            samples = audio.to_float(pcm)
            wav[row, : len(samples)] = audio.normalize(samples) if data_cfg.normalize else samples
            lengths[row] = len(samples)
        timer = time.perf_counter()
        targets, features = jax.device_get(forward(t_params, wav, lengths))
        stats["teacher_seconds"] += time.perf_counter() - timer
        for row, (name, pcm) in enumerate(rows):
            frames = t_cfg.num_frames(len(pcm))
            arrays = {"audio": pcm, "targets": targets[row, :, :frames]}
            if features is not None:
                arrays["features"] = features[row, :frames]
            writer.write(stored.encode_record(name, arrays, frames, t.dtype))
            stats["audio_seconds"] += len(pcm) / audio.SAMPLE_RATE

    for name, pcm, problem in _utterances(config, records, pi, pc):
        if pcm is None:
            stats["skipped"].append(f"{name}: {problem}")
            continue
        length = padded_length(len(pcm), t.mode, data_cfg.max_samples)
        pending.setdefault(length, []).append((name, pcm))
        if len(pending[length]) == batch_size:
            flush(length)
    for length in sorted(pending):
        flush(length)
    writer.close()
    if not writer.count:
        raise ValueError(f"no usable audio in {description}: {stats['skipped'][:3]}")
    if only is not None:
        names = ", ".join(shard_path(out, pi, k).name for k in sorted(only))
        log.info("teacher targets: rebuilt %s in %s", names, out)
        if pc > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("stackdistill.targets.rebuild")
        return stored.read_meta(out)

    part = {
        "records": writer.count,
        "bytes": writer.bytes,
        "audio_seconds": stats["audio_seconds"],
        "teacher_seconds": stats["teacher_seconds"],
        "build_seconds": time.perf_counter() - started,
        "skipped": stats["skipped"],
    }
    (out / f"part-p{pi:03d}.json").write_text(json.dumps(part))
    if pc > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("stackdistill.targets.build")
    meta = {
        "mode": t.mode,
        "epochs": epochs,
        "teacher": config.teacher.name,
        "teacher_fingerprint": fingerprint(t_params),
        "teacher_config": t_cfg.to_dict(),
        "teacher_layers": list(layer_ids),
        "features": bool(t.features),
        "max_samples": int(data_cfg.max_samples),
        "normalize": bool(data_cfg.normalize),
        "seed": int(config.seed),
        "source": description,
        "dtype": t.dtype,
        "shards": shards,
    }
    if pi == 0:
        parts = [json.loads(p.read_text()) for p in sorted(out.glob("part-p*.json"))]
        for key in ("records", "bytes", "audio_seconds", "teacher_seconds", "build_seconds"):
            meta[key] = sum(p[key] for p in parts)
        meta["skipped"] = [s for p in parts for s in p["skipped"]]
        # Written last: its presence marks finished targets.
        (out / stored.META_FILE).write_text(json.dumps(meta, indent=1))
        log.info(
            "teacher targets: %d records, %.1f audio-s, %.1f MB in %s (%.1f s)",
            meta["records"],
            meta["audio_seconds"],
            meta["bytes"] / 1e6,
            out,
            meta["build_seconds"],
        )
    if pc > 1:
        multihost_utils.sync_global_devices("stackdistill.targets.meta")
    return stored.read_meta(out)


# targets.json key -> the config field it was built from (what --mode=cache compares).
BUILT_FROM = {
    "teacher": "teacher.name",
    "mode": "targets.mode",
    "epochs": "targets.epochs",
    "teacher_layers": "distill.teacher_layers",
    "features": "targets.features",
    "max_samples": "data.max_samples",
    "normalize": "data.normalize",
    "seed": "seed",
}


def check(
    meta: dict[str, Any],
    config: ml_collections.ConfigDict,
    folder: str | os.PathLike,
    teacher_params: Any = None,
) -> list[str]:
    """The one compatibility check of a finished targets folder (its targets.json `meta`).

    Building (`teacher_params` None, before the teacher loads): the folder must have been
    built by this config, every field of BUILT_FROM as in the resume rules (refused unless
    `config.resume_changed` names it); returns the notes of fields let through.
    Training: the folder must hold what this run reads (this teacher by the fingerprint of
    its params, the distilled layers, mode, crop, normalisation, features); raises ValueError
    naming the field.
    """
    if teacher_params is None:
        return _check_built_by(meta, config, str(folder))
    _check_readable(meta, config, f"the targets dir {folder}", teacher_params)
    return []


def _check_built_by(meta: dict[str, Any], config: ml_collections.ConfigDict, where: str):
    flat = resume.flatten(config.to_dict())
    epochs = flat["targets.epochs"] if flat["targets.mode"] == "fixed_crop" else 1
    current = {field: flat[field] for field in BUILT_FROM.values()}
    current["targets.epochs"] = epochs
    built = {field: meta.get(key, "<unset>") for key, field in BUILT_FROM.items()}
    if meta.get("mode") == "whole" and flat["targets.mode"] == "whole":
        built.pop("data.max_samples")  # max_samples only matters to fixed crops
        current.pop("data.max_samples")
    return resume.check(
        built,
        current,
        refuse=tuple(current),
        allow=resume.parse_allow(flat.get("resume_changed", "")),
        what=f"the teacher targets in {where}",
        way_out=(
            "To build targets for this config, name another folder with "
            f"--config.targets.dir, or delete {where}."
        ),
    )


def _check_readable(meta, config, where: str, teacher_params: Any) -> None:
    if meta["teacher_fingerprint"] != fingerprint(teacher_params):
        raise ValueError(
            f"{where} was built by another teacher ({meta['teacher']}) than "
            f"config.teacher.name={config.teacher.name!r}"
        )
    missing = sorted(
        set(int(k) for k in config.distill.teacher_layers) - set(meta["teacher_layers"])
    )
    if missing:
        raise ValueError(
            f"config.distill.teacher_layers asks for layers {missing} that {where} does not "
            f"hold (it has {meta['teacher_layers']})"
        )
    if meta["mode"] != config.targets.mode:
        raise ValueError(
            f"config.targets.mode={config.targets.mode!r} but {where} holds "
            f"{meta['mode']!r} targets"
        )
    if meta["mode"] == "fixed_crop" and meta["max_samples"] != config.data.max_samples:
        raise ValueError(
            f"config.data.max_samples={config.data.max_samples} but {where} holds crops of "
            f"{meta['max_samples']} samples"
        )
    if config.data.bucket_boundaries:
        raise ValueError(
            "config.data.bucket_boundaries must be () with stored teacher targets: their "
            "batches are always padded to config.data.max_samples"
        )
    if meta["normalize"] != bool(config.data.normalize):
        raise ValueError(f"config.data.normalize differs from {where} ({meta['normalize']})")
    if config.student.frozen_shared_frontend and not meta["features"]:
        raise ValueError(
            f"config.student.frozen_shared_frontend needs the teacher's CNN features, which "
            f"{where} does not hold: rebuild it with config.targets.features=True"
        )


def run_loader(
    config: ml_collections.ConfigDict,
    data_cfg: ml_collections.ConfigDict,
    folder: str | os.PathLike,
    **shard: Any,
) -> Any:
    """This run's iterator of batches from the targets `folder` (data_cfg: its data section).

    `data.targets.make_loader` with what the run's config says it reads: a student fed the
    stored CNN features gets no "audio", nothing would read it.
    """
    shared_frontend = config.student.frozen_shared_frontend
    return stored.make_loader(
        folder,
        data_cfg,
        config.distill.teacher_layers,
        shared_frontend,
        with_audio=not shared_frontend,
        **shard,
    )


def batch_shapes(
    config: ml_collections.ConfigDict, teacher_cfg: EncoderConfig, batch_size: int
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of the batch keys the targets add to "audio" and "lengths"."""
    frames = teacher_cfg.num_frames(config.data.max_samples)
    num_layers = len(config.distill.teacher_layers)
    shapes = {
        "targets": ((batch_size, num_layers, frames, teacher_cfg.hidden_size), recordio.BFLOAT16)
    }
    if config.student.frozen_shared_frontend:
        shapes["features"] = ((batch_size, frames, teacher_cfg.conv_dim[-1]), recordio.BFLOAT16)
    return shapes


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = "cache") -> None:
    """--mode=cache: builds the teacher targets named by config.targets.dir."""
    del mode
    build(config, workdir)
