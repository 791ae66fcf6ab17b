"""superb.metrics, splits, targets and padding buckets, against hand computations."""

import numpy as np
import pytest

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


def test_majority_baseline():
    train = np.array([[1], [1], [2], [0]])
    test = np.array([[1], [2], [1], [1], [0]])
    assert run.majority_baseline(train, test) == pytest.approx(3 / 5)


def test_phoneme_tokens_drop_stress_and_word_boundaries():
    assert tasks.phoneme_tokens("p_ˌʊ_t ɪ_t ð_ˈeə") == ["p", "ʊ", "t", "ɪ", "t", "ð", "eə"]
    assert tasks.characters("it's  a cat") == list("IT'S|A|CAT")


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
