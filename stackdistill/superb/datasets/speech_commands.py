"""SUPERB KS: Speech Commands v0.01, 12 classes, as s3prl's `speech_commands` recipe reads it.

`path` is the unpacked speech_commands_v0.01.tar.gz (one folder per word, `_background_noise_/`,
`validation_list.txt`, `testing_list.txt`); `test_path` the unpacked
speech_commands_test_set_v0.01.tar.gz (one folder per class, `_silence_` and `_unknown_`
included). Rules, from s3prl/downstream/speech_commands/:
- classes (dataset.py CLASSES): the 10 words, `_unknown_`, `_silence_`, in that order;
- train/dev (expert.py split_dataset): every word folder but `_background_noise_`; a file goes
  to dev when the SHA-1 percentage of its speaker part (the name before `_nohash_`) is below
  10, is dropped when below 20 (the official testing list: the test set is its own folder),
  else goes to train. This is the rule that produced validation_list.txt/testing_list.txt;
- a word outside the 10 becomes `_unknown_` (dataset.py SpeechCommandsDataset);
- every `_background_noise_/*.wav` is one `_silence_` record in train AND in dev, read as a
  random 1 s crop each time (dataset.py `__getitem__`): records carry `crop_samples=16000`;
- training (and s3prl's dev evaluation) draws records with a WeightedRandomSampler, weight
  len(data) / count(class) (dataset.py sample_weights, expert.py get_dataloader):
  `sample_weights(records)`;
- test: every `*.wav` in every folder of `test_path`, labelled by its folder.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from stackdistill.superb.datasets.common import (
    Dataset,
    MissingData,
    field_name,
    require_dir,
    require_nonempty,
)

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN, SILENCE = "_unknown_", "_silence_"
CLASSES = (*WORDS, UNKNOWN, SILENCE)
BACKGROUND = "_background_noise_"
SILENCE_SAMPLES = 16_000  # s3prl crops each _silence_ read to 1 s at 16 kHz
MAX_UTTERANCES_PER_CLASS = 2**27 - 1  # expert.py split_dataset (the dataset README's constant)


def split_of(file_name: str) -> str:
    """The split ("dev", "test" or "train") of a file, by the hash of its speaker part."""
    speaker = re.sub(r"_nohash_.*$", "", file_name)
    hashed = int(hashlib.sha1(speaker.encode("utf-8")).hexdigest(), 16)
    percentage = (hashed % (MAX_UTTERANCES_PER_CLASS + 1)) * (100.0 / MAX_UTTERANCES_PER_CLASS)
    if percentage < 10:
        return "dev"
    if percentage < 20:
        return "test"
    return "train"


def _record(path: pathlib.Path, folder: str, label: str) -> dict[str, Any]:
    speaker = re.sub(r"_nohash_.*$", "", path.name) if label != SILENCE else BACKGROUND
    return {"path": str(path), "name": f"{folder}/{path.name}", "label": label, "speaker": speaker}


def _train_dev(root: pathlib.Path) -> tuple[list[dict], list[dict]]:
    """s3prl's train and dev lists (words and unknowns), sorted by name for determinism."""
    train, dev = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != BACKGROUND):
        label = folder.name if folder.name in CLASSES else UNKNOWN
        for wav in sorted(folder.glob("*.wav")):
            split = split_of(wav.name)
            if split != "test":
                (dev if split == "dev" else train).append(_record(wav, folder.name, label))
    return train, dev


def _silence(root: pathlib.Path) -> list[dict]:
    noise = root / BACKGROUND
    if not noise.is_dir():
        raise MissingData(
            f"{field_name('ks', 'path')}: no {BACKGROUND}/ folder in {root} (the _silence_ "
            "class is cut from it; point the field at the unpacked speech_commands_v0.01)"
        )
    wavs = sorted(noise.glob("*.wav"))
    require_nonempty(wavs, "ks", "path", noise, "background-noise .wav files")
    return [{**_record(w, BACKGROUND, SILENCE), "crop_samples": SILENCE_SAMPLES} for w in wavs]


def read(path: str, test_path: str) -> Dataset:
    """Speech Commands v0.01 train root + official test-set folder -> SUPERB's KS splits."""
    root = require_dir(path, "ks", "path", "the unpacked speech_commands_v0.01 folder")
    test_root = require_dir(
        test_path, "ks", "test_path", "the unpacked speech_commands_test_set_v0.01 folder"
    )
    train, dev = _train_dev(root)
    require_nonempty(train, "ks", "path", root, "word folders with .wav files")
    silence = _silence(root)
    test = []
    for folder in sorted(p for p in test_root.iterdir() if p.is_dir()):
        if folder.name not in CLASSES:
            raise MissingData(
                f"{field_name('ks', 'test_path')}: folder {folder} is not one of the 12 classes "
                f"{list(CLASSES)} (is this the v0.01 test set?)"
            )
        test += [_record(w, folder.name, folder.name) for w in sorted(folder.glob("*.wav"))]
    require_nonempty(test, "ks", "test_path", test_root, "class folders with .wav files")
    return Dataset(
        {"train": train + silence, "dev": dev + silence, "test": test},
        ("label",),
        (CLASSES,),
        "Speech Commands v0.01, 12 classes; train/dev by s3prl's speaker hash "
        "(speech_commands/expert.py split_dataset), the hashed test part dropped; _silence_ = "
        "every _background_noise_ file, a random 1 s crop per read, in train and dev "
        "(speech_commands/dataset.py); class-balanced sampling; test = the official test set",
    )


def sample_weights(records: Sequence[dict[str, Any]]) -> list[float]:
    """s3prl's WeightedRandomSampler weights: len(records) / count(record's class)."""
    counts = Counter(r["label"] for r in records)
    return [len(records) / counts[r["label"]] for r in records]
