"""Waveform decoding: any file or array -> float32 mono 16 kHz, randomly cropped, checked."""

import io
import math
from typing import Any

import numpy as np
import soundfile as sf
from etils import epath
from scipy import signal

SAMPLE_RATE = 16_000


class BadAudio(Exception):
    """An utterance that cannot be used; the message says why."""


def to_float(samples: np.ndarray) -> np.ndarray:
    """Integer PCM (int16/int32) or float samples -> float32 in [-1, 1]."""
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    if samples.dtype == np.int32:
        return (samples / 2.0**31).astype(np.float32)
    if np.issubdtype(samples.dtype, np.integer):
        raise BadAudio(f"integer samples of type {samples.dtype}: convert to int16 or int32")
    return samples.astype(np.float32, copy=False)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) -> (n,), averaging the channels."""
    if samples.ndim == 2:
        return samples.mean(axis=1, dtype=np.float32)
    if samples.ndim != 1:
        raise BadAudio(f"audio of shape {samples.shape}")
    return samples


def resample(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Polyphase resampling to 16 kHz."""
    if sample_rate == SAMPLE_RATE:
        return samples
    g = math.gcd(SAMPLE_RATE, sample_rate)
    return signal.resample_poly(samples, SAMPLE_RATE // g, sample_rate // g).astype(np.float32)


def normalize(samples: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance, as transformers' Wav2Vec2FeatureExtractor(do_normalize=True)."""
    return ((samples - samples.mean()) / np.sqrt(samples.var() + 1e-7)).astype(np.float32)


def crop_window(
    num_frames: int, sample_rate: int, max_samples: int, rng: np.random.Generator
) -> tuple[int, int]:
    """Source frames [start, stop) to read so that their 16 kHz version covers a random crop."""
    num_out = math.ceil(num_frames * SAMPLE_RATE / sample_rate)
    if num_out <= max_samples:
        return 0, num_frames
    offset_out = int(rng.integers(0, num_out - max_samples + 1))
    start = offset_out * sample_rate // SAMPLE_RATE
    needed = math.ceil(max_samples * sample_rate / SAMPLE_RATE) + 1
    return start, min(num_frames, start + needed)


def _read_file(path: str, rng: np.random.Generator, max_samples: int) -> tuple[np.ndarray, int]:
    """Reads only the frames of a random crop from an audio file (local or any epath URL)."""
    local = "://" not in path
    with sf.SoundFile(path if local else io.BytesIO(epath.Path(path).read_bytes())) as f:
        start, stop = crop_window(f.frames, f.samplerate, max_samples, rng)
        f.seek(start)
        samples = f.read(stop - start, dtype="float32", always_2d=False)
        return samples, f.samplerate


def load(record: dict[str, Any], rng: np.random.Generator, max_samples: int) -> np.ndarray:
    """Record with `path` or (`audio`, `sample_rate`) -> float32 mono 16 kHz, at most max_samples.

    Raises BadAudio when nothing usable is left: unreadable, empty, or no finite samples.
    Non-finite samples among finite ones are set to zero.
    """
    if "path" in record:
        try:
            samples, sample_rate = _read_file(record["path"], rng, max_samples)
        except Exception as e:  # libsndfile, I/O and format errors alike: skip the file
            raise BadAudio(f"unreadable ({type(e).__name__}: {e})") from e
    else:
        sample_rate = int(record["sample_rate"])
        samples = np.asarray(record["audio"])
        start, stop = crop_window(len(samples), sample_rate, max_samples, rng)
        samples = samples[start:stop]
    samples = to_mono(to_float(np.asarray(samples)))
    if samples.size == 0:
        raise BadAudio("empty")
    finite = np.isfinite(samples)
    if not finite.any():
        raise BadAudio("no finite samples")
    if not finite.all():
        samples = np.where(finite, samples, 0.0).astype(np.float32)
    return resample(samples, sample_rate)[:max_samples]
