"""SUPERB tasks: their data, targets, held-out splits and heads, real and synthetic.

Mini-SUPERB on the espeak-ng corpus (offline):
- `ks_synth`: which of the 10 keywords was said; the test voices are never heard in training,
  as Speech Commands keeps its test speakers apart.
- `sid_synth`: which of the 8 voices spoke; the split is by utterance within each voice, so
  every voice is in both halves (SID classifies known speakers).
- `pr_synth`: espeak's phonemes (stress marks dropped, no word boundaries), CTC, PER; the
  split is by a hash of the file name.

SUPERB's own tasks read the datasets' own layouts (superb/benchmark.py, which also holds
`build`, the dispatcher of every task name). The alternatives kept here are labelled as not
SUPERB's protocol: PR with espeak-ng phones when no lexicon is set, KS from TFDS (v0.02), and
SID/IC/ER from a labelled JSONL manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from stackdistill.data import manifest, synth
from stackdistill.data.labels import build_vocab, phoneme_tokens

SPLIT_ALIASES = {
    "train": "train",
    "1": "train",
    "dev": "dev",
    "valid": "dev",
    "validation": "dev",
    "2": "dev",
    "test": "test",
    "3": "test",
}


@dataclasses.dataclass
class Task:
    """One downstream task: records per split, how to read each target, and its head."""

    name: str
    kind: str  # "utterance": mean-pool + linear | "ctc": frame-level CTC | "qbe": DTW, no head
    # | "asv": x-vector, trials scored by cosine | "sd": frame-level LSTM, PIT, DER
    metric: str  # the primary one: "accuracy" | "per" | "wer" | "slot_type_f1" (SF)
    splits: dict[str, Sequence[dict[str, Any]]]  # "train", "test" and optionally "dev"
    target_fn: Callable[[dict[str, Any]], Any]  # record -> class ids (one per group) or token ids
    classes: tuple[tuple[str, ...], ...]  # class names per label group; ctc: one vocabulary
    head: str = "linear"  # "linear" (projection + linear) | "bilstm" (ASR, SF)
    notes: str = ""
    protocol: str = ""  # the data rules applied, and where they come from
    deviations: tuple[str, ...] = ()  # where this differs from SUPERB's protocol
    folds: dict[str, dict[str, Sequence[dict[str, Any]]]] | None = None  # ER: one per fold
    weight_fn: Callable[[Sequence[dict]], Sequence[float]] | None = None  # balanced sampling
    eos: int | None = None  # CTC targets end with this id; decoding stops at it (s3prl)
    trials: Sequence[tuple[int, str, str]] = ()  # ASV: (1 same / 0 different, name, name)

    @property
    def higher_better(self) -> bool:
        """Whether the primary metric improves upwards (model selection on dev)."""
        return self.metric in ("accuracy", "slot_type_f1", "mtwv")


def hash_unit(text: str) -> float:
    """A stable number in [0, 1) for a string (deterministic held-out splits)."""
    return int(hashlib.sha1(text.encode()).hexdigest()[:12], 16) / 16**12


def split_by_hash(records: Sequence[dict], test_fraction: float) -> dict[str, list[dict]]:
    """Train/test by a hash of each record's name."""
    test = [r for r in records if hash_unit(r["name"]) < test_fraction]
    train = [r for r in records if hash_unit(r["name"]) >= test_fraction]
    return {"train": train, "test": test}


def split_by_group(records: Sequence[dict], key: str, test_fraction: float) -> dict[str, list]:
    """Train/test with whole groups (e.g. speakers) held out: the first groups by hash."""
    groups = sorted({str(r[key]) for r in records}, key=hash_unit)
    if len(groups) < 2:
        raise ValueError(f"a split by {key!r} needs two groups or more, got {groups}")
    num_test = min(max(1, round(test_fraction * len(groups))), len(groups) - 1)
    held_out = set(groups[:num_test])
    return {
        "train": [r for r in records if str(r[key]) not in held_out],
        "test": [r for r in records if str(r[key]) in held_out],
    }


def split_within_groups(records: Sequence[dict], key: str, test_fraction: float) -> dict:
    """Train/test by utterance inside each group: every group has utterances in both."""
    by_group: dict[str, list[dict]] = {}
    for r in records:
        by_group.setdefault(str(r[key]), []).append(r)
    train, test = [], []
    for members in by_group.values():
        members = sorted(members, key=lambda r: hash_unit(r["name"]))
        num_test = min(max(1, round(test_fraction * len(members))), len(members) - 1)
        test += members[:num_test]
        train += members[num_test:]
    return {"train": train, "test": test}


def split_by_field(records: Sequence[dict], key: str) -> dict[str, list[dict]]:
    """Splits named by a record field (train/dev/test, or VoxCeleb's 1/2/3)."""
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for r in records:
        value = str(r.get(key, "")).lower()
        if value not in SPLIT_ALIASES:
            raise ValueError(
                f"record {r.get('name')}: field {key!r} is {value!r}, expected one of "
                f"{sorted(SPLIT_ALIASES)}"
            )
        splits[SPLIT_ALIASES[value]].append(r)
    return splits


def _encoder(vocab: Sequence[str], tokenize: Callable[[dict], list[str]]) -> Callable:
    index = {t: i for i, t in enumerate(vocab)}
    return lambda record: [index[t] for t in tokenize(record)]


# ---------------------------------------------------------------- synthetic (mini-SUPERB)


def synthetic_records(c: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> list[dict]:
    """The mini-SUPERB corpus (generated once under the workdir, then reused)."""
    path = pathlib.Path(c.synth.path or f"superb/synth_{c.synth.num}_seed{c.synth.seed}")
    path = path if path.is_absolute() else pathlib.Path(workdir) / path
    return manifest.read_manifest(synth.ensure_corpus(str(path), c.synth.num, c.synth.seed))


def _classification(
    name: str, splits: dict[str, list[dict]], key: str, names: tuple[str, ...], notes: str
) -> Task:
    """An utterance task with one label group: record[key] indexes `names`."""
    return Task(name, "utterance", "accuracy", splits, lambda r: [r[key]], (names,), notes=notes)


def _phoneme_recognition(
    name: str, splits: dict[str, list[dict]], records: Sequence[dict], notes: str
) -> Task:
    """CTC on the records' espeak phones, PER; the vocabulary is every phone of `records`."""
    vocab = tuple(build_vocab(records))
    tokenize = lambda r: phoneme_tokens(r["phonemes"])
    return Task(name, "ctc", "per", splits, _encoder(vocab, tokenize), (vocab,), notes=notes)


def ks_synth(c: ml_collections.ConfigDict, workdir: str) -> Task:
    """Keyword spotting on the synthetic keywords; test voices unseen in training."""
    records = [r for r in synthetic_records(c, workdir) if r["keyword"] >= 0]
    splits = split_by_group(records, "voice", c.synth.test_fraction)
    notes = "10 espeak-ng keywords; test voices held out"
    return _classification("ks_synth", splits, "keyword", synth.KEYWORDS, notes)


def sid_synth(c: ml_collections.ConfigDict, workdir: str) -> Task:
    """Speaker (voice) identification; split by utterance within each voice."""
    records = synthetic_records(c, workdir)
    splits = split_within_groups(records, "voice", c.synth.test_fraction)
    notes = "8 espeak-ng voices; split by utterance within each voice"
    return _classification("sid_synth", splits, "speaker", synth.VOICES, notes)


def pr_synth(c: ml_collections.ConfigDict, workdir: str) -> Task:
    """Phoneme recognition on espeak's own phonemes; split by file-name hash."""
    records = synthetic_records(c, workdir)
    splits = split_by_hash(records, c.synth.test_fraction)
    notes = "espeak IPA phones, stress dropped; split by file-name hash"
    return _phoneme_recognition("pr_synth", splits, records, notes)


# ---------------------------------------------------------------- alternatives to SUPERB's


def _phonemize(records: list[dict], voice: str, cache_file: pathlib.Path) -> None:
    """Adds espeak phonemes of each transcript to its record, cached in a JSON file."""
    from stackdistill.data.espeak import Speaker

    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    missing = [r for r in records if r["name"] not in cache]
    if missing:
        speaker = Speaker.get()
        for r in missing:
            cache[r["name"]] = speaker.phonemes(r["text"].lower(), voice)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cache))
    for r in records:
        r["phonemes"] = cache[r["name"]]


def pr_espeak(c: ml_collections.ConfigDict, workdir: str) -> Task:
    """PR on LibriSpeech with espeak-ng phonemes of the transcripts (no lexicon set)."""
    from stackdistill.superb.datasets import librispeech

    t = c.pr
    splits = librispeech.read_splits("pr", t.path, None)
    for split, records in splits.items():
        _phonemize(records, t.voice, pathlib.Path(workdir) / "superb" / f"phonemes_{split}.json")
    all_records = [r for records in splits.values() for r in records]
    notes = f"LibriSpeech; phones from espeak-ng {t.voice} (SUPERB: lexicon phones)"
    task = _phoneme_recognition("pr", splits, all_records, notes)
    task.deviations = (
        "phones from espeak-ng, not s3prl's lexicon: PER not comparable with SUPERB "
        "(set config.superb.pr.lexicon)",
    )
    return task


def ks_tfds(c: ml_collections.ConfigDict, workdir: str) -> Task:
    """KS from TFDS speech_commands (v0.02; SUPERB uses v0.01)."""
    from stackdistill.data.sources import TfdsSource

    t = c.ks
    data_dir = t.tfds_dir or None
    splits = {
        name: TfdsSource(t.tfds_name, split, data_dir)
        for name, split in (("train", "train"), ("dev", "validation"), ("test", "test"))
    }
    import tensorflow_datasets as tfds  # importable: TfdsSource has opened the splits

    info = tfds.builder(t.tfds_name, data_dir=data_dir).info
    names = tuple(info.features["label"].names)
    return Task(
        "ks",
        "utterance",
        "accuracy",
        splits,
        lambda r: [int(r["label"])],
        (names,),
        notes=f"TFDS {t.tfds_name}",
        deviations=(
            f"TFDS {t.tfds_name} is Speech Commands v0.02 (SUPERB: v0.01 folders); "
            "no class-balanced sampling, _silence_ as TFDS cuts it",
        ),
    )


def manifest_task(name: str, t: ml_collections.ConfigDict) -> Task:
    """Utterance classification from a labelled JSONL manifest (SID, IC, ER)."""
    records = manifest.read_manifest(t.manifest)
    label_keys = tuple(t.label_keys)
    missing = [k for k in label_keys if any(k not in r for r in records)]
    if missing:
        raise ValueError(f"{t.manifest}: records without the label fields {missing}")
    classes = tuple(tuple(sorted({str(r[k]) for r in records})) for k in label_keys)
    index = [{label: i for i, label in enumerate(names)} for names in classes]
    if t.split_key and all(t.split_key in r for r in records):
        splits = split_by_field(records, t.split_key)
    else:
        splits = split_by_hash(records, t.test_fraction)
    if not splits["test"] or not splits["train"]:
        raise ValueError(f"{t.manifest}: the train or the test split is empty")
    return Task(
        name,
        "utterance",
        "accuracy",
        splits,
        lambda r: [idx[str(r[k])] for idx, k in zip(index, label_keys)],
        classes,
        notes=f"{t.manifest}: labels {', '.join(label_keys)}",
        deviations=(f"a user manifest ({t.manifest}), not the dataset's own lists",),
    )


MINI = {"ks_synth": ks_synth, "sid_synth": sid_synth, "pr_synth": pr_synth}
