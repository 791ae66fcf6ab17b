"""Frozen-upstream features: every hidden state, extracted once per dataset, or live per batch.

Utterances are read in windows, sorted by length and batched, and each batch is zero-padded to
the next of a geometric series of lengths (`pad_ratio`), so one jitted encoder serves a handful
of shapes. Padding is not neutral for a GroupNorm front-end (HuBERT/WavLM Base normalise each
channel over time, padding included, as transformers and fairseq do); sorting keeps it under
`pad_ratio - 1` of an utterance, where s3prl pads every batch to its longest utterance.

Utterance tasks keep the masked mean over time of each hidden state, (L+1, N, D): SUPERB's
utterance heads (projection, mean pooling, linear) are linear up to the softmax, so pooling
first is exact. CTC tasks keep the frames, (L+1, T_i, D) per utterance, when they fit in
`max_feature_gb`; otherwise `LiveFrames` runs the upstream on every training batch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stackdistill import models
from stackdistill.data import audio
from stackdistill.superb.upstream import Upstream

MIN_BUCKET = 4_000  # samples (0.25 s): the shortest padded length


@dataclasses.dataclass
class ReadOptions:
    """How utterances are read and batched for the upstream."""

    max_samples: int = 480_000  # longer utterances are cropped (deterministically per name)
    normalize_audio: bool = False  # zero mean, unit variance (the upstream's do_normalize)
    batch_size: int = 16
    pad_ratio: float = 1.25
    window: int = 1024  # utterances read, sorted by length and batched together
    seed: int = 0


def bucket_length(num_samples: int, ratio: float) -> int:
    """The padded length of an utterance: the next of MIN_BUCKET * ratio**k, 400-aligned."""
    if ratio <= 1:
        raise ValueError(f"pad_ratio must exceed 1, got {ratio}")
    k = max(0, math.ceil(math.log(max(num_samples, 1) / MIN_BUCKET, ratio) - 1e-9))
    return max(int(math.ceil(MIN_BUCKET * ratio**k / 400) * 400), num_samples)


def read_audio(record: dict[str, Any], options: ReadOptions) -> np.ndarray:
    """float32 16 kHz samples of a record; a long one is cropped where its name says.

    A record with `crop_samples` (s3prl's random crops: KS _silence_, SID training) is cut to
    that length; its `crop_view` k picks the k-th random crop (default 0); `gain_db` scales it.
    """
    name = str(record.get("name")) + (f"#{record['crop_view']}" if "crop_view" in record else "")
    rng = np.random.default_rng([options.seed, zlib.crc32(name.encode())])
    max_samples = min(options.max_samples, record.get("crop_samples", options.max_samples))
    samples = audio.load(record, rng, max_samples)
    if "gain_db" in record:  # QbE: s3prl reads QUESST with sox's `gain -3`
        samples = samples * np.float32(10.0 ** (record["gain_db"] / 20.0))
    return audio.normalize(samples) if options.normalize_audio else samples


def crop_views(records: Sequence[dict[str, Any]], views: int) -> list[dict[str, Any]]:
    """Each record with `crop_samples` as `views` records, one per random crop (`crop_view`)."""
    out = []
    for r in records:
        count = views if "crop_samples" in r else 1
        out += [dict(r, crop_view=k) if count > 1 else r for k in range(count)]
    return out


def mean_pool(x_btd: jax.Array, mask_bt: jax.Array) -> jax.Array:
    """Mean over the valid frames of each utterance: (..., B, T, D) -> (..., B, D)."""
    weights = mask_bt.astype(x_btd.dtype)[..., None]
    return jnp.sum(x_btd * weights, axis=-2) / jnp.maximum(jnp.sum(weights, axis=-2), 1.0)


@functools.lru_cache(maxsize=16)
def _encoder_fn(cfg: models.EncoderConfig, pool: bool, normalize: bool) -> Callable:
    """Jitted (params, wav, lengths) -> (hidden states, frame lengths), pooled or not."""

    def fn(params, wav_bs, lengths_b):
        out = models.encode(cfg, params, wav_bs, lengths_b)
        hidden_lbtd = out.hidden_states.astype(jnp.float32)
        if normalize:  # s3prl's Featurizer(normalize=True): parameter-free LayerNorm per frame
            mean = hidden_lbtd.mean(-1, keepdims=True)
            var = hidden_lbtd.var(-1, keepdims=True)
            hidden_lbtd = (hidden_lbtd - mean) * jax.lax.rsqrt(var + 1e-5)
        frames_b = out.mask.sum(-1)
        if pool:
            return mean_pool(hidden_lbtd, out.mask), frames_b
        return hidden_lbtd, frames_b

    return jax.jit(fn)


def encode_batch(
    upstream: Upstream,
    wavs: Sequence[np.ndarray],
    options: ReadOptions,
    pool: bool,
    normalize: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Hidden states of a few utterances: ((L+1, B, [T,] D), frames (B,)), padded to a bucket."""
    lengths = np.array([len(w) for w in wavs], np.int32)
    if (lengths < upstream.cfg.receptive_field).any():
        raise ValueError(
            f"utterances of {lengths.min()} samples are shorter than one frame of the upstream "
            f"({upstream.cfg.receptive_field}); filter them out first"
        )
    size = options.batch_size
    padded = bucket_length(int(lengths.max()), options.pad_ratio)
    wav_bs = np.zeros((size, padded), np.float32)
    lengths_b = np.full((size,), padded, np.int32)  # filler rows: silence of full length
    for i, w in enumerate(wavs):
        wav_bs[i, : len(w)] = w
        lengths_b[i] = len(w)
    fn = _encoder_fn(upstream.cfg, pool, normalize)
    hidden, frames = jax.device_get(fn(upstream.params, wav_bs, lengths_b))
    n = len(wavs)
    return hidden[:, :n], frames[:n]


def _batches(
    records: Sequence[dict[str, Any]], options: ReadOptions
) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """(record indices, waveforms) in length-sorted batches, window by window."""
    for start in range(0, len(records), options.window):
        indices = range(start, min(start + options.window, len(records)))
        wavs = {i: read_audio(records[i], options) for i in indices}
        ordered = sorted(indices, key=lambda i: len(wavs[i]))
        for b in range(0, len(ordered), options.batch_size):
            chunk = ordered[b : b + options.batch_size]
            yield chunk, [wavs[i] for i in chunk]


def record_key(record: dict[str, Any]) -> str:
    """What identifies an utterance's audio across tasks: its path (else name) and crop."""
    key = str(record.get("path") or record.get("name"))
    if "crop_samples" in record:
        key += f"#crop{record['crop_samples']}.{record.get('crop_view', 0)}"
    return key


def extract(
    upstream: Upstream,
    records: Sequence[dict[str, Any]],
    options: ReadOptions,
    *,
    pool: bool,
    normalize: bool = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """Runs the frozen upstream over `records`: (index, (L+1, D) pooled or (L+1, T_i, D))."""
    for indices, wavs in _batches(records, options):
        hidden, frames_b = encode_batch(upstream, wavs, options, pool, normalize)
        for j, i in enumerate(indices):
            if pool:
                yield i, np.array(hidden[:, j])
            else:
                yield i, np.ascontiguousarray(hidden[:, j, : frames_b[j]])


class FeatureStore:
    """One upstream's features, extracted once per utterance and shared by every task.

    Frames are kept while they fit in `max_bytes` (a pooled vector is then their mean);
    beyond that utterance tasks get pooled vectors and CTC tasks run the upstream live.
    """

    def __init__(self, upstream: Upstream, normalize: bool, max_bytes: float):
        self.upstream, self.normalize, self.max_bytes = upstream, normalize, max_bytes
        self._frames: dict[tuple[str, int], np.ndarray] = {}
        self._pooled: dict[tuple[str, int], np.ndarray] = {}
        self.bytes = 0
        self.seconds = 0.0  # spent extracting

    def _missing(self, records: Sequence[dict], options: ReadOptions, pooled_ok: bool) -> list:
        keys = [(record_key(r), options.max_samples) for r in records]
        have = self._frames.keys() | (self._pooled.keys() if pooled_ok else set())
        return [r for r, k in zip(records, keys) if k not in have]

    def _fill(self, records: Sequence[dict], options: ReadOptions, pool: bool) -> None:
        start = time.perf_counter()
        target = self._pooled if pool else self._frames
        for i, features in extract(
            self.upstream, records, options, pool=pool, normalize=self.normalize
        ):
            target[(record_key(records[i]), options.max_samples)] = features
            self.bytes += 0 if pool else features.nbytes
        self.seconds += time.perf_counter() - start

    def _frames_fit(self, records: Sequence[dict]) -> bool:
        estimate = estimate_frame_bytes(self.upstream, records)
        return estimate is not None and self.bytes + estimate <= self.max_bytes

    def pooled(
        self, records: Sequence[dict], target_fn: Callable, options: ReadOptions
    ) -> tuple[np.ndarray, np.ndarray]:
        """((L+1, N, D) time-averaged hidden states, (N, groups) int targets)."""
        missing = self._missing(records, options, pooled_ok=True)
        if missing:
            self._fill(missing, options, pool=not self._frames_fit(missing))
        vectors = []
        for r in records:
            key = (record_key(r), options.max_samples)
            vectors.append(self._pooled[key] if key in self._pooled else self._frames[key].mean(1))
        targets = np.array([target_fn(r) for r in records], np.int32)
        return np.stack(vectors, axis=1), targets

    def frames(
        self, records: Sequence[dict], target_fn: Callable, options: ReadOptions
    ) -> StoredFrames | LiveFrames:
        """Frame features of `records`, stored if they fit, else computed per batch."""
        missing = self._missing(records, options, pooled_ok=False)
        if missing and not self._frames_fit(missing):
            return LiveFrames(self.upstream, records, target_fn, options, self.normalize)
        if missing:
            self._fill(missing, options, pool=False)
        sequences = [self._frames[(record_key(r), options.max_samples)] for r in records]
        return StoredFrames(sequences, [target_fn(r) for r in records])


def estimate_frame_bytes(upstream: Upstream, records: Sequence[dict[str, Any]]) -> float | None:
    """Bytes that the frame features of `records` would take, or None if lengths are unknown."""
    total = 0
    for r in records:
        if "num_samples" in r and r.get("sample_rate", audio.SAMPLE_RATE) == audio.SAMPLE_RATE:
            total += int(r["num_samples"])
        elif "path" in r:
            import soundfile as sf

            info = sf.info(r["path"])
            total += info.frames * audio.SAMPLE_RATE // info.samplerate
        else:
            return None
    per_frame = (upstream.num_layers + 1) * upstream.cfg.hidden_size * 4
    return total / upstream.cfg.hop * per_frame


def pad_frames(sequences: Sequence[np.ndarray], minimum: int = 32) -> tuple[np.ndarray, ...]:
    """N x (L+1, T_i, D) -> ((L+1, N, T, D) zero-padded, (N,) lengths); T is a power of two.

    Powers of two (from `minimum`) bound the shapes, hence the compiles, of the head's step.
    """
    lengths = np.array([s.shape[1] for s in sequences], np.int32)
    t = max(minimum, 1 << int(math.ceil(math.log2(max(lengths.max(), 1)))))
    first = sequences[0]
    out = np.zeros((first.shape[0], len(sequences), t, first.shape[2]), np.float32)
    for i, s in enumerate(sequences):
        out[:, i, : s.shape[1]] = s
    return out, lengths


class StoredFrames:
    """Frame features held in memory: batches gathered and padded."""

    def __init__(self, sequences: Sequence[np.ndarray], targets: Sequence[Any]):
        self.sequences, self.targets = list(sequences), list(targets)

    def __len__(self) -> int:
        return len(self.sequences)

    def lengths(self) -> np.ndarray:
        """Frames of every utterance."""
        return np.array([s.shape[1] for s in self.sequences])

    def batch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray, list[Any]]:
        """((L+1, B, T, D), frames (B,), targets) of the utterances at `indices`."""
        hidden, frames = pad_frames([self.sequences[i] for i in indices])
        return hidden, frames, [self.targets[i] for i in indices]


def standardize(train: Any, *others: Any) -> list[Any]:
    """Per (layer, dim) z-scores with the train split's statistics, for every split given.

    Takes pooled `(features (L+1, N, D), targets)` pairs or StoredFrames; pooled features are
    scaled over utterances, frames over all frames of the train split.
    """
    if isinstance(train, tuple):
        mean = train[0].mean(1, keepdims=True)
        scale = train[0].std(1, keepdims=True) + 1e-6
        return [((x - mean) / scale, y) for x, y in (train, *others)]
    if not isinstance(train, StoredFrames):
        raise ValueError(
            "standardize needs stored features; these are computed live (raise "
            "superb.max_feature_gb or set the task's standardize=False)"
        )
    frames = np.concatenate(train.sequences, axis=1)
    mean = frames.mean(1, keepdims=True)
    scale = frames.std(1, keepdims=True) + 1e-6
    return [
        StoredFrames([(x - mean) / scale for x in split.sequences], split.targets)
        for split in (train, *others)
    ]


class LiveFrames:
    """Frame features computed on demand by the frozen upstream (data too big to store)."""

    def __init__(
        self,
        upstream: Upstream,
        records: Sequence[dict[str, Any]],
        target_fn: Callable[[dict[str, Any]], Any],
        options: ReadOptions,
        normalize: bool = False,
    ):
        self.upstream, self.records, self.target_fn = upstream, records, target_fn
        self.options, self.normalize = options, normalize

    def __len__(self) -> int:
        return len(self.records)

    def batch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray, list[Any]]:
        """((L+1, B, T, D), frames (B,), targets), running the upstream on the waveforms."""
        options = dataclasses.replace(self.options, batch_size=len(indices))
        records = [self.records[i] for i in indices]
        wavs = [read_audio(r, options) for r in records]
        hidden, frames = encode_batch(self.upstream, wavs, options, False, self.normalize)
        return hidden, frames, [self.target_fn(r) for r in records]
