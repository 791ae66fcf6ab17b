"""The grain pipeline on the synthetic corpus: batches against the wav files read with
soundfile, bad input, bucketing, resume, epochs, process sharding, global arrays."""

import json
import math
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from stackdistill import data
from stackdistill.data import manifest


@pytest.fixture
def cfg(synthetic_corpus):
    """Synthetic corpus, one unshuffled epoch, no drops, labels on."""
    c = data.default_config()
    c.update(source="synthetic", path=os.path.dirname(synthetic_corpus), batch_size=4)
    c.update(shuffle=False, num_epochs=1, drop_remainder=False, max_samples=48_000)
    c.update(min_samples=0, label_keys=("name", "keyword", "speaker"))
    return c


@pytest.fixture
def wavs(synthetic_corpus):
    """name -> float32 samples of the corpus, read with soundfile."""
    return {
        r["name"]: sf.read(r["path"], dtype="float32")[0]
        for r in manifest.read_manifest(synthetic_corpus)
    }


def _loader(cfg, **kw):
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    return data.make_loader(cfg, **kw)


def _window_offset(full, window):
    """Where `window` sits inside `full` (exact match), or None."""
    k = int(np.argmax(np.abs(window)))
    for start in np.flatnonzero(full == window[k]) - k:
        if 0 <= start <= len(full) - len(window) and np.array_equal(
            full[start : start + len(window)], window
        ):
            return int(start)
    return None


def _rows(batches):
    for batch in batches:
        for row in range(len(batch["lengths"])):
            yield batch, row


def test_batches_hold_the_files_zero_padded(cfg, wavs, synthetic_corpus):
    labels = {r["name"]: r for r in map(json.loads, open(synthetic_corpus))}
    batches = list(_loader(cfg))
    assert len(batches) == 12
    for batch, row in _rows(batches):
        assert batch["audio"].shape == (4, 48_000) and batch["audio"].dtype == np.float32
        assert batch["lengths"].dtype == np.int32
        name, length = str(batch["name"][row]), batch["lengths"][row]
        assert length == min(len(wavs[name]), 48_000)
        assert _window_offset(wavs[name], batch["audio"][row, :length]) is not None
        assert not batch["audio"][row, length:].any()
        assert batch["keyword"][row] == labels[name]["keyword"]
        assert batch["speaker"][row] == labels[name]["speaker"]
    assert sorted(str(b["name"][r]) for b, r in _rows(batches)) == sorted(wavs)


def test_long_utterances_are_cropped_to_a_random_window(cfg, wavs):
    cfg.max_samples = 8_000
    offsets = []
    for batch, row in _rows(_loader(cfg)):
        full = wavs[str(batch["name"][row])]
        length = batch["lengths"][row]
        assert length == min(len(full), 8_000) and batch["audio"].shape[1] == 8_000
        offset = _window_offset(full, batch["audio"][row, :length])
        assert offset is not None and 0 <= offset <= len(full) - length
        offsets.append(offset)
    assert len(set(offsets)) > 20


def test_short_utterances_are_skipped_and_counted(cfg, wavs):
    cfg.min_samples = int(np.median([len(x) for x in wavs.values()]))
    loader = _loader(cfg)
    names = [str(b["name"][r]) for b, r in _rows(loader)]
    short = {n for n, x in wavs.items() if len(x) < cfg.min_samples}
    assert sorted(names) == sorted(set(wavs) - short)
    assert loader.num_skipped == len(short) > 0
    assert all("too short" in note for note in loader.skipped_examples)


def test_normalize_gives_each_utterance_zero_mean_unit_variance(cfg):
    cfg.normalize = True
    for batch, row in _rows(_loader(cfg)):
        valid = batch["audio"][row, : batch["lengths"][row]].astype(np.float64)
        assert abs(valid.mean()) < 1e-4 and abs(valid.std() - 1) < 1e-3
        assert not batch["audio"][row, batch["lengths"][row] :].any()


def test_buckets_pick_the_smallest_padded_length_and_cut_padding(cfg, wavs):
    cfg.update(bucket_boundaries=(16_000, 24_000), bucket_window=4)
    batches = list(_loader(cfg))
    for batch in batches:
        assert batch["audio"].shape[1] in (16_000, 24_000, 48_000)
        fitting = [s for s in (16_000, 24_000, 48_000) if s >= batch["lengths"].max()]
        assert batch["audio"].shape[1] == fitting[0]
    assert sorted(str(b["name"][r]) for b, r in _rows(batches)) == sorted(wavs)
    padded = sum(b["audio"].size for b in batches)
    assert padded < 0.6 * len(wavs) * 48_000


def test_bad_files_are_converted_or_skipped_and_reported(tmp_path, wavs):
    t = np.arange(8_000) / 8_000
    good = {
        "stereo44k.wav": (np.stack([np.sin(t * 900), np.cos(t * 900)], 1) * 0.3, 44_100, "FLOAT"),
        "int16_8k.wav": (np.sin(t * 500) * 0.4, 8_000, "PCM_16"),
        "int32_48k.wav": (np.sin(t * 500) * 0.4, 48_000, "PCM_32"),
        "float22k.flac": (np.sin(t * 500) * 0.4, 22_050, "PCM_24"),
    }
    for name, (samples, rate, subtype) in good.items():
        sf.write(tmp_path / name, samples, rate, subtype=subtype)
    shutil.copy(
        os.path.join(os.path.dirname(data.__file__), "..", "..", "pyproject.toml"),
        tmp_path / "notaudio.wav",
    )
    sf.write(tmp_path / "empty.wav", np.zeros(0), 16_000)
    sf.write(tmp_path / "nan.wav", np.full(4_000, np.nan), 16_000, subtype="FLOAT")
    names = [*good, "notaudio.wav", "empty.wav", "nan.wav", "missing.wav"]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"path": n}) + "\n" for n in names))
    cfg = data.default_config()
    cfg.update(source="manifest", path=str(tmp_path / "m.jsonl"), batch_size=2, num_epochs=1)
    cfg.update(label_keys=("name",), drop_remainder=False, min_samples=0)
    loader = _loader(cfg)
    lengths = {str(b["name"][r]): b["lengths"][r] for b, r in _rows(loader)}
    assert lengths == {n: math.ceil(8_000 * 16_000 / good[n][1]) for n in good}
    assert loader.num_skipped == 4
    reasons = dict(note.split(": ", 1) for note in loader.skipped_examples)
    assert set(reasons) == {"notaudio.wav", "empty.wav", "nan.wav", "missing.wav"}
    assert reasons["empty.wav"] == "empty" and reasons["nan.wav"] == "no finite samples"


def test_a_source_without_usable_audio_fails_before_training(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"garbage")
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "bad.wav"}) + "\n")
    cfg = data.default_config()
    cfg.update(source="manifest", path=str(tmp_path / "m.jsonl"))
    with pytest.raises(ValueError, match=f"no usable audio .*{tmp_path}/m.jsonl"):
        _loader(cfg)


@pytest.mark.parametrize("buckets", [(), (16_000, 24_000)])
def test_resume_from_a_saved_state_repeats_the_same_batches(cfg, buckets):
    cfg.update(shuffle=True, num_epochs=None, bucket_boundaries=buckets, bucket_window=3)
    loader = _loader(cfg, seed=7)
    for _ in range(5):  # mid-window when bucketing
        next(loader)
    state = json.loads(json.dumps(loader.get_state()))  # what a checkpoint stores
    expected = [next(loader) for _ in range(16)]  # crosses an epoch boundary
    resumed = _loader(cfg, seed=7)
    resumed.set_state(state)
    for want, got in zip(expected, (next(resumed) for _ in range(16)), strict=True):
        assert want.keys() == got.keys()
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])


def test_resume_with_worker_processes(cfg):
    cfg.update(shuffle=True, num_epochs=None, num_workers=2, max_samples=16_000)
    loader = _loader(cfg)
    for _ in range(3):
        next(loader)
    state = json.loads(json.dumps(loader.get_state()))
    expected = [next(loader)["name"] for _ in range(4)]
    loader.close()
    resumed = _loader(cfg)
    resumed.set_state(state)
    got = [next(resumed)["name"] for _ in range(4)]
    resumed.close()
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_array_equal(want, have)


def test_seed_decides_order_and_crops(cfg):
    cfg.update(shuffle=True, max_samples=8_000)
    first = [b["name"].tolist() for b in _loader(cfg, seed=1)]
    assert first == [b["name"].tolist() for b in _loader(cfg, seed=1)]
    assert first != [b["name"].tolist() for b in _loader(cfg, seed=2)]


def test_each_epoch_is_complete_and_reshuffled(cfg, wavs):
    cfg.update(shuffle=True, num_epochs=2)
    names = [str(b["name"][r]) for b, r in _rows(_loader(cfg))]
    assert len(names) == 2 * len(wavs)
    first, second = names[: len(wavs)], names[len(wavs) :]
    assert sorted(first) == sorted(second) == sorted(wavs)
    assert first != second


def test_two_processes_read_disjoint_shards_that_cover_the_corpus(cfg, wavs):
    cfg.shuffle = True
    shards = [
        [str(b["name"][r]) for b, r in _rows(_loader(cfg, process_index=i, process_count=2))]
        for i in range(2)
    ]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(wavs)
    assert abs(len(shards[0]) - len(shards[1])) <= 1


def test_buckets_are_refused_with_several_processes(cfg):
    cfg.bucket_boundaries = (16_000,)
    with pytest.raises(ValueError, match="single process"):
        _loader(cfg, process_index=0, process_count=2)


def test_to_global_splits_the_batch_over_the_mesh():
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    n = 2 * len(jax.devices())
    batch = {
        "audio": np.random.default_rng(0).normal(size=(n, 64)).astype(np.float32),
        "lengths": np.arange(n, dtype=np.int32),
        "text": np.array(["x"] * n),
    }
    out = data.to_global(batch, sharding)
    np.testing.assert_array_equal(np.asarray(out["audio"]), batch["audio"])
    np.testing.assert_array_equal(np.asarray(out["lengths"]), batch["lengths"])
    assert out["lengths"].sharding.spec == PartitionSpec("data")
    assert out["audio"].sharding.spec == PartitionSpec("data", None)
    assert isinstance(out["text"], np.ndarray)


def test_grain_checkpoint_handler_saves_and_restores_the_loader(cfg, tmp_path):
    import grain
    from etils import epath

    cfg.update(shuffle=True, num_epochs=None, read_threads=0)
    loader = _loader(cfg)
    next(loader)
    handler = grain.checkpoint.CheckpointHandler()
    handler.save(epath.Path(tmp_path), item=loader)
    expected = [next(loader)["name"] for _ in range(3)]
    restored = handler.restore(epath.Path(tmp_path), item=_loader(cfg))
    for want in expected:
        np.testing.assert_array_equal(next(restored)["name"], want)
