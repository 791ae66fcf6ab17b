"""SUPERB SF: Audio SNIPS slot filling, laid out as s3prl's preprocessing leaves it.

`path` is the SNIPS folder made by s3prl/preprocess/snips_prepare_data.sh (or its download):
`{train,valid,test}/<Speaker>-snips-<split>-<n>.wav`, `all.iob.snips.txt` with one line per
utterance `<uid> BOS W1 ... Wn EOS<TAB>O S1 ... Sn <intent>` (Si the slot of word i, or O),
and `slots.txt`, the slot names one a line, the first ("O") not a slot. Rules, from
s3prl/downstream/ctc/ (snips.yaml, corpus/snips.py, text.py CharacterTextSlotEncoder):
- speakers (snips.yaml): train Ivy Joanna Joey Justin Kendra Kimberly Matthew Salli; dev
  (`valid/`) Aditi Amy Geraint Nicole; test Brian Emma Raveena Russell. A wav of another
  speaker, or without a line in all.iob.snips.txt, is left out;
- targets (CharacterTextSlotEncoder.encode): BOS/EOS and the first/last IOB fields dropped;
  a word that is one of `?!.,;-` is skipped, `&` becomes AND; a run of words with the same
  slot opens with `B-<slot>` and closes with `E-<slot>`; the characters of each word
  (vocab/character.txt: space, A-Z, apostrophe; anything else `<unk>`), a space between
  words. s3prl also ends the CTC target with `<eos>` and drops it when decoding; records here
  hold the tokens without it.
Metrics: slot-type F1 and slot-value CER on the decoded strings (superb/sf_metrics.py).
"""

from __future__ import annotations

import pathlib

from stackdistill.superb.datasets.common import (
    Dataset,
    MissingData,
    field_name,
    require_dir,
    require_file,
    require_nonempty,
)

SPEAKERS = {
    "train": ("Ivy", "Joanna", "Joey", "Justin", "Kendra", "Kimberly", "Matthew", "Salli"),
    "dev": ("Aditi", "Amy", "Geraint", "Nicole"),
    "test": ("Brian", "Emma", "Raveena", "Russell"),
}
FOLDERS = {"train": "train", "dev": "valid", "test": "test"}
UNK = "<unk>"
CHARACTERS = (" ", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", "'")  # s3prl/downstream/ctc/vocab/character.txt
PUNCTUATION = "?!.,;-"


def read_transcripts(file: pathlib.Path) -> dict[str, tuple[list[str], list[str], str]]:
    """uid -> (words, slots, intent) of all.iob.snips.txt, BOS/EOS and the leading O dropped."""
    transcripts = {}
    for line in file.read_text().splitlines():
        if not line.strip():
            continue
        uid, _, rest = line.strip().partition(" ")
        sentence, _, iobs = rest.strip("\r\n ").partition("\t")
        fields = iobs.split(" ")
        transcripts[uid] = (sentence.split(" ")[1:-1], fields[1:-1], fields[-1])
    return transcripts


def read_slots(file: pathlib.Path) -> tuple[str, ...]:
    """The slot names of slots.txt, its first line ("O") left out as s3prl does."""
    return tuple(s for s in file.read_text().split("\n")[1:] if s.strip())


def slot_tokens(words: list[str], iobs: list[str]) -> list[str]:
    """s3prl's CharacterTextSlotEncoder.encode as token strings, without the final <eos>."""
    tokens: list[str] = []
    for i, (word, iob) in enumerate(zip(words, iobs)):
        if word in PUNCTUATION:  # a substring test, as s3prl's `wrd in "?!.,;-"`
            continue
        if word == "&":
            word = "AND"
        if iob != "O" and (i == 0 or iobs[i - 1] != iob):
            tokens.append(f"B-{iob}")
        tokens += [c if c in CHARACTERS else UNK for c in word]
        if iob != "O" and (i == len(words) - 1 or iobs[i + 1] != iob):
            tokens.append(f"E-{iob}")
        if i != len(words) - 1:
            tokens.append(" ")
    return tokens


def read(path: str) -> Dataset:
    """Audio SNIPS folder -> SF splits; records carry text, iob, intent and tokens."""
    root = require_dir(path, "sf", "path", "the SNIPS folder of s3prl's preprocessing")
    transcripts = read_transcripts(
        require_file(root / "all.iob.snips.txt", "sf", "path", "SNIPS with all.iob.snips.txt")
    )
    slots = read_slots(require_file(root / "slots.txt", "sf", "path", "SNIPS with slots.txt"))
    slot_vocab = tuple(f"{edge}-{s}" for s in slots for edge in "BE")
    splits = {}
    for split, folder_name in FOLDERS.items():
        folder = root / folder_name
        if not folder.is_dir():
            raise MissingData(f"{field_name('sf', 'path')}: no folder {folder}")
        records = []
        for wav in sorted(folder.rglob("*.wav")):
            uid, speaker = wav.stem, wav.stem.split("-")[0]
            if uid not in transcripts or speaker not in SPEAKERS[split]:
                continue
            words, iobs, intent = transcripts[uid]
            tokens = slot_tokens(words, iobs)
            unknown = sorted({t for t in tokens if t.startswith(("B-", "E-"))} - set(slot_vocab))
            if unknown:
                raise ValueError(f"{root / 'slots.txt'} lacks the slots {unknown} of {uid}")
            records.append(
                {
                    "path": str(wav),
                    "name": uid,
                    "speaker": speaker,
                    "text": " ".join(words),
                    "iob": " ".join(iobs),
                    "intent": intent,
                    "tokens": tokens,
                }
            )
        require_nonempty(records, "sf", "path", folder, f"labelled wavs of {SPEAKERS[split]}")
        splits[split] = records
    return Dataset(
        splits,
        ("tokens",),
        ((UNK, *CHARACTERS, *slot_vocab),),
        "Audio SNIPS, s3prl's speaker split (ctc/snips.yaml) and character+slot targets "
        "(ctc/text.py CharacterTextSlotEncoder); slot-type F1 and slot-value CER",
    )
