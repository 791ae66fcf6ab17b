"""Decoding: formats, channels, sample rates, crops and broken files, against analytic signals."""

import math

import numpy as np
import pytest
import soundfile as sf

from stackdistill.data import audio

SR = audio.SAMPLE_RATE


def _load(path, max_samples=10**9, seed=0):
    return audio.load({"path": str(path)}, np.random.default_rng(seed), max_samples)


def _sine(freq, sample_rate, seconds, amplitude=0.5):
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("sample_rate", [8_000, 16_000, 22_050, 44_100, 48_000])
def test_resampled_sine_matches_the_sine_sampled_at_16k(tmp_path, sample_rate):
    path = tmp_path / "sine.wav"
    sf.write(path, _sine(440.0, sample_rate, 1.0), sample_rate, subtype="FLOAT")
    out = _load(path)
    assert out.dtype == np.float32
    assert len(out) == math.ceil(sample_rate * 16_000 / sample_rate)
    expected = _sine(440.0, SR, 1.0)
    interior = slice(200, len(expected) - 200)  # filter edge effects
    np.testing.assert_allclose(out[interior], expected[interior], atol=2e-3)


@pytest.mark.parametrize(
    ("subtype", "tolerance"), [("PCM_16", 1 / 32768), ("PCM_32", 1e-7), ("FLOAT", 0.0)]
)
def test_integer_and_float_files_scale_to_unit_range(tmp_path, subtype, tolerance):
    samples = np.linspace(-0.9, 0.9, 4_000).astype(np.float32)
    path = tmp_path / "ramp.wav"
    sf.write(path, samples, SR, subtype=subtype)
    np.testing.assert_allclose(_load(path), samples, atol=tolerance + 1e-7)


def test_int_arrays_scale_by_their_full_range():
    np.testing.assert_array_equal(
        audio.to_float(np.array([-32768, 0, 16384], np.int16)), [-1.0, 0.0, 0.5]
    )
    np.testing.assert_array_equal(
        audio.to_float(np.array([-(2**31), 2**30], np.int32)), [-1.0, 0.5]
    )


def test_stereo_is_averaged_to_mono(tmp_path):
    left = _sine(300.0, SR, 0.5)
    right = 0.25 * _sine(700.0, SR, 0.5)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="PCM_24")
    np.testing.assert_allclose(_load(path), (left + right) / 2, atol=1e-5)


def test_crop_is_a_contiguous_window_of_the_file(tmp_path):
    samples = (np.arange(40_000) / 40_000).astype(np.float32)  # unique values locate the crop
    path = tmp_path / "ramp.wav"
    sf.write(path, samples, SR, subtype="FLOAT")
    offsets = set()
    for seed in range(20):
        out = _load(path, max_samples=10_000, seed=seed)
        assert len(out) == 10_000
        offset = int(np.argmin(np.abs(samples - out[0])))
        np.testing.assert_array_equal(out, samples[offset : offset + 10_000])
        assert 0 <= offset <= 30_000
        offsets.add(offset)
    assert len(offsets) > 10  # the crop position is random


def test_crop_of_a_48k_file_is_a_window_of_its_16k_version(tmp_path):
    seconds = 3.0
    samples = (np.arange(int(48_000 * seconds)) / (48_000 * seconds)).astype(np.float32)
    path = tmp_path / "ramp48k.wav"
    sf.write(path, samples, 48_000, subtype="FLOAT")
    out = _load(path, max_samples=16_000, seed=3)
    assert len(out) == 16_000
    # A linear ramp survives resampling: away from the edges out[k] = (offset + k) / (16k * 3 s).
    k = np.arange(100, 15_900)
    offset = out[8_000] * SR * seconds - 8_000
    np.testing.assert_allclose(out[k], (offset + k) / (SR * seconds), atol=1e-4)
    assert 0 <= offset <= SR * seconds - 16_000 + 1


def test_short_audio_is_not_padded_or_cropped(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, _sine(200.0, SR, 0.25), SR)
    assert len(_load(path, max_samples=250_000)) == 4_000


def test_unreadable_file_is_bad_audio(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEgarbage" + bytes(range(200)))
    with pytest.raises(audio.BadAudio, match="unreadable"):
        _load(path)
    with pytest.raises(audio.BadAudio, match="unreadable"):
        _load(tmp_path / "missing.flac")


def test_empty_file_is_bad_audio(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), SR)
    with pytest.raises(audio.BadAudio, match="empty"):
        _load(path)


def test_all_nan_is_bad_audio_and_some_nan_become_zero(tmp_path):
    path = tmp_path / "nan.wav"
    sf.write(path, np.full(1_000, np.nan, np.float32), SR, subtype="FLOAT")
    with pytest.raises(audio.BadAudio, match="finite"):
        _load(path)
    samples = np.full(1_000, 0.25, np.float32)
    samples[10:20] = np.nan
    samples[30] = np.inf
    sf.write(path, samples, SR, subtype="FLOAT")
    out = _load(path)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[10:20], 0.0)
    assert out[30] == 0.0 and out[0] == 0.25


def test_array_records_decode_like_files():
    samples = (_sine(440.0, 22_050, 1.0) * 32767).astype(np.int16)
    out = audio.load(
        {"audio": samples, "sample_rate": 22_050}, np.random.default_rng(0), max_samples=10**9
    )
    expected = _sine(440.0, SR, 1.0)
    np.testing.assert_allclose(out[200:-200], expected[200:-200], atol=2e-3)


def test_normalize_gives_zero_mean_unit_variance():
    x = _sine(100.0, SR, 0.5) * 0.1 + 0.3
    y = audio.normalize(x)
    assert abs(float(y.mean())) < 1e-5
    assert abs(float(y.std()) - 1.0) < 1e-3
    assert np.all(audio.normalize(np.zeros(100, np.float32)) == 0.0)  # silence stays finite
