"""SUPERB ER: IEMOCAP, 4 emotions, leave-one-session-out over the 5 sessions.

`path` is IEMOCAP_full_release: `Session{1..5}/dialog/EmoEvaluation/<dialog>.txt` (the
labels) and `Session{1..5}/sentences/wav/<dialog>/<utterance>.wav`. Rules, from
s3prl/downstream/emotion/:
- IEMOCAP_preprocess.py: in each EmoEvaluation/*.txt (that folder only, not its
  Categorical/ or Attribute/ subfolders) a line starting with `[` reads
  `[start - end]<TAB>utterance<TAB>emotion<TAB>[V, A, D]`; only neu, hap, ang, sad and exc are
  kept, exc relabelled hap; an utterance without a wav under sentences/wav is skipped;
  speaker = the utterance name up to its first `_` (e.g. Ses01F);
- labels {'neu': 0, 'hap': 1, 'ang': 2, 'sad': 3};
- fold k (expert.py test_fold 'foldk'): Session k is the test set, the four others are
  training data, of which int(0.8 n) utterances train and the rest are the dev set
  (valid_ratio 0.2, `random_split` after torch.manual_seed(0)). The five accuracies are
  averaged (docs/superb.md, ER cross validation).
Deviation: s3prl ships meta_data/*.json listing utterances in its authors' os.listdir order,
and draws dev from that order with torch's generator; here label files are read sorted and
dev is drawn with numpy's generator seeded 0, so train and dev hold other utterances than
s3prl's (same sizes; the test set and train+dev are the same). Dot-files (macOS `._*`) are
not label files and are skipped.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np

from stackdistill.superb.datasets.common import (
    Dataset,
    MissingData,
    field_name,
    require_dir,
)

CLASSES = ("neu", "hap", "ang", "sad")
KEPT = {"neu": "neu", "hap": "hap", "ang": "ang", "sad": "sad", "exc": "hap"}
FOLDS = (1, 2, 3, 4, 5)
VALID_RATIO = 0.2  # s3prl/downstream/emotion/config.yaml datarc.valid_ratio
LABEL_DIR, WAV_DIR = "dialog/EmoEvaluation", "sentences/wav"


def session_records(root: pathlib.Path, session: int) -> list[dict]:
    """The kept utterances of one session, label files read in sorted order."""
    folder = root / f"Session{session}"
    label_dir, wav_dir = folder / LABEL_DIR, folder / WAV_DIR
    for needed in (label_dir, wav_dir):
        if not needed.is_dir():
            raise MissingData(
                f"{field_name('er', 'path')}: no folder {needed} (expected IEMOCAP_full_release "
                "with Session1..5/dialog/EmoEvaluation and Session1..5/sentences/wav)"
            )
    wavs = {p.stem: p for p in wav_dir.rglob("*.wav") if not p.name.startswith(".")}
    records = []
    for label_file in sorted(label_dir.glob("*.txt")):
        if label_file.name.startswith("."):
            continue
        for line in label_file.read_text(errors="replace").splitlines():
            if not line.startswith("["):
                continue
            fields = [f for f in re.split("[\t\n]", line) if f]
            if len(fields) < 3 or fields[2] not in KEPT or fields[1] not in wavs:
                continue
            name = fields[1]
            records.append(
                {
                    "path": str(wavs[name]),
                    "name": name,
                    "label": KEPT[fields[2]],
                    "original_label": fields[2],
                    "speaker": name.split("_")[0],
                    "session": session,
                }
            )
    return records


def read(path: str, fold: int) -> Dataset:
    """IEMOCAP_full_release -> the splits of fold `fold` (Session `fold` is the test set)."""
    if fold not in FOLDS:
        raise ValueError(f"{field_name('er', 'folds')}: fold {fold} is not one of {FOLDS}")
    root = require_dir(path, "er", "path", "the IEMOCAP_full_release folder (Session1..5/)")
    sessions = {s: session_records(root, s) for s in FOLDS}
    empty = [s for s, records in sessions.items() if not records]
    if empty:
        raise MissingData(
            f"{field_name('er', 'path')}: sessions {empty} of {root} hold no labelled "
            "neu/hap/exc/ang/sad utterance with its wav"
        )
    pool = [r for s in FOLDS if s != fold for r in sessions[s]]
    order = np.random.default_rng(0).permutation(len(pool))
    num_train = int((1 - VALID_RATIO) * len(pool))
    return Dataset(
        {
            "train": [pool[i] for i in order[:num_train]],
            "dev": [pool[i] for i in order[num_train:]],
            "test": sessions[fold],
        },
        ("label",),
        (CLASSES,),
        f"IEMOCAP fold {fold}: Session{fold} tests, the others train with 20% held out for dev; "
        "neu/hap/ang/sad with exc merged into hap (emotion/IEMOCAP_preprocess.py, expert.py); "
        "dev drawn with numpy (s3prl: torch.manual_seed(0) on its shipped order)",
    )


def read_folds(path: str, folds: tuple[int, ...] = FOLDS) -> dict[int, Dataset]:
    """Every requested fold; SUPERB reports the mean test accuracy over folds 1..5."""
    return {fold: read(path, fold) for fold in folds}
