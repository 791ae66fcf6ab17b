"""superb.heads and the real-data task builders: CTC loss by path enumeration, toy problems the
heads must solve, the BiLSTM ASR head, LibriSpeech PR/ASR targets, KS without TensorFlow."""

import itertools

import jax
import ml_collections
import numpy as np
import pytest
import soundfile as sf

from stackdistill import config as config_lib
from stackdistill.data import labels
from stackdistill.data.espeak import Speaker
from stackdistill.superb import benchmark, features, heads, tasks, training


def _ctc_reference(log_probs_tv: np.ndarray, label: list[int]) -> float:
    """-log sum over every frame path that collapses to `label` (blank 0), by enumeration."""
    t, v = log_probs_tv.shape
    total = 0.0
    for path in itertools.product(range(v), repeat=t):
        collapsed = [k for k, _ in itertools.groupby(path) if k != 0]
        if collapsed == label:
            total += np.exp(sum(log_probs_tv[i, k] for i, k in enumerate(path)))
    return -np.log(total)


def test_ctc_loss_matches_path_enumeration():
    task = tasks.Task("t", "ctc", "per", {}, lambda r: r, (("<blank>", "a", "b"),))
    head = heads.TaskHead(task, heads.Downstream(out_dim=3, proj_dim=4))
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((2, 2, 5, 3)).astype(np.float32)  # (L+1, B, T, D)
    frames = np.array([4, 3])  # the second utterance is one frame shorter
    targets = [[1, 2], [2, 2]]  # "a b" and "b b" (the repeat needs a blank between)
    data = features.StoredFrames([hidden[:, 0, :4], hidden[:, 1, :3]], targets)
    batch = head.batch(data, [0, 1])
    params = head.model.init(jax.random.key(0), batch["hidden"])["params"]
    loss = float(head.loss(params, batch, jax.random.key(1)))
    logits = np.asarray(head.model.apply({"params": params}, batch["hidden"]))
    log_probs = np.asarray(jax.nn.log_softmax(logits))
    expected = np.mean(
        [_ctc_reference(log_probs[b, : frames[b]], targets[b]) / len(targets[b]) for b in (0, 1)]
    )
    assert loss == pytest.approx(expected, rel=1e-4)
    # Too few frames for "b b" (needs 3): that utterance contributes zero, as zero_infinity.
    short = features.StoredFrames([hidden[:, 0, :4], hidden[:, 1, :2]], targets)
    batch = head.batch(short, [0, 1])
    expected_short = _ctc_reference(log_probs[0, :4], targets[0]) / 2 / 2
    assert float(head.loss(params, batch, jax.random.key(1))) == pytest.approx(
        expected_short, rel=1e-4
    )


def _hp(**kw):
    c = config_lib.base_config().superb.ks_synth
    c.update({"log_every": 10, **kw})
    return c


def test_utterance_head_learns_the_informative_layer_with_two_label_groups():
    rng = np.random.default_rng(0)
    n, layers, dim = 200, 3, 6
    labels = rng.integers(0, 2, (n, 2))  # two label groups (IC-style), two classes each
    pooled = rng.standard_normal((layers, n, dim)).astype(np.float32)
    pooled[2, :, 0] += 3 * (2 * labels[:, 0] - 1)  # only layer 2 carries the labels
    pooled[2, :, 1] += 3 * (2 * labels[:, 1] - 1)
    task = tasks.Task("toy", "utterance", "accuracy", {}, lambda r: r, (("a", "b"), ("c", "d")))
    head = heads.make_head(task, _hp())
    train, test = (pooled[:, :150], labels[:150]), (pooled[:, 150:], labels[150:])
    params, history = training.train(
        head, train, None, _hp(lr=1e-2, total_steps=300), 0, lambda m: None
    )
    assert training.evaluate(head, params, test, 32) > 0.9
    assert heads.layer_weights(params).argmax() == 2
    assert history["loss"][-1][1] < history["loss"][0][1]


def test_bilstm_ctc_head_trains_and_reports_wer():
    vocab = (labels.BLANK, "|", "A", "B")
    rng = np.random.default_rng(1)
    sequences, targets = [], []
    for _ in range(24):  # frames announce their character: A -> +dim 0, B -> +dim 1
        chars = rng.choice(["A", "B"], size=3).tolist()
        frames = np.zeros((2, 12, 4), np.float32)
        for i, ch in enumerate(chars):
            frames[:, 4 * i + 1 : 4 * i + 3, vocab.index(ch) - 2] = 3.0
        sequences.append(frames + 0.1 * rng.standard_normal(frames.shape).astype(np.float32))
        targets.append([vocab.index(ch) for ch in chars])
    data = features.StoredFrames(sequences, targets)
    task = tasks.Task("asr", "ctc", "wer", {}, lambda r: r, (vocab,), head="bilstm")
    hp = _hp(
        lr=1e-2, total_steps=30, batch_size=8, proj_dim=8, lstm_dim=8, lstm_layers=2, dropout=0.1
    )
    head = heads.make_head(task, hp)
    params, history = training.train(head, data, None, hp, 0, lambda m: None)
    assert set(params) >= {"bilstm_0", "bilstm_1", "projector", "output", "layer_logits"}
    assert history["loss"][-1][1] < history["loss"][0][1]
    wer = training.evaluate(head, params, data, 8)  # one "word" per utterance: 0 or 1 each
    assert wer in {k / 24 for k in range(0, 100)}


@pytest.fixture(scope="module")
def librispeech(tmp_path_factory):
    """A LibriSpeech-layout folder with train/dev/test subsets of two utterances each."""
    root = tmp_path_factory.mktemp("LibriSpeech")
    texts = ["HELLO WORLD", "IT'S A CAT"]
    for subset in ("train-clean-100", "dev-clean", "test-clean"):
        folder = root / subset / "19" / "198"
        folder.mkdir(parents=True)
        lines = []
        for n, text in enumerate(texts):
            name = f"19-198-{n:04d}"
            sf.write(folder / f"{name}.flac", np.zeros(8000, np.float32), 16_000)
            lines.append(f"{name} {text}")
        (folder / "19-198.trans.txt").write_text("\n".join(lines) + "\n")
    return str(root)


def test_librispeech_pr_and_asr_targets(librispeech, tmp_path):
    c = config_lib.base_config().superb
    c.pr.path = c.asr.path = librispeech
    pr = benchmark.build("pr", c, str(tmp_path))  # no lexicon: the espeak-ng fallback
    record = pr.splits["test"][0]
    vocab = pr.classes[0]
    phones = labels.phoneme_tokens(Speaker.get().phonemes("hello world", "en-us"))
    assert [vocab[i] for i in pr.target_fn(record)] == phones and vocab[0] == labels.BLANK
    assert (tmp_path / "superb" / "phonemes_test.json").is_file()  # cached for the next run
    assert any("not comparable" in d for d in pr.deviations)
    asr = benchmark.build("asr", c, str(tmp_path))
    # s3prl's asr/dataset.py ends every target with a word boundary
    assert [asr.classes[0][i] for i in asr.target_fn(asr.splits["dev"][1])] == list("IT'S|A|CAT|")
    assert asr.head == "bilstm" and asr.metric == "wer" and asr.classes[0][0] == labels.BLANK


def test_real_tasks_say_what_is_missing(tmp_path):
    c = config_lib.base_config().superb
    with pytest.raises(FileNotFoundError, match="LibriSpeech root"):
        benchmark.build("pr", c, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"set config\.superb\.sid\.path"):
        benchmark.build("sid", c, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"set config\.superb\.sf\.path"):
        benchmark.build("sf", c, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"set config\.superb\.qbe\.path"):
        benchmark.build("qbe", c, str(tmp_path))
    with pytest.raises(ValueError, match="unknown SUPERB task"):
        benchmark.build("st", c, str(tmp_path))
    c.ks.source, c.ks.tfds_dir = "tfds", str(tmp_path / "tfds")
    with pytest.raises((ImportError, FileNotFoundError), match="tfds build speech_commands"):
        benchmark.build("ks", c, str(tmp_path))
    assert isinstance(c.ks, ml_collections.ConfigDict)
