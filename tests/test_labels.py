"""data.labels: phoneme tokens, the CTC vocabulary and padded label ids, by hand and on espeak."""

import numpy as np
import pytest

from stackdistill.data import labels


def test_phoneme_tokens_split_words_and_drop_stress():
    text = "p_ˌʊ_t ɪ_t d_ˌaʊ_n ˌəʊ_v_ɐ ð_ˈeə"
    assert labels.phoneme_tokens(text) == [
        *("p", "ʊ", "t", "ɪ", "t", "d", "aʊ", "n", "əʊ", "v", "ɐ", "ð", "eə")
    ]


def test_stress_marks_are_dropped_wherever_they_stand():
    # The two former copies differed here only: the tiny teacher's stripped stress from the ends
    # of each phone (keeping "aˈɪ" as a symbol); superb's dropped every mark. A stress mark is
    # never part of a phone, so every mark goes, and a lone mark is no phone at all.
    assert labels.phoneme_tokens("k_aˈɪ_t ˈ_s_ˌ") == ["k", "aɪ", "t", "s"]
    assert labels.phoneme_tokens("  ") == []


def test_phoneme_tokens_of_espeak_keep_every_phone_and_no_stress():
    from stackdistill.data.espeak import Speaker

    speaker = Speaker.get()
    for voice in ("en-us", "en-gb-x-rp"):
        ipa = speaker.phonemes("understanding photographic relationships at nine", voice)
        tokens = labels.phoneme_tokens(ipa)
        assert not any(m in t for t in tokens for m in labels.STRESS_MARKS), ipa
        expected = "".join(c for c in ipa if c not in labels.STRESS_MARKS + "_ ")
        assert "".join(tokens) == expected, ipa


def test_vocab_and_label_ids():
    rows = [{"phonemes": "j_ˈɛ_s"}, {"phonemes": "n_ˈəʊ"}]
    vocab = labels.build_vocab(rows)
    assert vocab == ["<blank>", "j", "n", "s", "əʊ", "ɛ"]
    ids, paddings = labels.label_ids(["j_ˈɛ_s", "n_ˈəʊ"], vocab, 4)
    np.testing.assert_array_equal(ids, [[1, 5, 3, 0], [2, 4, 0, 0]])
    np.testing.assert_array_equal(paddings, [[0, 0, 0, 1], [0, 0, 1, 1]])
    with pytest.raises(ValueError, match="max_label_length"):
        labels.label_ids(["j_ˈɛ_s"], vocab, 2)


def test_label_ids_skip_phones_outside_the_vocabulary():
    # A held-out probe corpus may say a phone the training corpus never did ("z" here).
    vocab = labels.build_vocab([{"phonemes": "j_ˈɛ_s"}])
    ids, paddings = labels.label_ids(["j_ˈɛ_z_s"], vocab, 4)
    np.testing.assert_array_equal(ids, [[1, 3, 2, 0]])
    np.testing.assert_array_equal(paddings, [[0, 0, 0, 1]])
