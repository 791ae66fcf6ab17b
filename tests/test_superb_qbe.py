"""SUPERB QbE: the QUESST 2014 reader, subsequence DTW, and --mode=eval on a tiny QUESST."""

import itertools
import json
import pathlib

import numpy as np
import pytest
import superb_fixtures as fx
from helpers import load_config

from stackdistill.superb import benchmark, qbe, run
from stackdistill.superb.datasets import MissingData, quesst14

REPO = pathlib.Path(__file__).resolve().parents[1]
TEACHER = dict(load_config(REPO / "configs/demo.py").teacher.random_arch, num_layers=3)


@pytest.fixture(scope="module")
def quesst(tmp_path_factory):
    return fx.make_quesst14(tmp_path_factory.mktemp("quesst_root"))


@pytest.fixture(autouse=True)
def _private_teacher_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("STACKDISTILL_CACHE", str(tmp_path_factory.getbasetemp() / "sd_cache"))


def test_reader_lists_queries_utterances_and_truth(quesst):
    data = quesst14.read(str(quesst["path"]))
    assert quesst14.sizes(data) == quesst["sizes"]
    assert {k: len(v) for k, v in data.splits.items()} == {"docs": 7, "dev": 3, "test": 3}
    dev = {q["name"]: q for q in data.splits["dev"]}
    assert dev["quesst14_dev_0001"]["targets"] == ["quesst14_00003"]  # "window"
    assert dev["quesst14_dev_0002"]["targets"] == ["quesst14_00006"]  # "music"
    assert not dev["quesst14_dev_0003"]["english"] and data.splits["docs"][-1]["language"] == (
        "nnbasque"
    )
    assert all(r["gain_db"] == -3.0 for r in data.splits["docs"])


def _brute_force(dist):
    """Every asymmetric path (query +1, utterance +0/1/2 per step), open begin and end."""
    n, m = dist.shape
    best = np.inf
    for start in range(m):
        for steps in itertools.product((0, 1, 2), repeat=n - 1):
            cols = np.cumsum((start, *steps))
            if cols[-1] < m:
                best = min(best, dist[np.arange(n), cols].sum())
    return best / n


def test_subsequence_dtw_against_every_path():
    assert qbe.subsequence_dtw(np.array([[1.0, 0, 1], [1, 1, 0]])) == 0.0  # by hand
    rng = np.random.default_rng(0)
    for n, m in ((1, 4), (3, 5), (4, 7), (5, 6)):
        dist = rng.random((n, m))
        assert qbe.subsequence_dtw(dist) == pytest.approx(_brute_force(dist))
    # a query found inside an utterance (the same frames) costs ~0 and scores best
    doc = rng.standard_normal((40, 8))
    others = [rng.standard_normal((40, 8)) for _ in range(3)]
    scores = qbe.query_scores(doc[10:20], [others[0], doc, *others[1:]])
    assert scores.argmax() == 1 and scores.mean() == pytest.approx(0.0, abs=1e-9)
    assert (qbe.query_scores(doc[:4], [doc, others[0]]) == 0).all()  # under 5 frames


def _config(path):
    c = load_config(REPO / "configs/superb_demo.py", str(path.parent))
    c.teacher.random_arch = TEACHER
    c.superb.tasks = ("qbe",)
    c.superb.progress = False
    return c


def test_eval_qbe_end_to_end(quesst, tmp_path):
    c = _config(quesst["path"])
    (result,) = run.run(c, str(tmp_path), mode="eval")
    r = json.loads((tmp_path / "superb/teacher/results.json").read_text())["tasks"]["qbe"]
    assert (r["num_dev"], r["num_test"], r["num_docs"]) == (2, 2, 6)
    assert len(r["per_layer"]) == TEACHER["num_layers"] + 1  # "best": every hidden state
    best = max(r["per_layer"], key=lambda k: (r["per_layer"][k]["dev"], -int(k)))
    assert r["layer"] == int(best) and r["test"] == r["per_layer"][best]["test"]
    assert all(-200 < v["test"] <= 1 and -200 < v["dev"] <= 1 for v in r["per_layer"].values())
    assert r["layer_weights"][r["layer"]] == 1.0
    superb = result["superb"]["weighted"]
    assert superb["values"]["qbe"] == {"mtwv": r["test"]}  # MTWV stays a fraction
    md = (tmp_path / "superb/teacher/results.md").read_text()
    assert "| qbe | MTWV |" in md and "QBE MTWV" in md
    # a rerun reads every layer's MTWV back from heads/qbe/layers.json
    again = run.run(c, str(tmp_path), mode="eval")[0]["tasks"]["qbe"]
    assert again["resumed_from"] == TEACHER["num_layers"] + 1 and again["test"] == r["test"]
    # one layer only
    c.superb.qbe.layer = "-1"
    last = run.run(c, str(tmp_path / "last"), mode="eval")[0]["tasks"]["qbe"]
    assert list(last["per_layer"]) == [str(TEACHER["num_layers"])]
    assert last["test"] == r["per_layer"][str(TEACHER["num_layers"])]["test"]


def test_qbe_wrong_path_names_the_field(quesst, tmp_path):
    c = _config(quesst["path"]).superb
    c.qbe.path = str(tmp_path / "nowhere")
    with pytest.raises(MissingData, match=r"config\.superb\.qbe\.path.*nowhere"):
        benchmark.build("qbe", c, str(tmp_path))
    broken = tmp_path / "quesst14Database"
    (broken / "scoring").mkdir(parents=True)
    c.qbe.path = str(broken)
    with pytest.raises(MissingData, match=r"config\.superb\.qbe\.path.*language_key_utterances"):
        benchmark.build("qbe", c, str(tmp_path))
