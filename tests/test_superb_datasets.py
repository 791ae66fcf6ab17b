"""SUPERB dataset readers on tiny copies of the real layouts; SF metrics; the SUPERB score."""

import shutil

import pytest
import soundfile as sf
import superb_fixtures as fx

from stackdistill.superb import score, sf_metrics
from stackdistill.superb.datasets import (
    MissingData,
    fluent_commands,
    iemocap,
    librispeech,
    snips,
    speech_commands,
    voxceleb1,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every fixture dataset, built once for this module."""
    root = tmp_path_factory.mktemp("superb")
    return {
        "ks": fx.make_speech_commands(root / "ks"),
        "libri": fx.make_librispeech(root / "libri"),
        "sid": fx.make_voxceleb1(root / "sid"),
        "ic": fx.make_fluent_commands(root / "ic"),
        "er": fx.make_iemocap(root / "er"),
        "sf": fx.make_snips(root / "sf"),
    }


# ------------------------------------------------------------------------------------ KS


def test_ks_splits_classes_and_the_official_lists(built):
    ks = built["ks"]
    data = speech_commands.read(str(ks["path"]), str(ks["test_path"]))
    assert data.sizes() == ks["sizes"]
    assert data.classes == (speech_commands.CLASSES,) and len(data.classes[0]) == 12
    assert data.classes[0][-2:] == ("_unknown_", "_silence_")
    for split in ("train", "dev", "test"):
        assert {r["label"] for r in data.splits[split]} == set(speech_commands.CLASSES)
    # dev is exactly validation_list.txt; nothing of testing_list.txt is used for training
    words = lambda split: {r["name"] for r in data.splits[split] if r["label"] != "_silence_"}
    assert words("dev") == set(ks["lists"]["validation"])
    assert not (words("train") | words("dev")) & set(ks["lists"]["testing"])
    unknown = [r for r in data.splits["train"] if r["label"] == "_unknown_"]
    assert {r["name"].split("/")[0] for r in unknown} == {"bed", "cat"}
    for split in ("train", "dev"):
        silence = [r for r in data.splits[split] if r["label"] == "_silence_"]
        assert sorted(r["name"] for r in silence) == [
            "_background_noise_/pink_noise.wav",
            "_background_noise_/white_noise.wav",
        ]
        assert all(r["crop_samples"] == 16_000 for r in silence)
    assert all(sf.info(r["path"]).samplerate == 16_000 for r in data.splits["test"])


def test_ks_class_balanced_weights(built):
    ks = built["ks"]
    train = speech_commands.read(str(ks["path"]), str(ks["test_path"])).splits["train"]
    weights = dict(zip((r["label"] for r in train), speech_commands.sample_weights(train)))
    # 38 records: 3 per command word, 6 unknown (bed, cat), 2 silence
    assert weights["yes"] == pytest.approx(38 / 3)
    assert weights["_unknown_"] == pytest.approx(38 / 6)
    assert weights["_silence_"] == pytest.approx(38 / 2)


def test_ks_bad_paths_name_the_field(built, tmp_path):
    ks = built["ks"]
    with pytest.raises(MissingData, match=r"config\.superb\.ks\.test_path.*nowhere"):
        speech_commands.read(str(ks["path"]), str(tmp_path / "nowhere"))
    with pytest.raises(MissingData, match=r"set config\.superb\.ks\.path"):
        speech_commands.read("", str(ks["test_path"]))
    copy = tmp_path / "train"
    shutil.copytree(ks["path"], copy)
    shutil.rmtree(copy / "_background_noise_")
    with pytest.raises(MissingData, match=r"config\.superb\.ks\.path.*_background_noise_"):
        speech_commands.read(str(copy), str(ks["test_path"]))


# ------------------------------------------------------------------------------ PR, ASR


def test_pr_phones_from_the_lexicon_with_stress(built):
    libri = built["libri"]
    data = librispeech.read_pr(str(libri["path"]), libri["lexicon"])
    assert data.sizes() == libri["sizes"]
    assert len(data.classes[0]) == 71 and data.classes[0][:2] == ("SIL", "SPN")
    records = {r["name"]: r for split in data.splits.values() for r in split}
    lexicon = {**fx.OTHER_LEXICON, **fx.LEXICON}  # first file wins, THE keeps DH AH0
    for name, text in libri["texts"].items():
        assert records[name]["text"] == text
        assert records[name]["phones"] == [p for w in text.split() for p in lexicon[w].split()]
    assert records["19-198-0000"]["phones"] == "T ER1 N DH AH0 L AY1 T AA1 N".split()
    assert set(records["19-198-0000"]["phones"]) <= set(data.classes[0])
    assert {r["subset"] for r in data.splits["dev"]} == {"dev-clean"}


def test_pr_stress_stripped_on_request(built):
    libri = built["libri"]
    data = librispeech.read_pr(str(libri["path"]), libri["lexicon"], stress=False)
    phones = data.splits["train"][0]["phones"]
    assert phones == "T ER N DH AH L AY T AA N".split()
    assert len(data.classes[0]) == 41 and not any(c[-1].isdigit() for c in data.classes[0])


def test_pr_lexicon_errors_name_the_field(built, tmp_path):
    libri = built["libri"]
    with pytest.raises(ValueError, match=r"config\.superb\.pr\.lexicon.*\['IS', 'IT', 'NOW'"):
        librispeech.read_pr(str(libri["path"]), libri["lexicon"][0])
    with pytest.raises(MissingData, match=r"config\.superb\.pr\.lexicon.*nolex\.txt"):
        librispeech.read_pr(str(libri["path"]), str(tmp_path / "nolex.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_text("TURN T ER N\n")  # no stress digit: not one of s3prl's phones
    with pytest.raises(ValueError, match=r"bad\.txt:1.*\['ER'\]"):
        librispeech.read_lexicon(str(bad))
    with pytest.raises(MissingData, match=r"config\.superb\.pr\.path.*subset folder .*test-other"):
        librispeech.read_pr(str(libri["path"]), libri["lexicon"], subsets={"test": ["test-other"]})


def test_asr_characters_as_s3prl(built):
    libri = built["libri"]
    data = librispeech.read_asr(str(libri["path"]))
    assert data.sizes() == libri["sizes"]
    record = next(r for r in data.splits["train"] if r["name"] == "19-198-0000")
    assert record["characters"] == list("TURN|THE|LIGHT|ON|")
    assert data.classes[0][:4] == ("|", "E", "T", "A") and len(data.classes[0]) == 28
    with pytest.raises(MissingData, match=r"config\.superb\.asr\.path"):
        librispeech.read_asr(str(libri["path"] / "missing"))


# ------------------------------------------------------------------------------------ SID


@pytest.mark.parametrize("s3prl_layout", [False, True])
def test_sid_iden_split(tmp_path, s3prl_layout):
    vox = fx.make_voxceleb1(tmp_path, s3prl_layout)
    data = voxceleb1.read(str(vox["path"]), str(vox["split_file"]))
    assert data.sizes() == vox["sizes"] == {"train": 6, "dev": 3, "test": 3}
    assert data.classes == (("id10001", "id10002", "id10003"),)
    assert all(r["crop_samples"] == 128_000 for r in data.splits["train"])
    assert not any("crop_samples" in r for r in data.splits["test"])
    for records in data.splits.values():
        assert all(r["label"] == r["name"].split("/")[0] for r in records)


def test_sid_bad_paths_name_the_field(built, tmp_path):
    sid = built["sid"]
    with pytest.raises(MissingData, match=r"config\.superb\.sid\.split_file.*iden_split"):
        voxceleb1.read(str(sid["path"]), str(tmp_path / "iden_split.txt"))
    split_file = tmp_path / "split.txt"
    split_file.write_text("1 id10001/1zcIwhmdeo4/00001.wav\n3 id19999/abcdefghijk/00001.wav\n")
    with pytest.raises(MissingData, match=r"1 files not found.*id19999/abcdefghijk"):
        voxceleb1.read(str(sid["path"]), str(split_file))
    with pytest.raises(MissingData, match=r"config\.superb\.sid\.path.*no wav/ folder"):
        voxceleb1.read(str(tmp_path), str(sid["split_file"]))


# ------------------------------------------------------------------------------------- IC


def test_ic_slots_and_class_order(built):
    ic = built["ic"]
    data = fluent_commands.read(str(ic["path"]))
    assert data.sizes() == ic["sizes"]
    assert data.label_keys == ("action", "object", "location")
    # classes in order of first appearance in train_data.csv
    assert data.classes == (
        ("activate", "deactivate", "increase", "decrease"),
        ("lights", "volume", "heat", "music"),
        ("none", "kitchen", "bedroom"),
    )
    by_text = {c[0]: c[1:] for c in fx.COMMANDS}
    for records in data.splits.values():
        for r in records:
            assert (r["action"], r["object"], r["location"]) == by_text[r["transcription"]]
    with pytest.raises(MissingData, match=r"config\.superb\.ic\.path.*train_data\.csv"):
        fluent_commands.read(str(ic["path"] / "wavs"))


# ------------------------------------------------------------------------------------- ER


def test_er_folds_and_labels(built):
    er = built["er"]
    folds = iemocap.read_folds(str(er["path"]))
    assert sorted(folds) == [1, 2, 3, 4, 5]
    for fold, data in folds.items():
        assert data.classes == (("neu", "hap", "ang", "sad"),)
        assert {r["session"] for r in data.splits["test"]} == {fold}
        assert len(data.splits["test"]) == er["per_session"]
        pool = data.splits["train"] + data.splits["dev"]
        assert fold not in {r["session"] for r in pool} and len(pool) == 4 * er["per_session"]
        assert len(data.splits["train"]) == int(0.8 * len(pool))
        for records in data.splits.values():
            for r in records:
                original = er["labels"][r["name"]]
                assert r["label"] == ("hap" if original == "exc" else original)
    names = [r["name"] for r in folds[1].splits["test"]]
    assert len(names) == len(set(names))  # the Categorical/ copy is not read
    assert {er["labels"][n] for n in names} == {"neu", "hap", "exc", "ang", "sad"}


def test_er_bad_path_and_fold(built, tmp_path):
    with pytest.raises(MissingData, match=r"config\.superb\.er\.path.*Session1"):
        iemocap.read(str(tmp_path), 1)
    with pytest.raises(ValueError, match=r"config\.superb\.er\.folds.*fold 6"):
        iemocap.read(str(built["er"]["path"]), 6)


# ------------------------------------------------------------------------------------- SF


def test_sf_speakers_and_slot_tokens(built):
    sfx = built["sf"]
    data = snips.read(str(sfx["path"]))
    assert data.sizes() == sfx["sizes"]
    speakers = {s: {r["speaker"] for r in data.splits[s]} for s in data.splits}
    assert speakers == {"train": {"Joanna", "Salli"}, "dev": {"Amy"}, "test": {"Brian"}}
    record = next(r for r in data.splits["train"] if r["name"] == "Joanna-snips-train-0")
    expected = [*"PLAY", " ", "B-track", *"YESTERDAY", "E-track", " ", *"BY", " ", "B-artist",
                *"THE", " ", *"BEATLES", "E-artist"]  # fmt: skip
    assert record["tokens"] == expected and record["intent"] == "PlayMusic"
    assert sf_metrics.tokens_to_text(record["tokens"]) == (
        "PLAY B-track YESTERDAY E-track BY B-artist THE BEATLES E-artist"
    )
    weather = next(r for r in data.splits["train"] if r["text"].endswith("?"))
    assert weather["tokens"][-2:] == ["E-city", " "]  # "?" skipped, its separator kept
    assert set(expected) <= set(data.classes[0]) and "B-O" not in data.classes[0]
    with pytest.raises(MissingData, match=r"config\.superb\.sf\.path.*all\.iob\.snips\.txt"):
        snips.read(str(sfx["path"] / "train"))


def test_sf_metrics_against_a_hand_computation():
    refs = [
        "PLAY B-track YESTERDAY E-track BY B-artist THE BEATLES E-artist",
        "BOOK A TABLE FOR B-party_size_number TWO E-party_size_number",
        "WHAT TIME IS IT",
        "WHAT TIME IS IT",
    ]
    hyps = [
        "PLAY B-track YESTERDAI E-track BY B-album THE BEATLES E-album",
        "BOOK A TABLE FOR B-party_size_number TOO E-party_size_number "
        "B-party_size_number TWO E-party_size_number",
        "WHAT TIME IS IT",
        "WHAT B-timeRange TIME E-timeRange IS IT",
    ]
    # F1 per utterance: {track, album} vs {track, artist} = 0.5; 1; both empty = 1; 0
    assert sf_metrics.slot_type_f1(hyps, refs) == pytest.approx((0.5 + 1 + 1 + 0) / 4)
    # values: YESTERDAY/YESTERDAI 1 edit; THE BEATLES missing 11; TWO matched by the better
    # of TOO and TWO: 0 edits. Reference length 9 + 11 + 3.
    assert sf_metrics.slot_value_cer(hyps, refs) == pytest.approx(12 / 23)
    nested = "B-artist THE B-city BEATLES E-artist"
    assert sf_metrics.slots(nested, hypothesis=True) == {"artist": ["THE BEATLES"]}
    assert sf_metrics.slots(nested) == {"artist": ["THE B-city BEATLES"]}


# ---------------------------------------------------------------------------------- score


def test_superb_score_against_a_hand_computation():
    at = lambda which: {
        t: {m.name: getattr(m, which) for m in score.metrics_of(t)} for t in score.TASKS
    }
    assert score.score(at("sota")) == pytest.approx(1000.0)
    assert score.score(at("fbank")) == pytest.approx(0.0)
    partial = {"pr": {"per": (82.01 + 3.53) / 2}, "sf": {"slot_type_f1": 89.81,
               "slot_value_cer": 52.94}}  # fmt: skip
    # PR half-way (0.5); SF: F1 at SOTA (1) and CER at FBANK (0) average to 0.5
    assert score.score(partial, tasks=["pr", "sf"]) == pytest.approx(500.0)
    assert score.score(partial) is None
    assert ("ks", "accuracy") in score.missing(partial)
    assert score.score({"sf": {"slot_type_f1": 90.0}}, tasks=["sf"]) is None
    assert score.ordered(["sf", "ks", "pr", "asr", "sid", "er", "ic"]) == [
        "pr", "asr", "ks", "sid", "er", "ic", "sf"]  # fmt: skip
    per = score.metrics_of("pr")[0]
    assert not per.higher_is_better and score.published(per, 0.1234) == pytest.approx(12.34)
    assert score.metrics_of("qbe")[0].percent is False
    with pytest.raises(ValueError, match="unknown SUPERB task"):
        score.metrics_of("ks_synth")
