"""The tiny teacher: the ridge probe, the adversary, and a short training that transformers reads.

Its labels: test_labels.py; the probes' metrics: test_superb_metrics.py."""

import pathlib
import runpy

import jax
import numpy as np
import pytest
from hf_fixtures import hf_hidden_states, padded_batch

from stackdistill import models, teacher, tiny_teacher
from stackdistill.superb import probes

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _max_rel_err(ours, ref, mask):
    err = np.abs(np.asarray(ours, np.float64) - ref) / np.maximum(1.0, np.abs(ref))
    return float(err[np.asarray(mask)].max())


def test_ridge_probe_separates_clusters_and_not_noise():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    centres = 3.0 * rng.standard_normal((4, 16))
    x = centres[labels] + rng.standard_normal((400, 16))
    assert probes.ridge_accuracy(x[:300], labels[:300], x[300:], labels[300:], 1.0) > 0.95
    noise = rng.standard_normal((400, 16))
    acc = probes.ridge_accuracy(noise[:300], labels[:300], noise[300:], labels[300:], 1.0)
    assert acc < 0.5


def _quick_config(corpus_dir: str):
    c = runpy.run_path(str(ROOT / "configs" / "tiny_teacher.py"))["get_config"]("quick")
    c.arch.update(  # smaller, in the config's layout (pre-LN, LayerNorm convs)
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    c.ctc_layer, c.speaker_layer = 2, 1
    c.total_steps, c.log_every, c.learning_rate = 24, 4, 3e-3
    c.data.path = corpus_dir
    c.data.bucket_boundaries = ()  # one shape, one compile
    c.data.batch_size = 8
    c.probe.num = 0
    return c


def test_adversary_trains_the_head_and_confuses_the_encoder():
    """The head's gradient comes from its cross-entropy only, the encoder's (top) from the
    confusion loss only; the confusion loss is log(S) at the uniform answer and larger away
    from it."""
    rng = np.random.default_rng(0)
    head = {
        "kernel": rng.standard_normal((4, 3)).astype(np.float32),
        "bias": np.zeros(3, np.float32),
    }
    top = rng.standard_normal((5, 4)).astype(np.float32)
    speaker = np.array([0, 1, 2, 0, 1])

    def total(h, t):
        ce, confusion, _ = tiny_teacher.adversary_losses(h, t, speaker)
        return ce + confusion

    g_head, g_top = jax.grad(total, argnums=(0, 1))(head, top)
    ce_only = jax.grad(lambda h: tiny_teacher.adversary_losses(h, top, speaker)[0])(head)
    conf_only = jax.grad(lambda t: tiny_teacher.adversary_losses(head, t, speaker)[1])(top)
    np.testing.assert_allclose(g_head["kernel"], ce_only["kernel"], rtol=1e-6)
    np.testing.assert_allclose(g_top, conf_only, rtol=1e-6)
    # By hand: -mean(log_softmax(logits)) for uniform logits is log 3, and more otherwise.
    uniform = tiny_teacher.adversary_losses(head, np.zeros((5, 4), np.float32), speaker)[1]
    np.testing.assert_allclose(uniform, np.log(3.0), rtol=1e-6)
    assert tiny_teacher.adversary_losses(head, top, speaker)[1] > np.log(3.0)


def test_between_speaker_share_by_hand_and_its_bounds():
    """trace(S_between) / trace(S_total) against a loop over voices; 0 when every voice's
    mean is the batch mean, 1 when each voice's utterances coincide; its gradient moves the
    voices' means towards the batch mean."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 5))
    speaker = np.array([0, 0, 0, 1, 1, 3, 3, 3, 3])  # voice 2 absent from the batch
    mean = x.mean(0)
    between = sum(
        (speaker == s).sum() * np.sum((x[speaker == s].mean(0) - mean) ** 2)
        for s in np.unique(speaker)
    )
    hand = between / np.sum((x - mean) ** 2)
    ours = tiny_teacher.between_speaker_share(x.astype(np.float32), speaker, 4)
    np.testing.assert_allclose(ours, hand, rtol=1e-5)
    same = np.repeat(rng.standard_normal((3, 5)), [3, 2, 4], axis=0).astype(np.float32)
    np.testing.assert_allclose(tiny_teacher.between_speaker_share(same, speaker, 4), 1.0, 1e-5)
    mirrored = np.concatenate([x[:4], -x[:4] + 0.0, np.zeros((1, 5))]).astype(np.float32)
    pairs = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0])  # each voice's mean is the batch mean, 0
    np.testing.assert_allclose(
        tiny_teacher.between_speaker_share(mirrored, pairs, 4), 0.0, atol=1e-6
    )
    grad = jax.grad(tiny_teacher.between_speaker_share)(x.astype(np.float32), speaker, 4)
    stepped = x - 0.05 * np.asarray(grad)
    assert tiny_teacher.between_speaker_share(stepped.astype(np.float32), speaker, 4) < ours


def test_short_training_lowers_the_loss_and_exports_for_transformers(tmp_path):
    import transformers

    from stackdistill.data import synth

    # A private corpus: the shared session one may hold other tests' files by now.
    corpus = synth.generate(str(tmp_path / "corpus"), 48, seed=0)
    c = _quick_config(str(pathlib.Path(corpus).parent))
    result = tiny_teacher.train(c, tmp_path)
    history = result["history"]
    assert result["steps"] == 24 and len(history) == 6
    first, last = (
        np.mean([h["loss"] for h in history[:2]]),
        np.mean([h["loss"] for h in history[-2:]]),
    )
    assert last < 0.9 * first, history  # 24 steps: ~7.3 -> 5.8 with the blank-biased CTC head
    assert np.isfinite([h["loss"] for h in history]).all()

    cfg, params = teacher.load(str(tmp_path / "teacher"), use_cache=False)
    assert cfg == result["cfg"]
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        params,
        result["params"]["encoder"],
    )
    torch_model = transformers.HubertModel.from_pretrained(tmp_path / "teacher").eval()
    wav, lengths = padded_batch(8000)
    ref = hf_hidden_states(torch_model, wav, lengths)
    out = models.encode(cfg, result["params"]["encoder"], wav, lengths)
    for i in range(cfg.num_layers + 1):
        assert _max_rel_err(out.hidden_states[i], ref[i], out.mask) < 1e-4, f"hidden state {i}"

    # The probe table of the trained model: one row per hidden state and one for the heads,
    # accuracies within [0, 1], error rates >= 0 (what the probes measure: tests above).
    from stackdistill.data import manifest

    rows = manifest.read_manifest(corpus)[:16]
    c.probe.ctc_steps, c.probe.ctc_batch = 3, 8
    hidden, mask = probes.layer_features(cfg, params, rows, c.data.max_samples)
    assert hidden.shape[:2] == (cfg.num_layers + 1, 16) and mask.shape == hidden.shape[1:3]
    vocab = result["vocab"]
    table = probes.probe_layers(hidden, mask, rows, vocab, c, result["params"])
    assert [r["layer"] for r in table] == [*range(cfg.num_layers + 1), "heads"]
    for r in table:
        assert 0 <= r["speaker_acc"] <= 1 and r["phoneme_error"] >= 0, r


@pytest.mark.slow  # three trainings (~25 s): the default suite keeps inside CI's 20 minutes
def test_fixed_steps_and_the_same_seed_give_bit_identical_params(tmp_path):
    """No wall-clock decides the weights: two runs of one config end in the same params."""
    from stackdistill.data import synth

    corpus = synth.generate(str(tmp_path / "corpus"), 16, seed=0)
    c = _quick_config(str(pathlib.Path(corpus).parent))
    c.total_steps, c.log_every, c.data.synth_num = 4, 2, 16
    runs = [tiny_teacher.train(c, tmp_path / name) for name in ("a", "b")]
    assert [r["steps"] for r in runs] == [4, 4]
    leaves = [jax.tree_util.tree_leaves(r["params"]) for r in runs]
    assert all(np.array_equal(x, y) for x, y in zip(*leaves, strict=True))
    c.seed = 1  # and the seed matters
    other = jax.tree_util.tree_leaves(tiny_teacher.train(c, tmp_path / "c")["params"])
    assert not all(np.array_equal(x, y) for x, y in zip(leaves[0], other, strict=True))


def test_bootstrap_interval_matches_the_normal_approximation_and_pairs_layers():
    rng = np.random.default_rng(0)
    correct = (rng.random(2000) < 0.7).astype(float)
    p = correct.mean()
    half = 1.96 * np.sqrt(p * (1 - p) / len(correct))  # the binomial's normal approximation
    lo, hi = probes.bootstrap_ci(correct, indices=probes.bootstrap_indices(2000, 2000, seed=1))
    np.testing.assert_allclose([lo, hi], [p - half, p + half], atol=0.004)
    # A ratio statistic (PER): total edits over total reference length, resampled by utterance.
    edits, lengths = np.array([1.0, 0.0, 3.0, 2.0]), np.array([10.0, 5.0, 10.0, 5.0])
    idx = np.array([[0, 0, 2, 3], [1, 1, 1, 1]])
    stats = [(edits[i].sum() / lengths[i].sum()) for i in idx]  # by hand: 7/35, 0/20
    lo, hi = probes.bootstrap_ci(edits, lengths, idx, level=0.0)  # the median of the two
    np.testing.assert_allclose([lo, hi], [np.median(stats)] * 2)
    # Per layer (rows), from the same resamples: a layer 0.3 worse than the best on every
    # utterance has a paired interval at -0.3 exactly, and is not "tied with the best".
    table = [
        {"layer": 0, "speaker_acc": 0.9, "speaker_acc_minus_best_ci": (0.0, 0.0)},
        {"layer": 1, "speaker_acc": 0.6, "speaker_acc_minus_best_ci": (-0.3, -0.3)},
        {"layer": 2, "speaker_acc": 0.85, "speaker_acc_minus_best_ci": (-0.1, 0.02)},
    ]
    assert probes.tied_with_best(table, "speaker_acc") == [0, 2]


def test_wavlm_variant_is_the_same_teacher_as_a_wavlm_that_transformers_reads(tmp_path):
    """configs/tiny_teacher.py:wavlm (ARMwavLM-S's table teacher): the HuBERT teacher's shape
    with WavLM's relative position bias; saved, transformers' WavLMModel gives our hidden
    states (random weights: the layout is what is tested; training is the HuBERT one's)."""
    import transformers

    from stackdistill import config as config_lib
    from stackdistill.models import EncoderConfig

    hubert = config_lib.load_file(ROOT / "configs" / "tiny_teacher.py", None)
    c = config_lib.load_file(ROOT / "configs" / "tiny_teacher.py", "quick,wavlm")
    assert c.total_steps == 20 and c.arch.model_type == "wavlm"
    wavlm_only = ("model_type", "num_buckets", "max_bucket_distance")
    same = {k: v for k, v in c.arch.items() if k not in wavlm_only}
    assert same == {k: v for k, v in hubert.arch.items() if k != "model_type"}
    with pytest.raises(ValueError, match="unknown argument 'wavml'"):
        config_lib.load_file(ROOT / "configs" / "tiny_teacher.py", "wavml")
    cfg = EncoderConfig(**dict(c.arch))
    teacher.write_random(tmp_path / "t", cfg)
    torch_model = transformers.WavLMModel.from_pretrained(tmp_path / "t").eval()
    ours, params = teacher.load(str(tmp_path / "t"), use_cache=False)
    assert ours.model_type == "wavlm" and ours.do_stable_layer_norm
    wav, lengths = padded_batch(4000)
    ref = hf_hidden_states(torch_model, wav, lengths)
    out = models.encode(ours, params, wav, lengths)
    for i in range(cfg.num_layers + 1):
        assert _max_rel_err(out.hidden_states[i], ref[i], out.mask) < 1e-4, f"hidden state {i}"
