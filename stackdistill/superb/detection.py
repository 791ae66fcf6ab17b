"""SUPERB's detection metrics: EER (ASV), DER (SD) and MTWV (QbE), in numpy.

- `equal_error_rate`: s3prl's ASV metric (s3prl/downstream/sv_voxceleb1/utils.py `EER`, s3prl
  0.4.18, commit ec8064b5): the ROC curve of the trial scores, linearly interpolated, at the
  point where the miss rate equals the false-alarm rate (sklearn's roc_curve + brentq there;
  our own piecewise-linear root here, same curve).
- `diarization_error_rate`: what s3prl's SD scoring reports (s3prl/downstream/diarization/
  score.sh: dscore's score.py on the RTTM files, its default collar 0 s, overlapped speech
  scored): (missed + false-alarm + confused speaker time) / reference speech time, speakers of
  the hypothesis mapped one-to-one onto the reference's to maximise their overlap (NIST
  md-eval's rule). `collar` (seconds) removes +-collar around every reference boundary.
- `max_term_weighted_value`: the MTWV that QUESST 2014's scoring script reports
  (quesst14Database/scoring/score-TWV-Cnxe.sh, run with default score -10 as
  s3prl/downstream/docs/superb.md says): a detection is a (query, utterance) pair; for each
  threshold, TWV = 1 - mean over queries with at least one true utterance of
  (P_miss + beta * P_fa), P_fa over that query's non-target utterances; MTWV is the maximum over
  thresholds. beta = C_fa / C_miss * (1 / P_target - 1) with QUESST 2014's P_target 0.0008,
  C_miss 1, C_fa 0.1 (β = 124.9) — recalled from the QUESST 2014 evaluation plan; the scoring
  jar itself was not readable from this workplace, so the constant is a parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

Segment = tuple[float, float, str]  # (start s, end s, speaker)

# QUESST 2014 TWV costs (see the module docstring for their provenance).
QUESST_P_TARGET, QUESST_C_MISS, QUESST_C_FA = 0.0008, 1.0, 0.1
QUESST_BETA = QUESST_C_FA / QUESST_C_MISS * (1.0 / QUESST_P_TARGET - 1.0)
QUESST_DEFAULT_SCORE = -10.0  # score-TWV-Cnxe.sh's third argument in SUPERB's recipe


# --------------------------------------------------------------------------------- EER


def roc_points(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(false-alarm rates, hit rates) for every threshold, from (0, 0) up to (1, 1)."""
    labels, scores = np.asarray(labels, bool), np.asarray(scores, np.float64)
    if labels.all() or not labels.any():
        raise ValueError("EER needs target and non-target trials")
    order = np.argsort(-scores, kind="stable")
    labels, scores = labels[order], scores[order]
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]  # one point per distinct score
    hits, false_alarms = np.cumsum(labels)[last_of_tie], np.cumsum(~labels)[last_of_tie]
    tpr = np.r_[0.0, hits / labels.sum()]
    fpr = np.r_[0.0, false_alarms / (~labels).sum()]
    return fpr, tpr


def equal_error_rate(labels: Sequence[int], scores: Sequence[float]) -> float:
    """The rate x at which the interpolated ROC has miss rate 1 - tpr(x) equal to x."""
    fpr, tpr = roc_points(labels, scores)
    gap = 1.0 - fpr - tpr  # decreasing along the curve, from 1 to -1
    for i in range(len(fpr) - 1):
        if gap[i] >= 0.0 >= gap[i + 1]:
            if gap[i] == gap[i + 1]:  # both zero
                return float(fpr[i])
            t = gap[i] / (gap[i] - gap[i + 1])
            return float(fpr[i] + t * (fpr[i + 1] - fpr[i]))
    raise AssertionError("the ROC curve crosses the EER line")


# --------------------------------------------------------------------------------- DER


def read_rttm(lines: Iterable[str]) -> dict[str, list[Segment]]:
    """SPEAKER lines of an RTTM file -> {recording: [(start, end, speaker)]}."""
    out: dict[str, list[Segment]] = {}
    for line in lines:
        fields = line.split()
        if not fields or fields[0] != "SPEAKER":
            continue
        start, duration = float(fields[3]), float(fields[4])
        out.setdefault(fields[1], []).append((start, start + duration, fields[7]))
    return out


def _scored_regions(reference: Sequence[Segment], collar: float) -> list[tuple[float, float]]:
    """The time not within +-collar of a reference boundary (all time when collar is 0)."""
    if collar <= 0:
        return [(0.0, float("inf"))]
    cuts = sorted((max(0.0, t - collar), t + collar) for s, e, _ in reference for t in (s, e))
    regions, cursor = [], 0.0
    for a, b in cuts:
        if a > cursor:
            regions.append((cursor, a))
        cursor = max(cursor, b)
    return [*regions, (cursor, float("inf"))]


def _intervals(reference, hypothesis, regions):
    """Elementary intervals (duration, ref speakers, hyp speakers) inside the scored regions."""
    bounds = {t for s, e, _ in (*reference, *hypothesis) for t in (s, e)}
    bounds |= {t for a, b in regions for t in (a, b) if np.isfinite(t)}
    bounds = sorted(bounds)
    out = []
    for a, b in zip(bounds, bounds[1:]):
        mid = (a + b) / 2
        if b <= a or not any(lo <= mid < hi for lo, hi in regions):
            continue
        ref = frozenset(k for s, e, k in reference if s <= mid < e)
        hyp = frozenset(k for s, e, k in hypothesis if s <= mid < e)
        out.append((b - a, ref, hyp))
    return out


def _best_mapping(intervals, ref_speakers, hyp_speakers) -> dict[str, str]:
    """hyp speaker -> ref speaker, one-to-one, maximising the time both speak."""
    overlap = {
        (h, r): sum(d for d, ref, hyp in intervals if r in ref and h in hyp)
        for h in hyp_speakers
        for r in ref_speakers
    }
    from scipy.optimize import linear_sum_assignment

    hyps, refs = sorted(hyp_speakers), sorted(ref_speakers)
    if not hyps or not refs:
        return {}
    gain = np.array([[overlap[h, r] for r in refs] for h in hyps])
    rows, cols = linear_sum_assignment(gain, maximize=True)
    return {hyps[i]: refs[j] for i, j in zip(rows, cols) if gain[i, j] > 0}


def der_components(
    reference: Sequence[Segment], hypothesis: Sequence[Segment], collar: float = 0.0
) -> dict[str, float]:
    """Seconds of reference speech, missed, false alarm and speaker confusion of one recording."""
    intervals = _intervals(reference, hypothesis, _scored_regions(reference, collar))
    mapping = _best_mapping(intervals, {k for *_, k in reference}, {k for *_, k in hypothesis})
    total = missed = false_alarm = confusion = 0.0
    for d, ref, hyp in intervals:
        n_ref, n_hyp = len(ref), len(hyp)
        correct = len({mapping.get(h) for h in hyp} & ref)
        total += d * n_ref
        missed += d * max(0, n_ref - n_hyp)
        false_alarm += d * max(0, n_hyp - n_ref)
        confusion += d * (min(n_ref, n_hyp) - correct)
    return {"total": total, "missed": missed, "false_alarm": false_alarm, "confusion": confusion}


def diarization_error_rate(
    reference: Mapping[str, Sequence[Segment]],
    hypothesis: Mapping[str, Sequence[Segment]],
    collar: float = 0.0,
) -> float:
    """DER over every recording of `reference` (errors summed, then divided by speech time)."""
    sums = {"total": 0.0, "missed": 0.0, "false_alarm": 0.0, "confusion": 0.0}
    for recording, ref in reference.items():
        parts = der_components(ref, hypothesis.get(recording, ()), collar)
        sums = {k: sums[k] + parts[k] for k in sums}
    if sums["total"] <= 0:
        raise ValueError("the reference holds no speech: DER is undefined")
    return (sums["missed"] + sums["false_alarm"] + sums["confusion"]) / sums["total"]


def frames_to_segments(active_tk: np.ndarray, frame_seconds: float, name: str) -> list[Segment]:
    """(frames, speakers) 0/1 activity -> segments, speakers named `name`_k (make_rttm.py's)."""
    segments = []
    for k, frames in enumerate(np.asarray(active_tk, np.int8).T):
        changes = np.flatnonzero(np.diff(np.r_[0, frames, 0]))
        for s, e in zip(changes[::2], changes[1::2]):
            segments.append((s * frame_seconds, e * frame_seconds, f"{name}_{k}"))
    return segments


# -------------------------------------------------------------------------------- MTWV


def max_term_weighted_value(
    scores: Mapping[tuple[str, str], float],
    queries: Sequence[str],
    utterances: Sequence[str],
    targets: Mapping[str, Iterable[str]],
    beta: float = QUESST_BETA,
    default_score: float = QUESST_DEFAULT_SCORE,
) -> tuple[float, float]:
    """(MTWV, its threshold) of detection scores {(query, utterance): score}.

    Every (query, utterance) trial is scored; a trial missing from `scores` gets
    `default_score`. A trial is detected when its score is >= the threshold. Queries without
    any target utterance do not count (their P_miss is undefined).
    """
    utterance_index = {u: i for i, u in enumerate(utterances)}
    rows, is_target = [], []
    for q in queries:
        true = {utterance_index[u] for u in targets.get(q, ()) if u in utterance_index}
        if not true:
            continue
        row = np.full(len(utterances), default_score, np.float64)
        for u, i in utterance_index.items():
            row[i] = scores.get((q, u), default_score)
        rows.append(row)
        is_target.append(np.isin(np.arange(len(utterances)), list(true)))
    if not rows:
        raise ValueError("no query has a target utterance: MTWV is undefined")
    scores_qu, target_qu = np.stack(rows), np.stack(is_target)
    n_true = target_qu.sum(1, keepdims=True)
    n_false = np.maximum((~target_qu).sum(1, keepdims=True), 1)
    # TWV(t) = mean_q hits_q(t) / n_true_q - beta * mean_q false_alarms_q(t) / n_false_q: a sum
    # of per-trial weights over the trials scored >= t.
    weights = np.where(target_qu, 1.0 / n_true, -beta / n_false) / len(rows)
    order = np.argsort(-scores_qu.ravel(), kind="stable")
    sorted_scores = scores_qu.ravel()[order]
    twv = np.cumsum(weights.ravel()[order])
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    twv, thresholds = twv[last_of_tie], sorted_scores[last_of_tie]
    best = int(np.argmax(twv))
    if twv[best] <= 0.0:  # no threshold beats detecting nothing (TWV 0)
        return 0.0, float("inf")
    return float(twv[best]), float(thresholds[best])


__all__ = [
    "der_components",
    "diarization_error_rate",
    "equal_error_rate",
    "frames_to_segments",
    "max_term_weighted_value",
    "read_rttm",
    "roc_points",
]
