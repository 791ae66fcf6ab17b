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


# ------------------------------------------------------------------ ASV (verification)

MIN_TRAIN_SAMPLES = 32_000  # sv_voxceleb1/config.yaml datarc.vad_config.min_sec (in samples)


def read_verification(path: str, trials: str) -> tuple[Dataset, list[tuple[int, str, str]]]:
    """VoxCeleb1 dev/wav + test/wav and the trial list -> ASV splits and the trials.

    Rules from s3prl/downstream/sv_voxceleb1/ (s3prl 0.4.18): expert.py trains on every file
    under `path/dev/wav` and tests the trials of `test_meta_data` (voxceleb1_test_v2.txt, the
    official cleaned list: `1|0 idXXXXX/<video>/<n>.wav idYYYYY/<video>/<n>.wav`) looked up
    under `path/test/wav`; dataset.py `SpeakerVerifi_train` keeps training files longer than
    vad_config.min_sec = 32,000 samples, labels speakers by the sorted dev/wav folder names,
    and crops to max_timestep = 128,000 samples.
    """
    root = require_dir(path, "asv", "path", "the VoxCeleb1 root holding dev/wav and test/wav")
    dev, test = root / "dev" / "wav", root / "test" / "wav"
    for folder, what in ((dev, "vox1_dev_wav"), (test, "vox1_test_wav")):
        if not folder.is_dir():
            raise MissingData(
                f"{field_name('asv', 'path')}: no folder {folder} (s3prl's layout: {what} "
                "unpacked as dev/wav/ and test/wav/ side by side)"
            )
    trial_path = require_file(
        trials, "asv", "trials", "VoxCeleb1's trial list (voxceleb1_test_v2.txt)"
    )
    import soundfile as sf

    speakers = tuple(sorted(p.name for p in dev.iterdir() if p.is_dir()))
    train, short = [], 0
    for wav in sorted(dev.rglob("*.wav")):
        if sf.info(str(wav)).frames <= MIN_TRAIN_SAMPLES:
            short += 1
            continue
        name = "/".join(wav.parts[-3:])
        train.append({"path": str(wav), "name": name, "label": wav.parts[-3],
                      "speaker": wav.parts[-3], "crop_samples": TRAIN_CROP_SAMPLES})  # fmt: skip
    if not train:
        raise MissingData(f"{field_name('asv', 'path')}: no .wav over 2 s under {dev}")
    pairs, names, missing = [], {}, []
    for number, line in enumerate(trial_path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[0] not in ("0", "1"):
            raise ValueError(
                f"{field_name('asv', 'trials')}: {trial_path}:{number}: {line.strip()!r} is not "
                "`1|0 idXXXXX/<video>/<n>.wav idYYYYY/<video>/<n>.wav`"
            )
        for entry in fields[1:]:
            if entry not in names:
                names[entry] = test / entry
                if not names[entry].is_file():
                    missing.append(entry)
        pairs.append((int(fields[0]), fields[1], fields[2]))
    if missing:
        raise MissingData(
            f"{field_name('asv', 'trials')} lists {len(missing)} files not found under {test}, "
            f"e.g. {missing[:3]}"
        )
    test_records = [
        {"path": str(p), "name": n, "label": n.split("/")[0], "speaker": n.split("/")[0]}
        for n, p in names.items()
    ]
    test_speakers = tuple(sorted({r["label"] for r in test_records}))
    return Dataset(
        {"train": train, "test": test_records},
        ("label",),
        (speakers, test_speakers),
        f"VoxCeleb1 dev/wav for training ({len(speakers)} speakers, {short} files of 2 s or "
        f"less dropped), {len(pairs)} trials of {trial_path.name} on test/wav "
        "(sv_voxceleb1/expert.py, dataset.py, config.yaml)",
    ), pairs
