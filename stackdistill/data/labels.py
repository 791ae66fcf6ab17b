"""Phoneme labels of the espeak-ng corpora: symbols, the CTC vocabulary, padded label ids.

The manifests hold espeak's IPA ("_" between the phones of a word, " " between espeak's words,
stress marks before stressed syllables); CTC targets are its phones, stress and word boundaries
dropped, in a vocabulary whose id 0 is the blank.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

BLANK = "<blank>"  # CTC blank, id 0
STRESS_MARKS = "ˈˌ"


def phoneme_tokens(phonemes: str) -> list[str]:
    """espeak IPA ("_" inside words, " " between words) -> phones, every stress mark dropped.

    A stress mark is never part of a phone, wherever it stands: stripping it from the ends of
    each phone only (as the tiny teacher once did) would keep "aˈɪ" as a symbol of its own.
    """
    stripped = phonemes.translate({ord(m): None for m in STRESS_MARKS})
    return [p for word in stripped.split() for p in word.split("_") if p]


def build_vocab(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The blank, then every phone of the rows' "phonemes", sorted."""
    symbols = {t for row in rows for t in phoneme_tokens(row["phonemes"])}
    return [BLANK, *sorted(symbols)]


def label_ids(
    phoneme_strings: Sequence[str], vocab: Sequence[str], max_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Phoneme strings -> (ids (B, max_length) int32, paddings (B, max_length) float32).

    Phones outside `vocab` are skipped: a held-out corpus may say one its training corpus never
    did, and a head over `vocab` cannot predict it anyway.
    """
    index = {s: i for i, s in enumerate(vocab)}
    ids = np.zeros((len(phoneme_strings), max_length), np.int32)
    paddings = np.ones((len(phoneme_strings), max_length), np.float32)
    for row, text in enumerate(phoneme_strings):
        tokens = [index[t] for t in phoneme_tokens(str(text)) if t in index]
        if len(tokens) > max_length:
            raise ValueError(f"{len(tokens)} phonemes in {text!r} exceed max_label_length")
        ids[row, : len(tokens)] = tokens
        paddings[row, : len(tokens)] = 0.0
    return ids, paddings
