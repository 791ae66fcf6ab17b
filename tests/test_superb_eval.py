"""--mode=eval on SUPERB's own dataset layouts (tiny espeak-ng copies, tests/superb_fixtures.py).

Split sizes, class sets, metrics, the SUPERB table and score, the deviations listed, bad paths
named, and head checkpoints that resume after an interruption."""

import json
import pathlib

import jax
import ml_collections
import numpy as np
import pytest
import superb_fixtures as fx
from helpers import load_config

from stackdistill import resume
from stackdistill.superb import config as superb_config
from stackdistill.superb import heads, run, score, tasks, training
from stackdistill.superb.datasets import MissingData

REPO = pathlib.Path(__file__).resolve().parents[1]
TEACHER = dict(load_config(REPO / "configs/demo.py").teacher.random_arch, num_layers=3)


def _superb_demo(root: pathlib.Path) -> ml_collections.ConfigDict:
    """configs/superb_demo.py read as --config=configs/superb_demo.py:ROOT reads it."""
    return load_config(REPO / "configs/superb_demo.py", str(root))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Every SUPERB dataset under one root, with the releases' own folder names."""
    root = tmp_path_factory.mktemp("superb_root")
    built = {
        "ks": fx.make_speech_commands(root),
        "libri": fx.make_librispeech(root),
        "sid": fx.make_voxceleb1(root),
        "ic": fx.make_fluent_commands(root),
        "er": fx.make_iemocap(root),
        "sf": fx.make_snips(root),
    }
    return root, built


@pytest.fixture(autouse=True)
def _private_teacher_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("STACKDISTILL_CACHE", str(tmp_path_factory.getbasetemp() / "sd_cache"))


def _config(root: pathlib.Path, tasks_: tuple[str, ...], steps: int = 40):
    c = _superb_demo(root)
    c.teacher.random_arch = TEACHER
    c.superb.tasks = tasks_
    c.superb.pad_ratio = 4.0
    c.superb.progress = False
    for name in tasks_:
        c.superb[name].update(
            total_steps=steps, eval_every=8, log_every=8, checkpoint_every=steps, batch_size=8
        )
        c.superb[name].update(lr=1e-2, proj_dim=32, crop_views=4)
        if c.superb[name].get("lstm_dim"):
            c.superb[name].update(lstm_dim=8)
    return c


def _partial_score_by_hand(values: dict[str, dict[str, float]]) -> float:
    per_task = []
    for task in values:
        columns = [m for m in score.COLUMNS if m.task == task]
        per_task.append(
            np.mean([(values[task][m.name] - m.fbank) / (m.sota - m.fbank) for m in columns])
        )
    return 1000 * float(np.mean(per_task))


ALL = ("pr", "asr", "ks", "sid", "er", "ic", "sf")


@pytest.mark.parametrize(
    "tasks_, selection, steps",
    [
        # default suite: every task but ASR (its BiLSTM head is SF's), ER on two folds
        (("pr", "ks", "sid", "er", "ic", "sf"), "weighted", 16),
        pytest.param(ALL, "both", 40, marks=pytest.mark.slow),  # ~3 min on 2 cores
    ],
    ids=["six-tasks", "all-both"],
)
def test_eval_on_superb_tasks(root, tmp_path, tasks_, selection, steps):
    root, built = root
    c = _config(root, tasks_, steps)
    c.superb.layer_selection = selection
    if selection == "weighted":
        c.superb.er.folds = (1, 2)
        c.superb.sf.lstm_layers = 1
    (result,) = run.run(c, str(tmp_path), mode="eval")
    saved = json.loads((tmp_path / "superb/teacher/results.json").read_text())
    t = saved["tasks"]
    assert list(t) == list(tasks_)

    # split sizes as the fixtures laid them out, and the class sets
    for name, key in (("ks", "ks"), ("sid", "sid"), ("ic", "ic"), ("sf", "sf"), ("pr", "libri")):
        sizes = built[key]["sizes"]
        assert (t[name]["num_train"], t[name]["num_dev"], t[name]["num_test"]) == (
            sizes["train"],
            sizes["dev"],
            sizes["test"],
        ), name
    assert t["ks"]["classes"] == [12]
    assert t["sid"]["classes"] == [3]
    assert t["ic"]["classes"] == [len({x[i] for x in fx.COMMANDS}) for i in (1, 2, 3)]
    assert t["er"]["classes"] == [4] and len(t["er"]["folds"]) == len(c.superb.er.folds)
    assert t["pr"]["classes"] == [71 + 2]  # stressed ARPAbet + blank + <eos>
    for fold, sizes in t["er"]["sizes"].items():
        assert sizes == {"train": 16, "dev": 4, "test": fx.KEPT_PER_SESSION}, fold
    er_folds = [f["test"] for f in t["er"]["folds"].values()]
    assert t["er"]["test"] == pytest.approx(np.mean(er_folds))

    # the metrics SUPERB reports (for both layer selections when asked)
    expected = {"pr": {"per"}, "asr": {"wer"}, "sf": {"slot_type_f1", "slot_value_cer"}}
    for name, r in t.items():
        runs = (r, r["last_layer"]) if selection == "both" else (r,)
        assert ("last_layer" in r) == (selection == "both")
        for run_ in runs:
            assert set(run_["metrics"]) == expected.get(name, {"accuracy"})
            assert all(0 <= v < 10 for v in run_["metrics"].values())
        if selection == "both":
            assert r["last_layer"]["layer_weights"] == [0.0] * 3 + [1.0]
        assert sum(r["layer_weights"]) == pytest.approx(1.0, abs=1e-5)
        assert r["protocol"]["head"]["s3prl_config"].startswith("s3prl/downstream/")
        s3prl_steps = superb_config.S3PRL[name]["total_steps"]
        assert f"total_steps {steps} (s3prl {s3prl_steps}" in " ".join(r["deviations"])
    assert t["sf"]["protocol"]["head"]["head"] == "bilstm"
    assert t["ks"]["protocol"]["head"]["class_balanced"]

    # the SUPERB score: not computable (QbE/ASV/SD missing); partial as the formula says
    for sel in ("weighted", "last") if selection == "both" else ("weighted",):
        s = saved["superb"][sel]
        assert s["superb_s"] is None and ["qbe", "mtwv"] in s["missing"]
        assert s["partial_tasks"] == [x for x in ALL if x in tasks_]
        assert s["partial_superb_s"] == pytest.approx(_partial_score_by_hand(s["values"]))
        if "asr" in tasks_:
            paper = {k: s["values"][k] for k in score.PAPER_TASKS}
            assert s["paper_superb_s"] == pytest.approx(_partial_score_by_hand(paper))
        else:
            assert s["paper_superb_s"] is None
    assert s["values"]["pr"]["per"] == pytest.approx(100 * t["pr"]["test"], rel=1e-6) or (
        s["values"]["pr"]["per"] == pytest.approx(100 * t["pr"]["last_layer"]["test"])
    )
    md = (tmp_path / "superb/teacher/results.md").read_text()
    assert "| PR PER % | KS acc % | SID acc % | ER acc % | IC acc % | SF slot F1 %" in md or (
        "| PR PER % | ASR WER % | KS acc % | SID acc % | ER acc % | IC acc % | SF slot F1 %" in md
    )
    assert "no SpecAugment" in md and "partial superb_s" in md
    assert result["tasks"]["sid"]["test"] == t["sid"]["test"]

    # a second run finds every head finished in its checkpoint: nothing trained again
    c.superb.tasks = ("ks",)
    again = run.run(c, str(tmp_path), mode="eval")[0]["tasks"]
    assert again["ks"]["resumed_from"] == steps and again["ks"]["test"] == t["ks"]["test"]

    # a head that learns: KS (12 classes, silence and words in unseen voices), trained on from
    # its checkpoint, beats the majority class. (16 steps alone sit at chance or just above:
    # espeak-ng's samples depend on what it synthesised before, so the fixture's audio varies
    # with the tests run before it.)
    c.superb.ks.total_steps = 4 * steps
    longer = run.run(c, str(tmp_path), mode="eval")[0]["tasks"]["ks"]
    assert longer["resumed_from"] == steps and longer["test"] > longer["baseline"]


def test_a_wrong_path_names_the_field_and_the_file(root, tmp_path):
    root, built = root
    c = _config(root, ("ks", "sid"))
    c.superb.ks.test_path = str(tmp_path / "no_such_test_set")
    with pytest.raises(MissingData, match=r"config\.superb\.ks\.test_path.*no_such_test_set"):
        run.run(c, str(tmp_path))
    c = _config(root, ("sid",))
    c.superb.sid.split_file = str(root / "iden_split_missing.txt")
    with pytest.raises(MissingData, match=r"config\.superb\.sid\.split_file.*iden_split_missing"):
        run.run(c, str(tmp_path))
    assert not (tmp_path / "superb").exists()  # refused before any upstream work


def _toy_head(steps: int):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (60, 1))
    pooled = rng.standard_normal((2, 60, 4)).astype(np.float32)
    pooled[1, :, 0] += 2.0 * labels[:, 0]
    task = tasks.Task("toy", "utterance", "accuracy", {}, lambda r: r, (("a", "b", "c"),))
    hp = superb_config.head_config(1e-2, steps, batch_size=8, log_every=1, checkpoint_every=5)
    hp.eval_every = 4
    data = (pooled[:, :40], labels[:40]), (pooled[:, 40:], labels[40:])
    return heads.make_head(task, hp), hp, data


def test_head_resumes_after_an_interruption(tmp_path):
    head, hp, (train, dev) = _toy_head(20)
    reference, ref_history = training.train(head, train, dev, hp, 0, lambda m: None)

    logged = []

    def interrupt_at_12(message: str) -> None:
        logged.append(message)
        if "step 12/" in message:
            raise KeyboardInterrupt

    ckpt_dir = tmp_path / "heads/toy"
    checkpoint = training.HeadCheckpoint(ckpt_dir, {"task": "toy", "hp": hp.to_dict()})
    with pytest.raises(KeyboardInterrupt):
        training.train(head, train, dev, hp, 0, interrupt_at_12, checkpoint=checkpoint)
    checkpoint.close()
    assert sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) == [10]

    logged.clear()
    checkpoint = training.HeadCheckpoint(ckpt_dir, {"task": "toy", "hp": hp.to_dict()})
    params, history = training.train(head, train, dev, hp, 0, logged.append, checkpoint=checkpoint)
    checkpoint.close()
    assert history["resumed_from"] == 10
    steps = [m for m in logged if "/20 loss" in m]
    assert steps[0].startswith("toy step 11/20")  # continued, not restarted
    as_lists = lambda pairs: [list(x) for x in pairs]
    assert as_lists(history["loss"]) == as_lists(ref_history["loss"])  # the whole history
    assert as_lists(history["dev"]) == as_lists(ref_history["dev"])
    assert history["best_step"] == ref_history["best_step"]
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(reference)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)

    # a longer run continues the finished head; a changed learning rate is refused
    longer = hp.copy_and_resolve_references()
    longer.total_steps = 24
    checkpoint = training.HeadCheckpoint(ckpt_dir, {"task": "toy", "hp": longer.to_dict()})
    _, history = training.train(head, train, dev, longer, 0, lambda m: None, checkpoint=checkpoint)
    checkpoint.close()
    assert history["resumed_from"] == 20 and history["loss"][-1][0] == 24
    changed = longer.copy_and_resolve_references()
    changed.lr = 1e-3
    checkpoint = training.HeadCheckpoint(ckpt_dir, {"task": "toy", "hp": changed.to_dict()})
    with pytest.raises(resume.ResumeMismatch, match=r"hp\.lr: 0\.01 -> 0\.001"):
        training.train(head, train, dev, changed, 0, lambda m: None, checkpoint=checkpoint)
    checkpoint.close()


def test_class_balanced_batches_follow_the_weights():
    weights = np.array([1.0, 1.0, 2.0, 4.0])
    stream = training.IndexStream(4, 64, seed=3, weights=weights)
    counts = np.bincount(np.concatenate([stream.batch(i) for i in range(1, 401)]), minlength=4)
    np.testing.assert_allclose(counts / counts.sum(), weights / weights.sum(), atol=0.01)
    uniform = training.IndexStream(10, 4, seed=3)
    first_epochs = np.concatenate([uniform.batch(i) for i in range(1, 6)])  # 20 = two epochs
    assert sorted(first_epochs[:10]) == list(range(10)) == sorted(first_epochs[10:])
    again = training.IndexStream(10, 4, seed=3)
    assert (again.batch(4) == uniform.batch(4)).all()  # any step, from the seed alone
