"""SUPERB metrics: edit distance, PER/WER over a whole set, accuracy, greedy CTC decoding.

The one home of these: the SUPERB heads (superb/heads.py) and the layer probes
(superb/probes.py) both score with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance (substitutions, deletions, insertions all cost 1)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_token in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp_token in enumerate(hypothesis, start=1):
            current[j] = min(
                previous[j] + 1,  # deletion
                current[j - 1] + 1,  # insertion
                previous[j - 1] + (ref_token != hyp_token),  # substitution or match
            )
        previous = current
    return previous[-1]


def error_rate(references: Sequence[Sequence], hypotheses: Sequence[Sequence]) -> float:
    """Total edit distance over total reference length (PER on phones, WER on words)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError("the references are all empty: the error rate is undefined")
    return sum(edit_distance(r, h) for r, h in zip(references, hypotheses)) / total


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """WER of transcripts, words split on whitespace."""
    return error_rate([r.split() for r in references], [h.split() for h in hypotheses])


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Fraction of rows predicted right; a row of several labels counts only if all are right."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ")
    if labels.shape[0] == 0:
        raise ValueError("accuracy of an empty set is undefined")
    correct = labels == predictions
    if correct.ndim > 1:
        correct = correct.reshape(len(correct), -1).all(axis=1)
    return float(correct.mean())


def ctc_greedy_decode(ids_bt: np.ndarray, lengths_b: np.ndarray, blank: int = 0) -> list[list[int]]:
    """Best-path decoding: per utterance, merge repeated ids, then drop blanks."""
    ids_bt, lengths_b = np.asarray(ids_bt), np.asarray(lengths_b)
    decoded = []
    for ids, length in zip(ids_bt, lengths_b):
        ids = ids[: int(length)]
        if ids.size == 0:
            decoded.append([])
            continue
        keep = np.concatenate([[True], ids[1:] != ids[:-1]]) & (ids != blank)
        decoded.append(ids[keep].tolist())
    return decoded


def unpad(ids_bn: np.ndarray, paddings_bn: np.ndarray) -> list[list[int]]:
    """Padded label rows (paddings 1.0 where there is no token) -> token lists."""
    return [row[p == 0].tolist() for row, p in zip(np.asarray(ids_bn), np.asarray(paddings_bn))]
