"""SUPERB SD: the Libri2Mix (s3prl-prepared) reader, labels, PIT loss, DER grid, --mode=eval."""

import json
import pathlib

import numpy as np
import pytest
import superb_fixtures as fx
from helpers import load_config

from stackdistill.superb import benchmark, run, sd
from stackdistill.superb import config as superb_config
from stackdistill.superb.datasets import MissingData, libri2mix

REPO = pathlib.Path(__file__).resolve().parents[1]
TEACHER = dict(load_config(REPO / "configs/demo.py").teacher.random_arch, num_layers=3)


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    return fx.make_libri2mix_sd(tmp_path_factory.mktemp("sd_root"))


@pytest.fixture(autouse=True)
def _private_teacher_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("STACKDISTILL_CACHE", str(tmp_path_factory.getbasetemp() / "sd_cache"))


def test_reader_recordings_and_segments(mix):
    data = libri2mix.read(str(mix["path"]))
    assert data.sizes() == mix["sizes"]
    rec = data.splits["test"][0]
    assert rec["speakers"] == ["100", "101"] and len(rec["segments"]) == 2
    (s1, e1, _), (s2, e2, _) = rec["segments"]
    assert s1 == 0.0 and s1 < s2 < e1  # the two speakers overlap
    assert [k for *_, k in rec["reference"]] == ["100", "101"]  # from test/rttm


def test_wrong_paths_name_the_field(mix, tmp_path):
    c = superb_config.default_config()
    with pytest.raises(MissingData, match=r"set config\.superb\.sd\.path"):
        benchmark.build("sd", c, str(tmp_path))
    (tmp_path / "train").mkdir()
    c.sd.path = str(tmp_path)
    with pytest.raises(MissingData, match=r"config\.superb\.sd\.path.*train/wav\.scp"):
        benchmark.build("sd", c, str(tmp_path))


def test_frame_labels_and_pit_loss_by_hand():
    # frame shift 320 (20 ms): [0.01, 0.05) -> frames rint(0.5)=0 .. rint(2.5)=2
    labels = sd.frame_labels([(0.01, 0.05, "b"), (0.04, 0.1, "a")], ["a", "b"], 6, 320, 2)
    np.testing.assert_array_equal(labels, [[0, 1], [0, 1], [1, 0], [1, 0], [1, 0], [0, 0]])
    # zero logits: BCE log 2 on every frame and speaker, whatever the order
    frames = np.array([6, 3])
    both = np.stack([labels, labels])
    assert float(sd.pit_loss(np.zeros((2, 6, 2)), both, frames)) == pytest.approx(np.log(2))
    # logits matching the labels with speakers swapped lose nothing to the order
    logits = 20.0 * (2 * labels[None, :, ::-1] - 1)
    assert float(sd.pit_loss(logits, labels[None], np.array([6]))) < 1e-6


def test_best_der_over_the_score_sh_grid():
    labels = sd.frame_labels([(0.0, 0.6, "a"), (0.4, 1.0, "b")], ["a", "b"], 50, 320, 2)
    target = {"name": "r", "reference": [(0.0, 0.6, "a"), (0.4, 1.0, "b")]}
    probs = 0.4 * labels + 0.35  # 0.75 where active, 0.35 elsewhere
    der, grid = sd.best_der([(target, probs)], 320)
    assert der == 0.0 and len(grid) == 10
    # at 0.3 both speakers are on for the whole second: 0.4 s + 0.4 s false alarm of 1.2 s
    assert grid["th0.3_med1"] == pytest.approx(0.8 / 1.2)
    assert grid["th0.5_med1"] == 0.0 and grid["th0.7_med11"] == 0.0


def _config(mix, steps=10):
    c = load_config(REPO / "configs/superb_demo.py", str(mix["path"].parent))
    c.teacher.random_arch = TEACHER
    c.superb.tasks = ("sd",)
    c.superb.progress = False
    c.superb.layer_selection = "weighted"
    c.superb.sd.update(total_steps=steps, eval_every=5, log_every=5, checkpoint_every=5)
    c.superb.sd.update(batch_size=4, lstm_dim=16, lr=1e-2)
    return c


@pytest.mark.slow  # ~30 s on 2 busy cores
def test_eval_sd_end_to_end(mix, tmp_path):
    c = _config(mix)
    (result,) = run.run(c, str(tmp_path), mode="eval")
    r = json.loads((tmp_path / "superb/teacher/results.json").read_text())["tasks"]["sd"]
    assert (r["num_train"], r["num_dev"], r["num_test"]) == (4, 2, 2) and r["metric"] == "der"
    assert 0.0 <= r["test"] and r["baseline"] == 1.0
    assert r["protocol"]["head"]["lstm_dim"] == 16
    assert result["superb"]["weighted"]["values"]["sd"]["der"] == pytest.approx(100 * r["test"])
    assert "| sd | DER % |" in (tmp_path / "superb/teacher/results.md").read_text()
    again = run.run(c, str(tmp_path), mode="eval")[0]["tasks"]["sd"]
    assert again["resumed_from"] == 10 and again["test"] == r["test"]
