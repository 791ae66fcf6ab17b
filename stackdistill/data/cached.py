"""Teacher-target cache on disk: the record format and the grain pipeline that reads it.

A cache folder (written by `stackdistill.cache.build`) holds `cache.json` (what was cached,
by which teacher, how) and ArrayRecord shards. A record is b"SDT1", a little-endian uint32
header size, a JSON header (name, num_samples, num_frames, and for each array its dtype,
shape and byte offset), then the arrays: "audio" int16 (n,), "targets" bfloat16 (K, T, D)
(the teacher layers listed in cache.json, valid frames only), and optionally "features"
bfloat16 (T, C), the teacher's CNN output.

Batches have fixed shapes: "audio" float32 (B, S) (left out with `with_audio=False`), "lengths"
int32 (B,), "targets" bfloat16
(B, K, T, D) with K the distilled layers in config order and T the frames of S samples, and
"features" bfloat16 (B, T, C) when asked for; padded frames are zero (the loss masks them).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np
from etils import epath

from stackdistill.data import audio

MAGIC = b"SDT1"
SUFFIX = ".array_record"
META_FILE = "cache.json"
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
_STORED = {"int16": "<i2", "bfloat16": "<u2", "float32": "<f4"}  # bf16 as its raw 16 bits


def encode_record(name: str, arrays: Mapping[str, np.ndarray], num_frames: int) -> bytes:
    """int16 "audio" + bfloat16 "targets"/"features" (+ name, frames) -> one record."""
    header: dict[str, Any] = {"name": name, "num_samples": len(arrays["audio"])}
    header["num_frames"] = int(num_frames)
    blobs, entries, offset = [], {}, 0
    for key, value in arrays.items():
        kind = "bfloat16" if value.dtype == BFLOAT16 else value.dtype.name
        if kind not in _STORED:
            raise ValueError(f"cache array {key!r} has unsupported dtype {value.dtype}")
        stored = np.ascontiguousarray(value).view(np.uint16) if kind == "bfloat16" else value
        blob = np.ascontiguousarray(stored, _STORED[kind]).tobytes()
        entries[key] = {"dtype": kind, "shape": list(value.shape), "offset": offset}
        blobs.append(blob)
        offset += len(blob)
    header["arrays"] = entries
    header_bytes = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes + b"".join(blobs)


def decode_record(data: bytes) -> dict[str, Any]:
    """One record -> {"name", "num_samples", "num_frames", "audio", "targets", ["features"]}."""
    if data[:4] != MAGIC:
        raise ValueError("not a stackdistill teacher-target record")
    (header_size,) = struct.unpack("<I", data[4:8])
    header = json.loads(data[8 : 8 + header_size])
    start = 8 + header_size
    out = {k: v for k, v in header.items() if k != "arrays"}
    for key, entry in header["arrays"].items():
        shape = tuple(entry["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        raw = np.frombuffer(
            data, _STORED[entry["dtype"]], count=count, offset=start + entry["offset"]
        )
        out[key] = (raw.view(BFLOAT16) if entry["dtype"] == "bfloat16" else raw).reshape(shape)
    return out


def read_meta(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """The cache.json of a finished cache; raises if the folder holds none."""
    path = epath.Path(cache_dir) / META_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{cache_dir} holds no finished teacher-target cache ({META_FILE} is missing): "
            "build it with --mode=cache"
        )
    return json.loads(path.read_text())


class CacheSource:
    """Random access to the decoded records of every shard of a cache folder."""

    def __init__(self, cache_dir: str | os.PathLike):
        shards = sorted(str(p) for p in epath.Path(cache_dir).glob("*" + SUFFIX))
        if not shards:
            raise FileNotFoundError(f"no {SUFFIX} shards in {cache_dir}")
        import grain

        self._records = grain.sources.ArrayRecordDataSource(shards)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return decode_record(self._records[index])


class CropExample:
    """(stream index, record) -> one fixed-shape example; "whole" records get a random crop.

    Whole-utterance records longer than `max_samples` are cut at a multiple of the hop, at
    a start drawn from (seed, process, stream index), and their targets at the same frame:
    frame t covers samples [hop*t, hop*t + receptive_field), so the crop starting at sample
    hop*k holds exactly frames k, k+1, ... of the whole utterance.
    """

    def __init__(
        self,
        meta: Mapping[str, Any],
        layer_ids: Sequence[int],
        with_features: bool,
        max_samples: int,
        normalize: bool,
        seed: int,
        process_index: int,
        with_audio: bool = True,
    ):
        from stackdistill.models.config import EncoderConfig

        cfg = EncoderConfig.from_dict(meta["teacher_config"])
        self._hop = cfg.hop
        self._num_frames = cfg.num_frames
        self._frames = cfg.num_frames(max_samples)
        self._rows = [list(meta["teacher_layers"]).index(int(k)) for k in layer_ids]
        self._whole = meta["mode"] == "whole"
        self._with_features = with_features
        self._with_audio = with_audio
        self._max_samples = max_samples
        self._normalize = normalize
        self._seed = (seed, process_index)

    def __call__(self, index: int, record: dict[str, Any]) -> dict[str, np.ndarray]:
        samples, start = record["audio"], 0
        if len(samples) > self._max_samples:
            if not self._whole:
                raise ValueError(f"{record['name']}: a fixed crop longer than max_samples")
            rng = np.random.default_rng([*self._seed, index])
            start = int(rng.integers(0, (len(samples) - self._max_samples) // self._hop + 1))
            samples = samples[start * self._hop : start * self._hop + self._max_samples]
        frames = self._num_frames(len(samples))
        example = {
            "lengths": np.int32(len(samples)),
            "targets": _padded(record["targets"][self._rows, start : start + frames], self._frames),
        }
        if self._with_audio:  # not decoded when the cached features replace the student's CNN
            wav = audio.to_float(samples)
            example["audio"] = np.zeros(self._max_samples, np.float32)
            example["audio"][: len(wav)] = audio.normalize(wav) if self._normalize else wav
        if self._with_features:
            features = record["features"][start : start + frames]
            example["features"] = _padded(features[None], self._frames)[0]
        return example


def _padded(x_ktd: np.ndarray, num_frames: int) -> np.ndarray:
    """(K, t, D) -> (K, num_frames, D), zeros after the valid frames."""
    out = np.zeros((x_ktd.shape[0], num_frames, x_ktd.shape[2]), x_ktd.dtype)
    out[:, : x_ktd.shape[1]] = x_ktd
    return out


def make_loader(
    cache_dir: str | os.PathLike,
    data_cfg: Any,
    layer_ids: Sequence[int],
    with_features: bool,
    *,
    seed: int,
    process_index: int,
    process_count: int,
    with_audio: bool = True,
) -> Any:
    """Iterator of this process's cached batches (get_state/set_state resume it exactly).

    `with_audio=False`: batches without "audio" (for a student fed the cached CNN features).
    """
    import grain

    meta = read_meta(cache_dir)
    shard = grain.MapDataset.source(CacheSource(cache_dir))[process_index::process_count]
    if len(shard) < data_cfg.batch_size:
        raise ValueError(
            f"{cache_dir}: {len(shard)} records for this process, fewer than one batch "
            f"of {data_cfg.batch_size}"
        )
    ds = shard.shuffle(seed % 2**32) if data_cfg.shuffle else shard
    crop = CropExample(
        meta,
        layer_ids,
        with_features,
        data_cfg.max_samples,
        data_cfg.normalize,
        seed,
        process_index,
        with_audio,
    )
    ds = ds.repeat(data_cfg.num_epochs).map_with_index(crop)
    read_options = grain.ReadOptions(
        num_threads=data_cfg.read_threads,
        prefetch_buffer_size=max(2 * data_cfg.batch_size, 4 * data_cfg.read_threads),
    )
    batches = ds.to_iter_dataset(read_options).batch(
        data_cfg.batch_size, drop_remainder=data_cfg.drop_remainder
    )
    return iter(batches)
