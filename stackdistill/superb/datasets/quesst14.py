"""SUPERB QbE: QUESST 2014 (quesst14Database, as unpacked from quesst14Database.tgz).

`path` is the quesst14Database folder. Rules, from s3prl 0.4.18 (commit ec8064b5):
- quesst14_dtw/dataset.py `english_audio_paths`: the search utterances are the lines of
  scoring/language_key_utterances.lst, the queries those of scoring/language_key_dev.lst (dev)
  or language_key_eval.lst (test); each line is `<path> <language>`, only `nnenglish` lines are
  searched, and a path is found at `path/<the listed path without its first folder>`;
- quesst14_dtw/dataset.py `__getitem__`: audio as sox reads it with `channels 1, rate 16000,
  gain -3.0` (records carry `gain_db`: superb/features.py applies it);
- quesst14_embedding/quesst14_trainset.py `parse_rttm`: the true (query, utterance) pairs are
  the `LEXEME <utterance> ... <query> ...` lines of
  scoring/groundtruth_quesst14_<dev|eval>/quesst14_<dev|eval>.rttm.
The scoring script scores every trial of the ground truth, all languages; trials s3prl does not
write (the non-English ones) get the default score -10 (s3prl/downstream/docs/superb.md): every
query and utterance is a record here, `english` marks those that are searched.
"""

from __future__ import annotations

import pathlib
import re

from stackdistill.superb.datasets.common import (
    Dataset,
    MissingData,
    field_name,
    require_dir,
    require_file,
)

ENGLISH = "nnenglish"
GAIN_DB = -3.0  # quesst14_dtw/dataset.py: sox effect ["gain", "-3.0"]
SPLIT_FILES = {"dev": "dev", "test": "eval"}  # our split -> QUESST's name
_QUERY = re.compile(r"quesst14_(dev|eval)_[0-9]+")


def _read_list(root: pathlib.Path, name: str) -> list[dict]:
    """One record per line of scoring/<name>: path, name, language, english."""
    lst = require_file(root / "scoring" / name, "qbe", "path", f"QUESST 2014's scoring/{name}")
    records, missing = [], []
    for number, line in enumerate(lst.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"{lst}:{number}: {line.strip()!r} is not `<path> <language>`")
        listed, language = fields
        relative = listed.split("/", 1)[1] if "/" in listed else listed
        audio = root / relative
        if not audio.is_file() and (root / listed).is_file():  # a list without the prefix
            audio = root / listed
        english = language == ENGLISH
        if english and not audio.is_file():
            missing.append(str(audio))
        records.append(
            {
                "path": str(audio),
                "name": pathlib.PurePosixPath(listed).stem,
                "language": language,
                "english": english,
                "gain_db": GAIN_DB,
            }
        )
    if missing:
        raise MissingData(
            f"{field_name('qbe', 'path')}: {len(missing)} English files of scoring/{name} are "
            f"missing, e.g. {missing[:3]}"
        )
    return records


def read_targets(rttm: pathlib.Path) -> dict[str, list[str]]:
    """query -> the utterances it occurs in, from a QUESST ground-truth RTTM."""
    targets: dict[str, list[str]] = {}
    for line in rttm.read_text().splitlines():
        fields = line.split()
        if not fields or fields[0] != "LEXEME":
            continue
        query = next((f for f in fields[2:] if _QUERY.fullmatch(f)), None)
        if query is not None:
            targets.setdefault(query, []).append(fields[1])
    return targets


def read(path: str) -> Dataset:
    """quesst14Database -> splits "dev" and "test" (queries) and "docs" (utterances searched)."""
    root = require_dir(path, "qbe", "path", "the quesst14Database folder (QUESST 2014)")
    splits = {"docs": _read_list(root, "language_key_utterances.lst")}
    for split, quesst in SPLIT_FILES.items():
        queries = _read_list(root, f"language_key_{quesst}.lst")
        rttm = require_file(
            root / "scoring" / f"groundtruth_quesst14_{quesst}" / f"quesst14_{quesst}.rttm",
            "qbe",
            "path",
            f"QUESST 2014's ground truth of the {quesst} queries",
        )
        targets = read_targets(rttm)
        for q in queries:
            q["targets"] = targets.get(q["name"], [])
        splits[split] = queries
    for split, records in splits.items():
        if not any(r["english"] for r in records):
            raise MissingData(f"{field_name('qbe', 'path')}: no English {split} in {root}")
    return Dataset(
        splits,
        (),
        (),
        "QUESST 2014, English queries and utterances searched, every language scored with "
        "default -10 (quesst14_dtw/dataset.py, docs/superb.md); ground truth from "
        "scoring/groundtruth_quesst14_{dev,eval}/*.rttm",
    )


def sizes(data: Dataset) -> dict[str, int]:
    """English (searched) records per split."""
    return {k: sum(r["english"] for r in v) for k, v in data.splits.items()}
