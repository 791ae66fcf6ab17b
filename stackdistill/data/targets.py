"""Teacher targets on disk: the record format and the grain pipeline that reads it.

A targets folder (written by `stackdistill.targets.build`) holds `targets.json` (what was
stored, by which teacher, how) and ArrayRecord shards of b"SDT1" records (codec in
data/recordio.py): header fields name, num_samples and num_frames, and the arrays "audio"
int16 (n,), "targets" (K, T, D) (the teacher layers listed in targets.json, valid frames only)
and optionally "features" (T, C), the teacher's CNN output. targets.json's "dtype" says how
those two are stored: "bfloat16" (as computed), or in 8 bits, "int8" or "float8_e4m3fn", each
with a float32 scale per frame ("targets_scale" (K, T), "features_scale" (T,)): value =
stored * scale, the scale being the frame's largest |value| over the 8-bit type's largest.

Batches have fixed shapes: "audio" float32 (B, S) (left out with `with_audio=False`), "lengths"
int32 (B,), "targets" bfloat16 (B, K, T, D) with K the distilled layers in config order and T
the frames of S samples, and "features" bfloat16 (B, T, C) when asked for; padded frames are
zero (the loss masks them). 8-bit records are dequantised here, on the host.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np
from etils import epath

from stackdistill import frames
from stackdistill.data import audio, recordio

MAGIC = b"SDT1"
META_FILE = "targets.json"
DTYPES = ("bfloat16", "int8", "float8_e4m3fn")  # how "targets" and "features" are stored
_LARGEST = {"int8": 127.0, "float8_e4m3fn": float(ml_dtypes.finfo(recordio.FLOAT8).max)}
QUANTIZED = ("targets", "features")
_FLOAT8_VALUES = np.arange(256, dtype=np.uint8).view(recordio.FLOAT8).astype(np.float32)


def quantize(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(..., C) values -> (stored values, float32 scale per row (...) or None for bfloat16).

    int8: round(x / scale), so each value comes back within scale / 2; float8_e4m3fn: x / scale
    rounded to 3 mantissa bits (within 2^-4 of the value, relatively, above its subnormals).
    """
    if dtype == "bfloat16":
        return np.asarray(x).astype(recordio.BFLOAT16), None
    if dtype not in _LARGEST:
        raise ValueError(f"teacher targets dtype {dtype!r} is not one of {DTYPES}")
    x = np.asarray(x, np.float32)
    scale = (np.max(np.abs(x), axis=-1) / np.float32(_LARGEST[dtype])).astype(np.float32)
    y = x / np.where(scale > 0, scale, np.float32(1))[..., None]
    y = np.clip(y, -_LARGEST[dtype], _LARGEST[dtype])
    if dtype == "int8":
        return np.rint(y).astype(np.int8), scale
    return y.astype(recordio.FLOAT8), scale


def dequantize(
    stored: np.ndarray, scale: np.ndarray | None, dtype: np.dtype = recordio.BFLOAT16
) -> np.ndarray:
    """Inverse of `quantize` (up to its rounding), as `dtype`."""
    if scale is None:
        return stored.astype(dtype, copy=False)
    if stored.dtype == recordio.FLOAT8:  # a table lookup: ml_dtypes' float8 cast is slow
        values = _FLOAT8_VALUES[stored.view(np.uint8)]
    else:
        values = stored.astype(np.float32)
    return (values * scale[..., None]).astype(dtype)


def encode_record(
    name: str, arrays: Mapping[str, np.ndarray], num_frames: int, dtype: str = "bfloat16"
) -> bytes:
    """int16 "audio" + "targets"/"features" stored as `dtype` (+ name, frames) -> one record."""
    header = {"name": name, "num_samples": len(arrays["audio"]), "num_frames": int(num_frames)}
    out = dict(arrays)
    for key in QUANTIZED:
        if key in arrays:
            out[key], scale = quantize(arrays[key], dtype)
            if scale is not None:
                out[f"{key}_scale"] = scale
    return recordio.encode(MAGIC, header, out)


def decode_record(data: bytes) -> dict[str, Any]:
    """One record -> {"name", "num_samples", "num_frames", "audio", "targets", ["features"]}.

    8-bit records also hold "targets_scale" (and "features_scale"): see `dequantize`.
    """
    return recordio.decode(data, MAGIC)


def read_meta(targets_dir: str | os.PathLike) -> dict[str, Any]:
    """The targets.json of a finished targets folder; raises if the folder holds none."""
    path = epath.Path(targets_dir) / META_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{targets_dir} holds no finished teacher targets ({META_FILE} is missing): "
            "build them with --mode=cache"
        )
    return json.loads(path.read_text())


class TargetSource(recordio.RecordSource):
    """Random access to the decoded records of every shard of a targets folder."""

    def __init__(self, targets_dir: str | os.PathLike):
        super().__init__(
            targets_dir,
            MAGIC,
            what_to_do="Delete that shard and run --mode=cache with the same config: it "
            "rebuilds the missing shards only.",
        )


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
        teacher = meta["teacher_config"]  # its conv stack: samples -> frames
        self._conv = (tuple(teacher["conv_kernel"]), tuple(teacher["conv_stride"]))
        self._hop = frames.hop(self._conv[1])
        self._frames = frames.num_frames(max_samples, *self._conv)
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
        num_frames = frames.num_frames(len(samples), *self._conv)
        valid = slice(start, start + num_frames)
        example = {
            "lengths": np.int32(len(samples)),
            "targets": _padded(_frames(record, "targets", self._rows, valid), self._frames),
        }
        if self._with_audio:  # not decoded when the stored features replace the student's CNN
            wav = audio.to_float(samples)
            example["audio"] = np.zeros(self._max_samples, np.float32)
            example["audio"][: len(wav)] = audio.normalize(wav) if self._normalize else wav
        if self._with_features:
            features = _frames(record, "features", slice(None), valid)
            example["features"] = _padded(features[None], self._frames)[0]
        return example


def _frames(record: dict[str, Any], key: str, rows: Any, valid: slice) -> np.ndarray:
    """record[key][rows, valid] (or [valid] for "features"), dequantised to bfloat16."""
    index = (rows, valid) if key == "targets" else (valid,)
    scale = record.get(f"{key}_scale")
    return dequantize(record[key][index], None if scale is None else scale[index])


def _padded(x_ktd: np.ndarray, num_frames: int) -> np.ndarray:
    """(K, t, D) -> (K, num_frames, D), zeros after the valid frames."""
    out = np.zeros((x_ktd.shape[0], num_frames, x_ktd.shape[2]), x_ktd.dtype)
    out[:, : x_ktd.shape[1]] = x_ktd
    return out


def make_loader(
    targets_dir: str | os.PathLike,
    data_cfg: Any,
    layer_ids: Sequence[int],
    with_features: bool,
    *,
    seed: int,
    process_index: int,
    process_count: int,
    with_audio: bool = True,
) -> Any:
    """Iterator of this process's batches of teacher targets (get_state/set_state resume it).

    `with_audio=False`: batches without "audio" (for a student fed the stored CNN features).
    """
    import grain

    meta = read_meta(targets_dir)
    shard = grain.MapDataset.source(TargetSource(targets_dir))[process_index::process_count]
    if len(shard) < data_cfg.batch_size:
        raise ValueError(
            f"{targets_dir}: {len(shard)} records for this process, fewer than one batch "
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
