"""All ten SUPERB tasks: the table and the leaderboard's superb_s, with no "partial" label."""

import json
import pathlib

import pytest
import superb_fixtures as fx
from helpers import load_config

from stackdistill.superb import report, run, score

REPO = pathlib.Path(__file__).resolve().parents[1]
TEACHER = dict(load_config(REPO / "configs/demo.py").teacher.random_arch, num_layers=3)


def _values(**overrides):
    at_fbank = {t: {m.name: m.fbank for m in score.metrics_of(t)} for t in score.TASKS}
    for task, value in overrides.items():
        at_fbank[task] = value
    return at_fbank


def test_table_of_ten_tasks_has_the_full_score_only():
    values = _values(pr={"per": (82.01 + 3.53) / 2})  # PR half-way: 500 / 10 tasks
    s = {"values": values, "superb_s": score.score(values), "missing": [],
         "partial_superb_s": score.score(values), "partial_tasks": list(score.TASKS),
         "paper_superb_s": score.score(values, score.PAPER_TASKS)}  # fmt: skip
    assert s["superb_s"] == pytest.approx(50.0)
    text = "\n".join(report.superb_table({"weighted": s}))
    assert "partial" not in text and "missing" not in text
    assert "| weighted |" in text and "| 50.0 |" in text and "QBE MTWV" in text
    assert text.index("PR PER") < text.index("QBE MTWV") < text.index("SD DER") < text.index("SF")


@pytest.mark.slow  # ~2-3 min on 2 busy cores
def test_eval_on_all_ten_tasks(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.mktemp("ten")
    monkeypatch.setenv("STACKDISTILL_CACHE", str(root / "sd_cache"))
    fx.make_speech_commands(root)
    fx.make_librispeech(root)
    fx.make_voxceleb1(root)
    fx.make_fluent_commands(root)
    fx.make_iemocap(root)
    fx.make_snips(root)
    fx.make_quesst14(root)
    fx.make_libri2mix_sd(root)
    sv = fx.make_voxceleb1_sv(root / "sv")  # its own VoxCeleb1 copy (other speakers' files)
    c = load_config(REPO / "configs/superb_demo.py", str(root))
    c.teacher.random_arch = TEACHER
    c.superb.asv.path, c.superb.asv.trials = str(sv["path"]), str(sv["trials"])
    s = c.superb
    s.progress, s.layer_selection, s.pad_ratio = False, "weighted", 4.0
    s.er.folds, s.sf.lstm_layers = (1, 2), 1
    for name in s.tasks:
        if name == "qbe":
            continue
        s[name].update(total_steps=8, eval_every=4, log_every=4, checkpoint_every=8, batch_size=8)
        s[name].update(lr=1e-2, proj_dim=16)
        if s[name].get("lstm_dim"):
            s[name].update(lstm_dim=8)
    s.asv.agg_dim = 16
    work = tmp_path_factory.mktemp("ten_work")
    (result,) = run.run(c, str(work), mode="eval")
    assert list(result["tasks"]) == list(score.TASKS)
    full = result["superb"]["weighted"]
    assert full["missing"] == [] and full["superb_s"] == pytest.approx(score.score(full["values"]))
    saved = json.loads((work / "superb/teacher/results.json").read_text())
    assert saved["superb"]["weighted"]["superb_s"] == pytest.approx(full["superb_s"])
    md = (work / "superb/teacher/results.md").read_text()
    assert "partial" not in md and "needs every task" not in md
    header = next(line for line in md.splitlines() if line.startswith("| features |"))
    assert header.count("|") == len(score.COLUMNS) + 4  # features, 11 columns, 2 scores
