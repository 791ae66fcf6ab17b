"""Teacher targets on disk: the record format and the grain pipeline that reads it.

A targets folder (written by `stackdistill.targets.build`) holds `targets.json` (what was
stored, by which teacher, how) and ArrayRecord shards of b"SDT1" records (codec in
data/recordio.py): header fields name, num_samples and num_frames, and the arrays "audio"
int16 (n,), "targets" bfloat16 (K, T, D) (the teacher layers listed in targets.json, valid
frames only) and optionally "features" bfloat16 (T, C), the teacher's CNN output.

Batches have fixed shapes: "audio" float32 (B, S) (left out with `with_audio=False`), "lengths"
int32 (B,), "targets" bfloat16 (B, K, T, D) with K the distilled layers in config order and T
the frames of S samples, and "features" bfloat16 (B, T, C) when asked for; padded frames are
zero (the loss masks them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from stackdistill import frames
from stackdistill.data import audio, recordio

MAGIC = b"SDT1"
META_FILE = "targets.json"


def encode_record(name: str, arrays: Mapping[str, np.ndarray], num_frames: int) -> bytes:
    """int16 "audio" + bfloat16 "targets"/"features" (+ name, frames) -> one record."""
    header = {"name": name, "num_samples": len(arrays["audio"]), "num_frames": int(num_frames)}
    return recordio.encode(MAGIC, header, arrays)


def decode_record(data: bytes) -> dict[str, Any]:
    """One record -> {"name", "num_samples", "num_frames", "audio", "targets", ["features"]}."""
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
        super().__init__(targets_dir, MAGIC)


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
        example = {
            "lengths": np.int32(len(samples)),
            "targets": _padded(
                record["targets"][self._rows, start : start + num_frames], self._frames
            ),
        }
        if self._with_audio:  # not decoded when the stored features replace the student's CNN
            wav = audio.to_float(samples)
            example["audio"] = np.zeros(self._max_samples, np.float32)
            example["audio"][: len(wav)] = audio.normalize(wav) if self._normalize else wav
        if self._with_features:
            features = record["features"][start : start + num_frames]
            example["features"] = _padded(features[None], self._frames)[0]
        return example


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
