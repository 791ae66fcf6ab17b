"""Synthetic espeak-ng corpus: labels, files, determinism, speed."""

import filecmp
import json
import os
import time
import unicodedata

import numpy as np
import pytest
import soundfile as sf

from stackdistill.data import synth
from stackdistill.data.espeak import Speaker


def _rows(manifest):
    with open(manifest) as f:
        return [json.loads(line) for line in f]


def test_manifest_labels_match_the_vocabulary_and_the_files(synthetic_corpus):
    rows = _rows(synthetic_corpus)
    root = os.path.dirname(synthetic_corpus)
    assert len(rows) == 48
    assert [r["name"] for r in rows] == [f"{i:06d}" for i in range(48)]
    for row in rows:
        if row["keyword"] >= 0:
            assert row["text"] == synth.KEYWORDS[row["keyword"]]
        else:
            assert row["keyword"] == -1 and row["text"] in synth.SENTENCES
        assert synth.VOICES[row["speaker"]] == row["voice"]
        # espeak joins unstressed words to the next one ("on the" -> "ɒ_n_ð_ə")
        assert 0 < len(row["phonemes"].split()) <= len(row["text"].split())
        info = sf.info(os.path.join(root, row["path"]))
        assert (info.samplerate, info.channels, info.subtype) == (16_000, 1, "PCM_16")
        assert info.frames == row["num_samples"]
    assert {r["keyword"] for r in rows} >= {-1, 0}  # both words and sentences occur
    assert len({r["speaker"] for r in rows}) >= 5


def test_sentences_last_longer_than_single_words(synthetic_corpus):
    rows = _rows(synthetic_corpus)
    words = [r["num_samples"] for r in rows if r["keyword"] >= 0]
    sentences = [r["num_samples"] for r in rows if r["keyword"] < 0]
    assert np.median(sentences) > 1.5 * np.median(words)


def test_leading_silence_then_speech(synthetic_corpus):
    row = _rows(synthetic_corpus)[0]
    samples, _ = sf.read(os.path.join(os.path.dirname(synthetic_corpus), row["path"]))
    plan = synth.utterance_plan(0, 0, 0.3, None)
    silence = int(plan["silence"][0] * 16_000)
    assert np.all(samples[:silence] == 0.0)
    assert np.abs(samples).max() == pytest.approx(plan["gain"], abs=1e-3)


def test_phonemes_of_known_words():
    speaker = Speaker.get()

    def bare(phonemes):  # IPA without stress marks and separators
        return "".join(c for c in phonemes if c not in "ˈˌ_ " and unicodedata.category(c) != "Mn")

    assert bare(speaker.phonemes("yes", "en-us")) == "jɛs"
    assert bare(speaker.phonemes("stop", "en-gb-x-rp")) == "stɒp"
    assert speaker.phonemes("go left", "en-us").count(" ") == 1


def test_faster_rate_gives_shorter_speech():
    speaker = Speaker.get()
    slow = speaker.speak("turn the music off", "en-us", rate=120)
    fast = speaker.speak("turn the music off", "en-us", rate=220)
    assert slow.dtype == np.int16 and len(slow) > 1.4 * len(fast)


def test_same_seed_same_corpus_whatever_the_worker_count(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "CHUNK_SIZE", 5)  # two chunks, each in its own process
    a = synth.generate(str(tmp_path / "a"), 10, seed=5, noise_snr_db=(10, 20), workers=2)
    b = synth.generate(str(tmp_path / "b"), 10, seed=5, noise_snr_db=(10, 20), workers=1)
    assert _rows(a) == _rows(b)
    names = [r["path"] for r in _rows(a)]
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", names, shallow=False)
    assert len(match) == 10 and not mismatch and not errors
    other = synth.utterance_plan(6, 0, 0.3, None)
    assert other != synth.utterance_plan(5, 0, 0.3, None)


def test_noise_reaches_the_planned_snr():
    plan = synth.utterance_plan(1, 3, 0.3, (12.0, 12.0))
    speech = (np.sin(np.arange(8_000) * 0.05) * 20_000).astype(np.int16)
    clean = synth.render({**plan, "snr_db": None}, speech, 16_000)
    noisy = synth.render(plan, speech, 16_000)
    snr = 10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))
    assert snr == pytest.approx(12.0, abs=0.3)


@pytest.mark.slow
def test_thousand_utterances_in_under_two_minutes(tmp_path):
    start = time.perf_counter()
    manifest = synth.generate(str(tmp_path), 1000, seed=0)
    assert time.perf_counter() - start < 120
    assert len(_rows(manifest)) == 1000
