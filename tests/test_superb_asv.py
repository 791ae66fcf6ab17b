"""SUPERB ASV: the VoxCeleb1 verification reader, the x-vector head, --mode=eval on a tiny copy."""

import json
import pathlib

import jax
import numpy as np
import pytest
import superb_fixtures as fx
from helpers import load_config

from stackdistill.superb import asv, benchmark, detection, run
from stackdistill.superb import config as superb_config
from stackdistill.superb.datasets import MissingData, voxceleb1

REPO = pathlib.Path(__file__).resolve().parents[1]
TEACHER = dict(load_config(REPO / "configs/demo.py").teacher.random_arch, num_layers=3)


@pytest.fixture(scope="module")
def vox(tmp_path_factory):
    return fx.make_voxceleb1_sv(tmp_path_factory.mktemp("vox_root"))


@pytest.fixture(autouse=True)
def _private_teacher_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("STACKDISTILL_CACHE", str(tmp_path_factory.getbasetemp() / "sd_cache"))


def test_reader_splits_and_trials(vox):
    data, trials = voxceleb1.read_verification(str(vox["path"]), str(vox["trials"]))
    assert len(data.splits["train"]) == vox["train"]  # the 4 short files dropped
    assert len(data.splits["test"]) == vox["test"] and len(trials) == vox["pairs"] == 15
    assert data.classes[0] == fx.SV_TRAIN_SPEAKERS
    assert sum(label for label, _, _ in trials) == 3  # one same-speaker pair per test speaker
    assert all(r["crop_samples"] == 128_000 for r in data.splits["train"])


def test_wrong_paths_name_the_field(vox, tmp_path):
    c = superb_config.default_config()
    with pytest.raises(MissingData, match=r"set config\.superb\.asv\.path"):
        benchmark.build("asv", c, str(tmp_path))
    c.asv.path = str(vox["path"])
    with pytest.raises(MissingData, match=r"set config\.superb\.asv\.trials"):
        benchmark.build("asv", c, str(tmp_path))
    c.asv.path = str(tmp_path)
    with pytest.raises(MissingData, match=r"config\.superb\.asv\.path.*dev/wav"):
        benchmark.build("asv", c, str(tmp_path))


def test_xvector_shapes_and_am_softmax():
    model = asv.XVector(num_classes=5, input_dim=16, agg_dim=24)
    hidden = np.random.default_rng(0).standard_normal((3, 2, 40, 8)).astype(np.float32)
    frames = np.array([40, 20])
    params = model.init(jax.random.key(0), hidden, frames, train=True)["params"]
    assert params["Conv_0"]["kernel"].shape == (5, 16, 16)  # context 5: Linear(16 * 5, 16)
    assert model.apply({"params": params}, hidden, frames).shape == (2, 16)
    # padding past `frames` does not change an utterance's embedding
    cut = model.apply({"params": params}, hidden[:, 1:, :20], frames[1:])
    np.testing.assert_allclose(model.apply({"params": params}, hidden, frames)[1], cut[0], 1e-5)
    # AM-softmax: with m = 0 and s = 1 it is the softmax CE of the cosines
    x, w = np.eye(2, 3, dtype=np.float32), np.eye(3, 2, dtype=np.float32)
    expected = -np.log(np.exp(1) / (np.exp(1) + 1))
    assert float(asv.am_softmax_loss(x, w, np.array([0, 1]), s=1.0, m=0.0)) == pytest.approx(
        expected
    )
    margin = float(asv.am_softmax_loss(x, w, np.array([0, 1]), s=1.0, m=0.4))
    assert margin == pytest.approx(-np.log(np.exp(0.6) / (np.exp(0.6) + 1)))


def _config(vox, steps=12):
    c = load_config(REPO / "configs/superb_demo.py", str(vox["path"].parent))
    c.teacher.random_arch = TEACHER
    c.superb.tasks = ("asv",)
    c.superb.progress = False
    c.superb.layer_selection = "weighted"
    c.superb.asv.update(total_steps=steps, eval_every=6, log_every=6, checkpoint_every=6)
    c.superb.asv.update(batch_size=8, proj_dim=16, agg_dim=24, lr=1e-3)
    return c


@pytest.mark.slow  # ~35 s on 2 busy cores
def test_eval_asv_end_to_end(vox, tmp_path):
    c = _config(vox)
    (result,) = run.run(c, str(tmp_path), mode="eval")
    r = json.loads((tmp_path / "superb/teacher/results.json").read_text())["tasks"]["asv"]
    assert (r["num_train"], r["num_test"]) == (16, 6) and r["metric"] == "eer"
    assert 0.0 <= r["test"] <= 1.0 and r["baseline"] == 0.5
    assert r["test"] == r["dev"]  # the kept head is the best of the test evaluations
    assert r["protocol"]["head"]["optimizer"] == "adamw"
    assert any("total_steps 12 (s3prl 200000" in d for d in r["deviations"])
    assert result["superb"]["weighted"]["values"]["asv"]["eer"] == pytest.approx(100 * r["test"])
    md = (tmp_path / "superb/teacher/results.md").read_text()
    assert "| asv | EER % |" in md and "ASV EER %" in md
    again = run.run(c, str(tmp_path), mode="eval")[0]["tasks"]["asv"]
    assert again["resumed_from"] == 12 and again["test"] == r["test"]


def test_trial_scoring_is_the_cosine_eer():
    names = ["a/v/1.wav", "a/v/2.wav", "b/v/1.wav"]
    trials = [(1, names[0], names[1]), (0, names[0], names[2]), (0, names[1], names[2])]
    e = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    cosines = [float(e[0] @ e[1]), float(e[0] @ e[2]), float(e[1] @ e[2])]
    assert detection.equal_error_rate([t[0] for t in trials], cosines) == 0.0
