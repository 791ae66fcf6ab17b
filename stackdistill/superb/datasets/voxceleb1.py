"""SUPERB SID: VoxCeleb1 speaker identification with the official `iden_split.txt`.

`path` is the VoxCeleb1 root: either `wav/idXXXXX/<video>/<n>.wav` directly under it, or
s3prl's layout with the dev and test archives unpacked side by side (`dev/wav/...`,
`test/wav/...`). `split_file` is iden_split.txt (s3prl ships it as
downstream/voxceleb1/veri_test_class.txt), one `SPLIT idXXXXX/<video>/<n>.wav` line per
utterance with SPLIT 1 = train, 2 = dev, 3 = test. Rules, from s3prl/downstream/voxceleb1/:
- dataset.py SpeakerClassifiDataset.train/dev/test: each split file entry is looked up as
  `path/*/wav/<entry>`; an entry that is not on disk is an error there (an IndexError), here a
  MissingData naming both fields;
- dataset.py build_label: the class of `idXXXXX` is XXXXX - 10001, i.e. the speakers in id
  order (1,251 for the real file): `classes` are the split file's speakers, sorted;
- config.yaml: training utterances are randomly cropped to max_timestep = 128,000 samples
  (8 s) each time they are read; dev and test are read whole.
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

SPLIT_IDS = {"1": "train", "2": "dev", "3": "test"}
TRAIN_CROP_SAMPLES = 128_000  # s3prl/downstream/voxceleb1/config.yaml datarc.max_timestep


def _wav_roots(root: pathlib.Path) -> list[pathlib.Path]:
    """The `wav` folders under the root: `root/wav` and/or `root/*/wav` (s3prl's dev/, test/)."""
    roots = [root / "wav"] if (root / "wav").is_dir() else []
    roots += sorted(p for p in root.glob("*/wav") if p.is_dir())
    if not roots:
        raise MissingData(
            f"{field_name('sid', 'path')}: no wav/ folder in {root} or in its subfolders "
            "(expected VoxCeleb1's wav/idXXXXX/<video>/<n>.wav)"
        )
    return roots


def read(path: str, split_file: str) -> Dataset:
    """VoxCeleb1 root + iden_split.txt -> SID splits; records carry `label` (the speaker id)."""
    root = require_dir(path, "sid", "path", "the VoxCeleb1 root holding wav/idXXXXX/...")
    split_path = require_file(
        split_file, "sid", "split_file", "VoxCeleb1's iden_split.txt (`1 id10001/<video>/1.wav`)"
    )
    wav_roots = _wav_roots(root)
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    missing = []
    for number, line in enumerate(split_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[0] not in SPLIT_IDS or fields[1].count("/") != 2:
            raise ValueError(
                f"{field_name('sid', 'split_file')}: {split_path}:{number}: {line.strip()!r} is "
                "not `1|2|3 idXXXXX/<video>/<n>.wav`"
            )
        split, entry = SPLIT_IDS[fields[0]], fields[1]
        found = next((w / entry for w in wav_roots if (w / entry).is_file()), None)
        if found is None:
            missing.append(entry)
            continue
        speaker = entry.split("/")[0]
        record = {"path": str(found), "name": entry, "label": speaker, "speaker": speaker}
        if split == "train":
            record["crop_samples"] = TRAIN_CROP_SAMPLES
        splits[split].append(record)
    if missing:
        raise MissingData(
            f"{field_name('sid', 'split_file')} lists {len(missing)} files not found under "
            f"{field_name('sid', 'path')} ({', '.join(map(str, wav_roots))}), e.g. {missing[:3]}"
        )
    if not all(splits.values()):
        empty = [name for name, records in splits.items() if not records]
        raise MissingData(f"{field_name('sid', 'split_file')}: {split_path} has no {empty} lines")
    speakers = tuple(sorted({r["label"] for records in splits.values() for r in records}))
    return Dataset(
        splits,
        ("label",),
        (speakers,),
        "VoxCeleb1 with iden_split.txt (1 train, 2 dev, 3 test; voxceleb1/dataset.py); classes "
        "= speakers in id order; training crops of 128,000 samples (voxceleb1/config.yaml)",
    )
