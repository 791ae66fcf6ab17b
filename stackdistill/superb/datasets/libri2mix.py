"""SUPERB SD: Libri2Mix diarization data as s3prl's preparation writes it (Kaldi-style folders).

`path` is the folder given to s3prl's LibriMix/scripts/prepare_diarization.py as
--target_dir (s3prl/downstream/docs/superb.md, "SD"): it holds train/, dev/ and test/, each
with the files s3prl/downstream/diarization/dataset.py `KaldiData` reads (s3prl 0.4.18):
- wav.scp `<recording> <wav path>` (a piped command is not supported here), segments
  `<utterance> <recording> <start s> <end s>`, utt2spk `<utterance> <speaker>`, reco2dur
  `<recording> <seconds>`;
- rttm (the ground truth score.sh gives dscore: `-r ${test_set}/rttm`), read for scoring when
  present, else the segments stand for it.
Speakers of a recording are its utterances' speakers, sorted (dataset.py
`_get_labeled_speech`); config.yaml datarc.num_speakers = 2.
"""

from __future__ import annotations

import pathlib

from stackdistill.superb.datasets.common import (
    Dataset,
    MissingData,
    field_name,
    require_dir,
    require_file,
)
from stackdistill.superb.detection import read_rttm

SPLITS = ("train", "dev", "test")
FILES = ("wav.scp", "segments", "utt2spk", "reco2dur")


def _table(path: pathlib.Path, columns: int) -> list[list[str]]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(None, columns - 1)
        if len(fields) != columns:
            raise ValueError(f"{path}:{number}: {line.strip()!r} has not {columns} fields")
        rows.append(fields)
    return rows


def read_split(folder: pathlib.Path, split: str) -> list[dict]:
    """One record per recording: path, name, duration, segments, speakers, reference."""
    files = {}
    for name in FILES:
        files[name] = require_file(
            folder / name, "sd", "path", f"the {split} split's {name} (s3prl's data preparation)"
        )
    wavs = {rec: wav.strip() for rec, wav in _table(files["wav.scp"], 2)}
    if any(w.endswith("|") for w in wavs.values()):
        raise MissingData(f"{field_name('sd', 'path')}: {files['wav.scp']} pipes a command")
    durations = {rec: float(d) for rec, d in _table(files["reco2dur"], 2)}
    speaker_of = {utt: spk.strip() for utt, spk in _table(files["utt2spk"], 2)}
    segments: dict[str, list[tuple[float, float, str]]] = {}
    for utt, rec, start, end in _table(files["segments"], 4):
        segments.setdefault(rec, []).append((float(start), float(end), speaker_of[utt]))
    rttm_file = folder / "rttm"
    reference = read_rttm(rttm_file.read_text().splitlines()) if rttm_file.is_file() else {}
    records, missing = [], []
    for rec, wav in sorted(wavs.items()):
        if not pathlib.Path(wav).is_file():
            missing.append(wav)
            continue
        segs = sorted(segments.get(rec, []))
        records.append(
            {
                "path": wav,
                "name": rec,
                "duration": durations[rec],
                "segments": segs,
                "speakers": sorted({s for *_, s in segs}),
                "reference": reference.get(rec, segs),
            }
        )
    if missing:
        raise MissingData(
            f"{field_name('sd', 'path')}: {files['wav.scp']} lists {len(missing)} missing files, "
            f"e.g. {missing[:3]}"
        )
    return records


def read(path: str) -> Dataset:
    """The prepared folder -> train/dev/test recordings with their speaker segments."""
    root = require_dir(path, "sd", "path", "the folder s3prl's prepare_diarization.py wrote")
    splits = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            raise MissingData(f"{field_name('sd', 'path')}: no folder {folder} ({split} split)")
        splits[split] = read_split(folder, split)
        if not splits[split]:
            raise MissingData(f"{field_name('sd', 'path')}: no recording in {folder}/wav.scp")
    has_rttm = (root / "test" / "rttm").is_file()
    return Dataset(
        splits,
        ("segments",),
        (("speaker 1", "speaker 2"),),
        "Libri2Mix as s3prl's prepare_diarization.py writes it (wav.scp, segments, utt2spk, "
        "reco2dur; diarization/dataset.py KaldiData); scored against "
        + ("test/rttm" if has_rttm else "test/segments (no test/rttm)"),
    )
