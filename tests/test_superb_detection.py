"""EER, DER and MTWV on cases worked out by hand."""

import pytest

from stackdistill.superb import detection


def test_eer_by_hand():
    # targets 0.9 0.6 0.4, non-targets 0.8 0.5 0.3 0.2: ROC (0,0) (0,1/3) (1/4,1/3) (1/4,2/3)
    # (1/2,2/3) (1/2,1) ...; the segment at hit rate 2/3 meets miss = false alarm at x = 1/3.
    labels = [1, 0, 1, 0, 1, 0, 0]
    scores = [0.9, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2]
    assert detection.equal_error_rate(labels, scores) == pytest.approx(1 / 3)
    # a tie between a target and a non-target: the diagonal (0,1/2)-(1/2,1) crosses at 1/4
    assert detection.equal_error_rate([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.25)
    assert detection.equal_error_rate([1, 0], [0.9, 0.1]) == 0.0  # separable
    with pytest.raises(ValueError, match="target and non-target"):
        detection.equal_error_rate([1, 1], [0.2, 0.3])


REFERENCE = {
    "rec1": [(0.0, 4.0, "A"), (3.0, 6.0, "B")],  # 1 s of overlap
    "rec2": [(0.0, 2.0, "C"), (2.0, 4.0, "D")],
}
HYPOTHESIS = {
    # one speaker at a time through the overlap (0.5 s + 0.5 s missed), 1 s false alarm
    "rec1": [(0.0, 3.5, "s1"), (3.5, 6.0, "s2"), (7.0, 8.0, "s2")],
    # x maps to C (2 s together), so x's second at 2-3 s is confused with D
    "rec2": [(0.0, 3.0, "x"), (3.0, 4.0, "y")],
}


def test_der_by_hand():
    rec1 = detection.der_components(REFERENCE["rec1"], HYPOTHESIS["rec1"])
    assert rec1 == pytest.approx({"total": 7.0, "missed": 1.0, "false_alarm": 1.0, "confusion": 0})
    rec2 = detection.der_components(REFERENCE["rec2"], HYPOTHESIS["rec2"])
    assert rec2["confusion"] == pytest.approx(1.0) and rec2["total"] == pytest.approx(4.0)
    assert detection.diarization_error_rate(REFERENCE, HYPOTHESIS) == pytest.approx(3 / 11)
    # collar 0.5 s: scored [0.5, 2.5], [4.5, 5.5], [6.5, inf) of rec1: 3 s of speech, 1 s FA
    one = {"rec1": REFERENCE["rec1"]}
    assert detection.diarization_error_rate(one, HYPOTHESIS, collar=0.5) == pytest.approx(1 / 3)
    # speaker names do not matter, nor does a recording the hypothesis lacks (all missed)
    renamed = {"rec2": [(s, e, {"x": "q", "y": "r"}[k]) for s, e, k in HYPOTHESIS["rec2"]]}
    assert detection.diarization_error_rate({"rec2": REFERENCE["rec2"]}, renamed) == 0.25
    assert detection.diarization_error_rate(REFERENCE, {}) == 1.0


def test_rttm_and_frames():
    lines = [
        "SPEAKER rec1 1    0.00    4.00 <NA> <NA> A <NA>",
        "SPEAKER rec1 1 3.00 3.00 <NA> <NA> B <NA>",
    ]
    assert detection.read_rttm(lines) == {"rec1": REFERENCE["rec1"]}
    active = [[1, 0], [1, 1], [0, 1], [0, 0], [1, 0]]
    assert detection.frames_to_segments(active, 0.5, "r") == [
        (0.0, 1.0, "r_0"), (2.0, 2.5, "r_0"), (0.5, 1.5, "r_1")]  # fmt: skip


def test_mtwv_two_queries_by_hand():
    utterances = ["u1", "u2", "u3", "u4"]
    targets = {"q1": ["u1"], "q2": ["u2", "u3"]}  # q3 has none: it does not count
    scores = {("q1", "u1"): 0.9, ("q1", "u2"): 0.2, ("q1", "u3"): 0.1, ("q1", "u4"): 0.8,
              ("q2", "u1"): 0.3, ("q2", "u2"): 0.7, ("q2", "u3"): 0.4}  # fmt: skip
    # beta 1, threshold 0.4: q1 finds u1 and falsely u4 (P_fa 1/3), q2 finds u2 and u3:
    # TWV = 1 - mean(0 + 1/3, 0 + 0) = 5/6, the best threshold.
    mtwv, threshold = detection.max_term_weighted_value(
        scores, ["q1", "q2", "q3"], utterances, targets, beta=1.0
    )
    assert mtwv == pytest.approx(5 / 6) and threshold == 0.4
    # QUESST's beta (124.9): any false alarm costs more than a query: detect q1's u1 only,
    # TWV = 1 - mean(0, 1) = 0.5 at threshold 0.9
    mtwv, threshold = detection.max_term_weighted_value(scores, ["q1", "q2"], utterances, targets)
    assert mtwv == pytest.approx(0.5) and threshold == 0.9
    assert detection.QUESST_BETA == pytest.approx(124.9)
    # nothing worth detecting: MTWV 0 (no detection at all)
    flipped = {k: -v for k, v in scores.items()}
    assert detection.max_term_weighted_value(flipped, ["q1"], utterances, targets)[0] == 0.0
