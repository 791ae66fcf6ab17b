"""SUPERB QbE: subsequence DTW of query features over utterance features, scored by MTWV.

No head is trained. s3prl's protocol (s3prl 0.4.18, commit ec8064b5,
s3prl/downstream/quesst14_dtw/config.yaml and expert.py):
- features of one hidden state, standardised per dimension with the mean and (unbiased) std of
  every frame of the queries and utterances (`feature_normalization: True`);
- distance `cosine_exp` (exp(cosine distance) - 1), each row (query frame) min-max normalised
  (`minmax_norm: True`);
- DTW with the `asymmetric` step pattern, open begin and open end (`subsequence: True`): the
  query advances one frame per step, the utterance 0, 1 or 2; the cost is divided by the
  query's length (dtw-python's normalizedDistance); the score is minus that cost;
- queries shorter than 5 frames score 0 on every utterance; each query's scores are z-normalised
  over the utterances (expert.py `log_records`);
- SUPERB runs every hidden state on dev and reports the test MTWV of the best one
  (s3prl/downstream/docs/superb.md, "Dynamic Time Warping"); `config.superb.qbe.layer` = "best"
  does that, an integer evaluates that hidden state only.
MTWV follows QUESST's scoring (superb/detection.py): non-English trials get the default -10.
Each layer's dev and test MTWV are kept in `<upstream>/heads/qbe/layers.json`, so a rerun skips
the layers already scored.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from stackdistill.superb import detection

MIN_QUERY_FRAMES = 5  # expert.py: "Do not consider too short queries"


def cosine_exp(query_td: np.ndarray, doc_sd: np.ndarray) -> np.ndarray:
    """exp(1 - cosine similarity) - 1 between every query frame and every utterance frame."""
    q = query_td / np.maximum(np.linalg.norm(query_td, axis=1, keepdims=True), 1e-12)
    d = doc_sd / np.maximum(np.linalg.norm(doc_sd, axis=1, keepdims=True), 1e-12)
    return np.exp(1.0 - q @ d.T) - 1.0


def minmax_rows(dist: np.ndarray) -> np.ndarray:
    """Each row mapped to [0, 1] (expert.py `match`, minmax_norm)."""
    low, high = dist.min(1, keepdims=True), dist.max(1, keepdims=True)
    return (dist - low) / np.clip(high - low, 1e-9, np.inf)


def subsequence_dtw(dist: np.ndarray) -> float:
    """Normalised cost of the best asymmetric open-begin, open-end path through `dist` (n, m)."""
    g = dist[0].astype(np.float64)
    for row in dist[1:]:
        best = g.copy()
        best[1:] = np.minimum(best[1:], g[:-1])
        best[2:] = np.minimum(best[2:], g[:-2])
        g = row + best
    return float(g.min() / len(dist))


def query_scores(query: np.ndarray, docs: Sequence[np.ndarray]) -> np.ndarray:
    """z-normalised matching scores of one query against every utterance."""
    if len(query) < MIN_QUERY_FRAMES:
        scores = np.zeros(len(docs))
    else:
        scores = np.array([-subsequence_dtw(minmax_rows(cosine_exp(query, d))) for d in docs])
    return (scores - scores.mean()) / np.clip(scores.std(), 1e-9, np.inf)


def standardise(sequences: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Every frame minus the mean over all frames, over their std (torch's, unbiased)."""
    frames = np.concatenate(sequences, axis=0).astype(np.float64)
    mean, std = frames.mean(0), np.clip(frames.std(0, ddof=1), 1e-9, None)
    return [((s - mean) / std).astype(np.float32) for s in sequences]


def split_mtwv(
    queries: Sequence[dict],
    docs: Sequence[dict],
    features: dict[str, np.ndarray],
    tick: Callable[[], None] = lambda: None,
    beta: float = detection.QUESST_BETA,
) -> float:
    """MTWV of one split's queries against the utterances, on one layer's features."""
    searched_q = [q for q in queries if q["english"]]
    searched_d = [d for d in docs if d["english"]]
    normed = standardise([features[r["name"]] for r in (*searched_q, *searched_d)])
    q_feats, d_feats = normed[: len(searched_q)], normed[len(searched_q) :]
    scores = {}
    for q, feats in zip(searched_q, q_feats):
        for d, s in zip(searched_d, query_scores(feats, d_feats)):
            scores[q["name"], d["name"]] = float(s)
        tick()
    mtwv, _ = detection.max_term_weighted_value(
        scores,
        [q["name"] for q in queries],
        [d["name"] for d in docs],
        {q["name"]: q["targets"] for q in queries},
        beta=beta,
    )
    return mtwv


def _load_cache(path: pathlib.Path, key: dict[str, Any]) -> dict[str, dict[str, float]]:
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved["layers"]
    return {}


def evaluate(
    splits: dict[str, list[dict]],
    extract: Callable[[list[dict]], dict[str, np.ndarray]],
    num_hidden: int,
    layer: int | str,
    cache_file: pathlib.Path | None,
    cache_key: dict[str, Any],
    progress: str | None = None,
    beta: float = detection.QUESST_BETA,
) -> dict[str, Any]:
    """Dev and test MTWV per layer tried; the kept layer is the best on dev (or the one given).

    `extract(records)` -> {name: (L+1, T, D) features} of the English records.
    """
    start = time.perf_counter()
    layers = list(range(num_hidden)) if layer == "best" else [int(layer) % num_hidden]
    searched = [r for k in ("dev", "test", "docs") for r in splits[k] if r["english"]]
    done = _load_cache(cache_file, cache_key) if cache_file else {}
    todo = [k for k in layers if str(k) not in done]
    bar = None
    tick: Callable[[], Any] = lambda: None
    if todo:
        features = extract(searched)
        if progress is not None:
            from tqdm.auto import tqdm

            per_layer = sum(q["english"] for k in ("dev", "test") for q in splits[k])
            bar = tqdm(total=per_layer * len(todo), desc=progress, mininterval=2.0)
            tick = lambda: bar.update(1)
        for k in todo:
            one_layer = {name: f[k] for name, f in features.items()}
            done[str(k)] = {
                split: split_mtwv(splits[split], splits["docs"], one_layer, tick, beta)
                for split in ("dev", "test")
            }
            if cache_file is not None:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                cache_file.write_text(json.dumps({"key": cache_key, "layers": done}))
    if bar is not None:
        bar.close()
    best = max(layers, key=lambda k: (done[str(k)]["dev"], -k))
    weights = np.zeros(num_hidden)
    weights[best] = 1.0
    return {
        "layer": best,
        "dev": done[str(best)]["dev"],
        "test": done[str(best)]["test"],
        "per_layer": {k: done[str(k)] for k in map(str, layers)},
        "layer_weights": weights.tolist(),
        "seconds": time.perf_counter() - start,
        "resumed_from": len(layers) - len(todo) if len(todo) < len(layers) else None,
    }
