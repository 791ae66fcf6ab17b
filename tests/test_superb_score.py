"""superb_s against the SUPERB leaderboard's own rows and the score it shows for them."""

import pytest

from stackdistill.superb import score

# superbbenchmark/superbbenchmark.github.io at a35a9ec0636e6f5cb905f304d98ba0c6ab624277,
# src/data/public.json: the rows "FBANK", "HuBERT Base" and "WavLM Large" (the columns of the
# leaderboard's "Paper" subset; QbE's MTWV, stored there in percent, is a fraction here).
BOARD_ROWS = {
    "FBANK": dict(pr=82.01, asr=23.18, ks=41.3826674, qbe=0.58, sid=20.058174, asv=9.56,
                  sd=10.05, er=48.23672168, ic=9.649354219, sf_f1=69.64, sf_cer=52.94),
    "HuBERT Base": dict(pr=5.41, asr=6.42, ks=96.3, qbe=7.359999999999999, sid=81.42, asv=5.11,
                        sd=5.88, er=64.92, ic=98.34, sf_f1=88.53, sf_cer=25.2),
    "WavLM Large": dict(pr=3.06, asr=3.44, ks=97.86, qbe=8.86, sid=95.49, asv=3.77, sd=3.24,
                        er=70.62, ic=99.31, sf_f1=92.21, sf_cer=18.36),
}  # fmt: skip
# The leaderboard's superb_s of these rows, computed by website-react@cacb90e's
# frontend/src/overall_metrics.js (interpolation + task_aggregate) on the "Paper" subset.
BOARD_SCORES = {"FBANK": 0.0, "HuBERT Base": 941.0, "WavLM Large": 1144.5}


def _results(row: dict[str, float]) -> dict[str, dict[str, float]]:
    names = {"pr": "per", "asr": "wer", "ks": "accuracy", "sid": "accuracy", "asv": "eer",
             "sd": "der", "er": "accuracy", "ic": "accuracy"}  # fmt: skip
    out = {task: {names[task]: row[task]} for task in names}
    out["qbe"] = {"mtwv": row["qbe"] / 100}
    out["sf"] = {"slot_type_f1": row["sf_f1"], "slot_value_cer": row["sf_cer"]}
    return out


@pytest.mark.parametrize("name", list(BOARD_ROWS))
def test_score_reproduces_the_leaderboard(name):
    assert score.score(_results(BOARD_ROWS[name])) == pytest.approx(BOARD_SCORES[name], abs=0.05)


def test_score_is_the_leaderboard_formula():
    # one metric by hand: SD at DER 7.835 is half-way between 10.05 and 5.62 -> 500 points
    assert 1000 * score.normalised(score.metrics_of("sd")[0], 7.835) == pytest.approx(500.0)
    # SF: the mean of its two metrics; the task mean is over tasks, not metrics
    results = _results(BOARD_ROWS["FBANK"])
    results["sf"] = {"slot_type_f1": 89.81, "slot_value_cer": 52.94}  # F1 at the topline
    assert score.score(results) == pytest.approx(1000 * 0.5 / 10)
    assert score.score(results, tasks=["sf"]) == pytest.approx(500.0)
    # reference points are the leaderboard's per-task best, not one model's
    assert {m.key for m in score.COLUMNS} >= {"PR_per_public", "QbE_mtwv_public", "SV_eer_public"}
    assert len(score.TASKS) == 10
