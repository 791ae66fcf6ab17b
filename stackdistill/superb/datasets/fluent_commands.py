"""SUPERB IC: Fluent Speech Commands, an (action, object, location) triple per utterance.

`path` is the fluent_speech_commands_dataset folder: `data/{train,valid,test}_data.csv`
(columns: an unnamed index, path, speakerId, transcription, action, object, location) and the
audio under `wavs/speakers/<speakerId>/`, the CSV's `path` being relative to the root. Rules,
from s3prl/downstream/fluent_commands/:
- expert.py get_dataset: train/dev/test = train_data.csv / valid_data.csv / test_data.csv;
- expert.py Sy_intent: the classes of each slot are the values of train_data.csv's column in
  order of first appearance (a `Counter` over the column); a dev/test value unseen in
  training would be a KeyError there, a ValueError here;
- dataset.py: the label is [action, object, location]; expert.py forward: an utterance is
  right only when all three are (`.prod(1)`).
"""

from __future__ import annotations

import csv
import pathlib

from stackdistill.superb.datasets.common import (
    Dataset,
    MissingData,
    field_name,
    require_dir,
    require_file,
)

SLOTS = ("action", "object", "location")
CSV_FILES = {"train": "train_data.csv", "dev": "valid_data.csv", "test": "test_data.csv"}


def _rows(root: pathlib.Path, file_name: str) -> list[dict[str, str]]:
    csv_path = require_file(
        root / "data" / file_name, "ic", "path", "the Fluent Speech Commands root (data/*.csv)"
    )
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    needed = {"path", "speakerId", *SLOTS}
    if not rows or not needed <= set(rows[0]):
        raise MissingData(
            f"{field_name('ic', 'path')}: {csv_path} lacks the columns {sorted(needed)}"
        )
    return rows


def read(path: str) -> Dataset:
    """Fluent Speech Commands root -> IC splits; records carry action, object, location."""
    root = require_dir(path, "ic", "path", "the fluent_speech_commands_dataset folder")
    rows = {split: _rows(root, name) for split, name in CSV_FILES.items()}
    classes = tuple(tuple(dict.fromkeys(r[slot] for r in rows["train"])) for slot in SLOTS)
    splits = {}
    for split, split_rows in rows.items():
        records = []
        for r in split_rows:
            audio = root / r["path"]
            if not audio.is_file():
                raise MissingData(
                    f"{field_name('ic', 'path')}: {CSV_FILES[split]} names {r['path']}, "
                    f"not found at {audio}"
                )
            for slot, names in zip(SLOTS, classes):
                if r[slot] not in names:
                    raise ValueError(
                        f"{CSV_FILES[split]}: {slot} {r[slot]!r} of {r['path']} never occurs "
                        "in train_data.csv (s3prl's classes come from the training split)"
                    )
            records.append(
                {
                    "path": str(audio),
                    "name": r["path"],
                    "speaker": r["speakerId"],
                    "transcription": r.get("transcription", ""),
                    **{slot: r[slot] for slot in SLOTS},
                }
            )
        splits[split] = records
    return Dataset(
        splits,
        SLOTS,
        classes,
        "Fluent Speech Commands data/{train,valid,test}_data.csv; classes per slot in order of "
        "first appearance in train (fluent_commands/expert.py); right = all three slots right",
    )
