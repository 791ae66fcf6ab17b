"""superb end to end: upstream specs, an eval of teacher + a student checkpoint, CKA, IC-style
manifests; the slow test runs the default mini-SUPERB on the demo teacher."""

import json
import pathlib

import grain
import jax
import numpy as np
import pytest
from helpers import DEMO, load_config

from stackdistill import checkpoint, teacher
from stackdistill import config as config_lib
from stackdistill.data import manifest
from stackdistill.superb import features, run, tasks, upstream

TINY_TEACHER = dict(load_config(DEMO).teacher.random_arch, num_layers=4)  # the demo's, 4 layers


def _config(shared: pathlib.Path, corpus_dir: str, num: int):
    """The base config with a tiny random teacher, the test corpus and few head steps."""
    c = config_lib.base_config()
    c.teacher.name = str(shared / "teacher")
    c.teacher.random_arch = TINY_TEACHER
    c.superb.synth.path = corpus_dir
    c.superb.synth.num = num
    c.superb.synth.test_fraction = 0.3
    c.superb.pad_ratio = 4.0  # two padded shapes, few compiles
    for name in ("ks_synth", "pr_synth", "ic"):
        c.superb[name].update(total_steps=30, log_every=10, batch_size=8)
    c.superb.pr_synth.batch_size = 64  # every batch holds the longest utterance: one shape
    return c


def _write_student_run(c, workdir: pathlib.Path, depth: int, step: int) -> None:
    """A distillation checkpoint at a shallow stage, written by the project's Checkpointer.

    The student is the teacher's first `depth` layers (DistilHuBERT's init), so its hidden
    states 0..depth are the teacher's, exactly.
    """
    t_cfg, t_params = teacher.load(teacher.prepare(c.teacher, workdir))
    s_cfg = t_cfg.replace(num_layers=depth)
    encoder = dict(t_params)
    encoder["encoder"] = dict(t_params["encoder"])
    encoder["encoder"]["layers"] = jax.tree_util.tree_map(
        lambda x: x[:depth], t_params["encoder"]["layers"]
    )
    meta = {"step": step, "stage": 0, "depth": depth, "encoder_config": s_cfg.to_dict()}
    ckpt = checkpoint.Checkpointer(workdir, every=1, keep=1)
    data_iter = iter(grain.MapDataset.range(4).to_iter_dataset())
    ckpt.save(step, {"params": {"encoder": encoder, "heads": {}}}, data_iter, meta, c.to_dict())
    ckpt.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A folder for the random teacher and its converted-params cache, shared by the tests."""
    return tmp_path_factory.mktemp("superb_shared")


@pytest.fixture(autouse=True)
def _private_teacher_cache(shared, monkeypatch):
    monkeypatch.setenv("STACKDISTILL_CACHE", str(shared / "cache"))


def test_parse_upstream_specs(tmp_path):
    assert upstream.parse_spec("teacher", tmp_path) == ("teacher", "teacher", "", None)
    name, kind, source, step = upstream.parse_spec("student", tmp_path / "run_a")
    assert (name, kind, source, step) == ("student-run_a", "student", str(tmp_path / "run_a"), None)
    assert upstream.parse_spec("top=student:/x/run_b@40", tmp_path) == (
        "top",
        "student",
        "/x/run_b",
        40,
    )
    assert upstream.parse_spec("hf:/models/exported", tmp_path)[:2] == ("hf-exported", "hf")
    for bad in ("student:/x@last", "hf:", "teacher:/x", "wav2vec"):
        with pytest.raises(ValueError):
            upstream.parse_spec(bad, tmp_path)
    c = config_lib.base_config()
    c.superb.upstreams = ("teacher", "student")  # the workdir holds no distillation run
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run.run(c, str(tmp_path))
    assert not (tmp_path / "superb").exists()  # refused before any work


def test_load_an_exported_transformers_directory(synthetic_corpus, shared):
    c = _config(shared, str(pathlib.Path(synthetic_corpus).parent), 48)
    path = teacher.prepare(c.teacher, shared)
    up = upstream.load(f"hf:{path}", c, shared)
    assert (up.name, up.kind, up.num_layers) == ("hf-teacher", "hf", 4)
    assert up.info["hidden_size"] == 48 and up.info["encoder_params"] > 0


def test_eval_teacher_and_student_checkpoint(synthetic_corpus, shared, tmp_path):
    corpus_dir = str(pathlib.Path(synthetic_corpus).parent)
    c = _config(shared, corpus_dir, 48)
    run_dir = tmp_path / "run"
    _write_student_run(c, run_dir, depth=2, step=7)
    # An IC-style task: two label groups read from a labelled manifest with a split field.
    records = manifest.read_manifest(synthetic_corpus)
    lines = [
        {
            "path": r["path"],
            "action": r["text"].split()[0],
            "object": "sentence" if r["keyword"] < 0 else "word",
            "split": "test" if tasks.hash_unit(r["name"]) < 0.3 else "train",
        }
        for r in records
    ]
    ic_manifest = tmp_path / "ic.jsonl"
    ic_manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    c.superb.ic.update(manifest=str(ic_manifest), label_keys=("action", "object"))
    c.superb.tasks = ("ks_synth", "pr_synth", "ic")  # sid_synth: the slow test
    c.superb.upstreams = ("teacher", f"mid=student:{run_dir}@7")
    c.superb.cka_utterances = 12

    results = run.run(c, str(tmp_path), mode="eval")

    out = tmp_path / "superb"
    for name, depth in (("teacher", 4), ("mid", 2)):
        for f in ("results.md", "results.json", "layer_weights.png"):
            assert (out / name / f).stat().st_size > 0, (name, f)
        saved = json.loads((out / name / "results.json").read_text())
        assert list(saved["tasks"]) == ["ks_synth", "pr_synth", "ic"]
        for task in saved["tasks"].values():
            assert 0.0 <= task["test"] < 10  # an error rate can pass 100% (insertions)
            assert len(task["layer_weights"]) == depth + 1
            assert sum(task["layer_weights"]) == pytest.approx(1.0, abs=1e-5)
        assert "| ks_synth | acc % |" in (out / name / "results.md").read_text()
    mid = results[1]["upstream"]
    assert mid["info"]["step"] == 7 and mid["info"]["depth"] == 2
    cka = np.array(json.loads((out / "mid" / "cka.json").read_text())["cka"])
    assert cka.shape == (3, 5) and ((cka >= 0) & (cka <= 1 + 1e-9)).all()
    # The student's layers are the teacher's first two: identical representations.
    np.testing.assert_allclose(np.diag(cka), 1.0, atol=1e-6)
    assert (cka[:, 3:] < 1 - 1e-3).all()
    assert (out / "mid" / "cka.png").stat().st_size > 0
    compare = (out / "compare.md").read_text()
    assert "| teacher | mid |" in compare and "| pr_synth | PER % |" in compare
    assert results[0]["tasks"]["ic"]["num_test"] == sum(x["split"] == "test" for x in lines)

    # --mode=compare reuses both results and adds nothing new.
    again = run.run(c, str(tmp_path), mode="compare")
    assert [r["tasks"]["ks_synth"]["test"] for r in again] == [
        r["tasks"]["ks_synth"]["test"] for r in results
    ]


def test_pooled_and_live_features_agree_with_stored_frames(synthetic_corpus, shared):
    c = _config(shared, str(pathlib.Path(synthetic_corpus).parent), 48)
    up = upstream.load("teacher", c, shared)
    records = manifest.read_manifest(synthetic_corpus)[:6]
    options = features.ReadOptions(batch_size=8, pad_ratio=4.0)
    stored = features.FeatureStore(up, normalize=False, max_bytes=1e9)
    small = features.FeatureStore(up, normalize=False, max_bytes=0)  # nothing fits
    target = lambda r: [r["speaker"]]
    from_frames, labels = stored.pooled(records, target, options)
    on_device, _ = small.pooled(records, target, options)
    assert from_frames.shape == (up.num_layers + 1, 6, up.cfg.hidden_size)
    np.testing.assert_allclose(on_device, from_frames, rtol=1e-5, atol=1e-5)
    assert labels.tolist() == [[r["speaker"]] for r in records]
    live = small.frames(records, target, options)
    kept = stored.frames(records, target, options)
    assert isinstance(live, features.LiveFrames) and isinstance(kept, features.StoredFrames)
    live_hidden, live_frames, _ = live.batch(range(6))
    kept_hidden, kept_frames, _ = kept.batch(range(6))
    np.testing.assert_array_equal(live_frames, kept_frames)
    for i, n in enumerate(kept_frames):
        np.testing.assert_allclose(live_hidden[:, i, :n], kept_hidden[:, i, :n], atol=1e-5)


@pytest.mark.slow
def test_mini_superb_teacher_beats_chance(tmp_path):
    """Default mini-SUPERB (1000 utterances) on configs/demo.py's random 12 x 48 teacher.

    Measured (2026-11-27, 2 shared cores): KS-synth 49.7% (majority baseline 14.5%, 193 test
    utterances from 2 unseen voices), SID-synth 23.9% (baseline 13.5%, 251 test utterances).
    """
    c = config_lib.base_config()
    c.teacher.name = str(tmp_path / "teacher")
    c.teacher.random_arch = dict(TINY_TEACHER, num_layers=12)
    c.superb.upstreams = ("teacher",)
    c.superb.tasks = ("ks_synth", "sid_synth")
    (result,) = run.run(c, str(tmp_path), mode="eval")
    ks, sid = result["tasks"]["ks_synth"], result["tasks"]["sid_synth"]
    assert ks["test"] > ks["baseline"] + 0.2, ks
    assert sid["test"] > sid["baseline"] + 0.06, sid
