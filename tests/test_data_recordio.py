"""The shared record codec: round trips, dtypes, and packed audio in the first layout."""

import json
import struct

import numpy as np
import pytest

from stackdistill.data import pack, recordio


def test_encode_decode_round_trip_every_dtype():
    rng = np.random.default_rng(0)
    arrays = {
        "a": rng.integers(-(2**15), 2**15, (4, 3)).astype(np.int16),
        "b": rng.normal(size=(2, 5)).astype(recordio.BFLOAT16),
        "c": rng.normal(size=7).astype(np.float32),
    }
    back = recordio.decode(
        recordio.encode(b"TEST", {"name": "x", "n": np.int64(3)}, arrays), b"TEST"
    )
    assert back["name"] == "x" and back["n"] == 3 and "arrays" not in back
    for key, value in arrays.items():
        assert back[key].dtype == value.dtype
        np.testing.assert_array_equal(back[key], value)
    with pytest.raises(ValueError, match="unsupported dtype"):
        recordio.encode(b"TEST", {}, {"x": np.zeros(2, np.float64)})
    with pytest.raises(ValueError, match="not a stackdistill"):
        recordio.decode(recordio.encode(b"TEST", {}, arrays), b"SDA1")


def _first_layout(samples: np.ndarray, labels: dict) -> bytes:
    """A packed record as pack.py wrote them first: magic, size, JSON header, int16 samples."""
    header = json.dumps(dict(labels, sample_rate=16000, num_samples=len(samples))).encode()
    return b"SDA1" + struct.pack("<I", len(header)) + header + samples.astype("<i2").tobytes()


def test_packed_audio_reads_both_ways_in_the_first_layout():
    samples = (np.arange(1000) - 500).astype(np.int16)
    old = pack.decode_record(_first_layout(samples, {"name": "u", "text": "hi"}))
    np.testing.assert_array_equal(old["audio"], samples)
    assert (old["name"], old["text"], old["num_samples"]) == ("u", "hi", 1000)
    # A record written now keeps the samples right after the header, as old readers expect.
    new = pack.encode_record(samples, {"name": "u"})
    (size,) = struct.unpack("<I", new[4:8])
    np.testing.assert_array_equal(np.frombuffer(new, "<i2", offset=8 + size), samples)
    assert json.loads(new[8 : 8 + size])["num_samples"] == 1000


def test_shard_paths_need_shards(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .array_record shards"):
        recordio.shard_paths(tmp_path)
    for name in ("b.array_record", "a.array_record", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert recordio.shard_paths(tmp_path) == [
        str(tmp_path / n) for n in ("a.array_record", "b.array_record")
    ]
