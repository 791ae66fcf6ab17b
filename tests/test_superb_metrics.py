"""superb.metrics, splits, targets and padding buckets, against hand computations."""

import numpy as np
import pytest

from stackdistill.data import labels
from stackdistill.superb import features, metrics, run, tasks


def test_edit_distance_hand_examples():
    assert metrics.edit_distance("kitten", "sitting") == 3  # k->s, e->i, +g
    assert metrics.edit_distance([], ["a", "b"]) == 2
    assert metrics.edit_distance(["a", "b"], []) == 2
    assert metrics.edit_distance(["a", "b", "c"], ["a", "b", "c"]) == 0
    assert metrics.edit_distance(["a", "b", "c"], ["c", "b", "a"]) == 2


def test_error_rate_pools_edits_over_the_set():
    # PER: (1 substitution + 1 deletion) / 4 reference phones, not a mean of per-utterance rates.
    refs = [["p", "ɪ", "t"], ["s"]]
    hyps = [["p", "æ", "t"], []]
    assert metrics.error_rate(refs, hyps) == pytest.approx(2 / 4)
    # WER: one insertion against 3 words, one substitution against 2 words -> 2 / 5.
    wer = metrics.word_error_rate(["the cat sat", "go home"], ["the cat sat down", "go house"])
    assert wer == pytest.approx(2 / 5)
    with pytest.raises(ValueError):
        metrics.error_rate([[]], [["a"]])


def test_accuracy_counts_a_row_only_when_every_group_is_right():
    assert metrics.accuracy(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == 0.75
    labels = np.array([[0, 1, 2], [1, 1, 1]])
    assert metrics.accuracy(labels, np.array([[0, 1, 2], [1, 0, 1]])) == 0.5


def test_ctc_greedy_decode_merges_repeats_then_drops_blanks():
    ids = np.array([[0, 1, 1, 0, 1, 2, 2, 0], [3, 3, 3, 0, 0, 0, 2, 2]])
    assert metrics.ctc_greedy_decode(ids, np.array([8, 3])) == [[1, 1, 2], [3]]


def test_edit_distance_and_greedy_decode():
    # The layer probes' checks (superb/probes.py decodes its logits under a frame mask).
    assert metrics.edit_distance([1, 2, 3, 4], [1, 3, 4, 5]) == 2
    assert metrics.edit_distance([], [7, 7]) == 2
    assert metrics.edit_distance(list("kitten"), list("sitting")) == 3
    best = np.array([[0, 2, 2, 0, 2, 3, 3, 1]])  # the last frame is padding
    logits = np.eye(4)[best]
    mask = np.array([[True] * 7 + [False]])
    assert metrics.ctc_greedy_decode(np.argmax(logits, -1), mask.sum(-1)) == [[2, 2, 3]]


def test_unpad_keeps_the_tokens_of_each_row():
    ids = np.array([[4, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    paddings = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]], np.float32)
    assert metrics.unpad(ids, paddings) == [[4, 2], [1], []]


def test_mean_pool_averages_the_valid_frames_only():
    x = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)  # (B, T, D)
    mask = np.array([[True, True, False], [False, False, False]])
    pooled = np.asarray(features.mean_pool(x, mask))
    np.testing.assert_allclose(pooled, [[(0 + 2) / 2, (1 + 3) / 2], [0, 0]])
    layers = np.stack([x, 2 * x])  # (L, B, T, D): one mask for every layer
    np.testing.assert_allclose(np.asarray(features.mean_pool(layers, mask)), [pooled, 2 * pooled])


def test_majority_baseline():
    train = np.array([[1], [1], [2], [0]])
    test = np.array([[1], [2], [1], [1], [0]])
    assert run.majority_baseline(train, test) == pytest.approx(3 / 5)


def test_phoneme_tokens_drop_stress_and_word_boundaries():
    assert labels.phoneme_tokens("p_ˌʊ_t ɪ_t ð_ˈeə") == ["p", "ʊ", "t", "ɪ", "t", "ð", "eə"]


def _records():
    return [{"name": f"u{i}", "voice": f"v{i % 4}"} for i in range(40)]


def test_splits_are_deterministic_and_fair():
    records = _records()
    by_voice = tasks.split_by_group(records, "voice", 0.25)
    train_voices = {r["voice"] for r in by_voice["train"]}
    test_voices = {r["voice"] for r in by_voice["test"]}
    assert len(test_voices) == 1 and not train_voices & test_voices
    within = tasks.split_within_groups(records, "voice", 0.25)
    assert {r["voice"] for r in within["test"]} == {r["voice"] for r in within["train"]}
    assert len(within["test"]) + len(within["train"]) == 40
    again = tasks.split_within_groups(list(reversed(records)), "voice", 0.25)
    assert sorted(r["name"] for r in again["test"]) == sorted(r["name"] for r in within["test"])
    fields = tasks.split_by_field(
        [{"name": "a", "split": 1}, {"name": "b", "split": "3"}, {"name": "c", "split": "dev"}],
        "split",
    )
    assert [[r["name"] for r in fields[k]] for k in ("train", "dev", "test")] == [
        ["a"],
        ["c"],
        ["b"],
    ]


def test_bucket_lengths_cover_and_grow_geometrically():
    previous = 0
    for n in (1, 3_999, 4_000, 4_001, 16_000, 123_457):
        b = features.bucket_length(n, 1.25)
        assert b >= n and b <= max(1.25 * n + 400, 4_000)
        assert b >= previous
        previous = b
    buckets = {features.bucket_length(n, 2.0) for n in range(4_000, 64_000, 100)}
    assert buckets == {4_000, 8_000, 16_000, 32_000, 64_000}
