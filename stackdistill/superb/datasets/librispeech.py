"""SUPERB PR and ASR on LibriSpeech, with s3prl's phone and character targets.

`path` is the LibriSpeech root holding the openslr subset folders; each utterance
`<speaker>-<chapter>-<n>` is the .flac beside `<speaker>-<chapter>.trans.txt`. Splits are
train-clean-100 / dev-clean / test-clean for both tasks (s3prl/downstream/ctc/libriphone.yaml
corpus.train/dev/test; s3prl/downstream/asr/config.yaml datarc.train/dev-clean/test-clean).

PR (s3prl/downstream/ctc/corpus/libriphone.py, text mode 'word' over vocab/phoneme.txt):
- `lexicon` is one file or several (s3prl uses librispeech-lexicon-200k-g2p.txt then
  librispeech-lexicon-allothers-g2p.txt), a line per pronunciation: `WORD PHONE PHONE ...`
  (tab or spaces). A word listed more than once keeps its first pronunciation, across files
  in the order given ("Taking the first phoneme sequences for a deterministic behavior");
- each transcript word (as written, upper case) is replaced by its phones; no word boundary;
- the phone set is vocab/phoneme.txt: ARPAbet WITH stress digits (AA0 AA1 AA2 ...), plus SIL
  and SPN: 71 tokens. s3prl asserts every lexicon phone is in it. `strip_stress=True` drops
  the digits (39 phones + SIL, SPN), which is not SUPERB's PR.

ASR (s3prl/downstream/asr/dataset.py `_load_transcript.process_trans`, dictionary char.dict):
the transcript upper-cased, each character a token, `|` for every space and one final `|`.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Sequence
from typing import Any

from stackdistill.data.sources import librispeech_records
from stackdistill.superb.datasets.common import (
    Dataset,
    MissingData,
    field_name,
    require_dir,
    require_file,
    require_nonempty,
)

SUBSETS = {"train": ("train-clean-100",), "dev": ("dev-clean",), "test": ("test-clean",)}
# s3prl/downstream/ctc/vocab/phoneme.txt, in its order: SIL, SPN, then ARPAbet with stress.
PHONES = tuple(
    "SIL SPN AA0 AA1 AA2 AE0 AE1 AE2 AH0 AH1 AH2 AO0 AO1 AO2 AW0 AW1 AW2 AY0 AY1 AY2 B CH D DH "
    "EH0 EH1 EH2 ER0 ER1 ER2 EY0 EY1 EY2 F G HH IH0 IH1 IH2 IY0 IY1 IY2 JH K L M N NG OW0 OW1 "
    "OW2 OY0 OY1 OY2 P R S SH T TH UH0 UH1 UH2 UW0 UW1 UW2 V W Y Z ZH".split()
)
PHONES_WITHOUT_STRESS = tuple(dict.fromkeys(re.sub(r"\d$", "", p) for p in PHONES))
# s3prl/downstream/asr/char.dict, in its order (by frequency).
CHARACTERS = tuple("|ETAONIHSRDLUMCWFGYPBVK'XJQZ")


def read_splits(
    task: str, path: str, subsets: dict[str, Sequence[str]] | None
) -> dict[str, list[dict[str, Any]]]:
    """The utterances of each split's subsets; errors name `config.superb.<task>.path`."""
    root = require_dir(path, task, "path", "the LibriSpeech root (train-clean-100/, ...)")
    splits = {}
    for split, names in (subsets or SUBSETS).items():
        for name in names:
            if not (root / name).is_dir():
                raise MissingData(
                    f"{field_name(task, 'path')}: no LibriSpeech subset folder {root / name}"
                )
        splits[split] = librispeech_records(str(root), list(names))
        require_nonempty(splits[split], task, "path", root, f"{'/'.join(names)} transcripts")
    for records in splits.values():
        for r in records:
            r["speaker"] = str(r["speaker"])
    return splits


def read_lexicon(files: str | Sequence[str]) -> dict[str, list[str]]:
    """word -> phones, the first pronunciation of each word across the files in order."""
    paths = [files] if isinstance(files, str | pathlib.Path) else list(files)
    if not paths:
        raise MissingData(f"set {field_name('pr', 'lexicon')} to a `WORD PHONE ...` lexicon")
    lexicon: dict[str, list[str]] = {}
    for path in paths:
        file = require_file(path, "pr", "lexicon", "a `WORD PHONE PHONE ...` lexicon file")
        for number, line in enumerate(file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            word, *phones = line.split()
            unknown = [p for p in phones if p not in PHONES]
            if unknown or not phones:
                raise ValueError(
                    f"{field_name('pr', 'lexicon')}: {file}:{number}: {line.strip()!r} has "
                    f"phones {unknown or 'none'} outside s3prl's phone set (vocab/phoneme.txt)"
                )
            lexicon.setdefault(word, phones)
    return lexicon


def strip_stress(phones: Sequence[str]) -> list[str]:
    """ARPAbet phones without their stress digit (AH0 -> AH)."""
    return [re.sub(r"\d$", "", p) for p in phones]


def read_pr(
    path: str,
    lexicon: str | Sequence[str],
    *,
    stress: bool = True,
    subsets: dict[str, Sequence[str]] | None = None,
) -> Dataset:
    """LibriSpeech + lexicon -> PR splits; records carry `text` and `phones`."""
    words = read_lexicon(lexicon)
    splits = read_splits("pr", path, subsets)
    missing = sorted(
        {w for rs in splits.values() for r in rs for w in r["text"].split() if w not in words}
    )
    if missing:
        raise ValueError(
            f"{field_name('pr', 'lexicon')}: {len(missing)} transcript words have no "
            f"pronunciation, e.g. {missing[:5]} (s3prl uses librispeech-lexicon-200k-g2p.txt and "
            "librispeech-lexicon-allothers-g2p.txt together)"
        )
    for records in splits.values():
        for r in records:
            phones = [p for w in r["text"].split() for p in words[w]]
            r["phones"] = phones if stress else strip_stress(phones)
    return Dataset(
        splits,
        ("phones",),
        (PHONES if stress else PHONES_WITHOUT_STRESS,),
        "LibriSpeech train-clean-100/dev-clean/test-clean; phones from the lexicon, first "
        "pronunciation per word (ctc/corpus/libriphone.py), "
        + (
            "stressed ARPAbet of ctc/vocab/phoneme.txt"
            if stress
            else "stress digits dropped (deviation: s3prl's PR keeps them)"
        ),
    )


def characters(text: str) -> list[str]:
    """s3prl's ASR targets: upper-case characters, `|` for each space and at the end."""
    return list(text.upper().replace(" ", "|")) + ["|"]


def read_asr(path: str, *, subsets: dict[str, Sequence[str]] | None = None) -> Dataset:
    """LibriSpeech -> ASR splits; records carry `text` and `characters`."""
    splits = read_splits("asr", path, subsets)
    for records in splits.values():
        for r in records:
            r["characters"] = characters(r["text"])
    return Dataset(
        splits,
        ("characters",),
        (CHARACTERS,),
        "LibriSpeech train-clean-100/dev-clean/test-clean; characters of asr/char.dict with "
        "'|' between words and at the end (asr/dataset.py); WER without a language model",
    )
