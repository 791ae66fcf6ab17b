"""Layer-wise linear probes of an encoder: what each hidden state holds.

Speaker and keyword: ridge regression onto one-hot classes from standardised mean-pooled
frames. Phonemes: a linear CTC head trained on frozen frames, scored by greedy phoneme error
rate. Every score carries a 95% bootstrap interval over the scored utterances, and the
bootstraps share their resamples across layers, so layer differences are paired.
The tiny teacher (`stackdistill.tiny_teacher`) writes its probe table with these; the heads,
pooling and metrics are SUPERB's (superb/heads.py, features.py, metrics.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from stackdistill.data.labels import label_ids
from stackdistill.models import Encoder, EncoderConfig
from stackdistill.superb import metrics
from stackdistill.superb.features import mean_pool
from stackdistill.superb.heads import Params, ctc_head, ctc_loss

log = logging.getLogger("stackdistill")


def layer_features(
    cfg: EncoderConfig, encoder_params: Params, rows: Sequence[dict[str, Any]], max_samples: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every hidden state of the rows' audio: (L+1, N, T, D) float16 and the mask (N, T)."""
    from stackdistill.data import audio, batching

    @jax.jit
    def fn(params, wav, lengths):
        out = Encoder(cfg).apply({"params": params}, wav, lengths)
        return out.hidden_states, out.mask

    hidden, masks = [], []
    for start in range(0, len(rows), 16):
        examples = [
            {"audio": audio.load(r, np.random.default_rng(0), max_samples), "labels": {}}
            for r in rows[start : start + 16]
        ]
        batch = batching.pad_batch(examples, max_samples, ())
        hidden_lbtd, mask_bt = fn(encoder_params, batch["audio"], batch["lengths"])
        hidden.append(np.asarray(hidden_lbtd, np.float16))
        masks.append(np.asarray(mask_bt))
    return np.concatenate(hidden, axis=1), np.concatenate(masks)


def ridge_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, alpha: float
) -> np.ndarray:
    """Closed-form ridge regression onto one-hot classes (standardised features): test labels."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6

    def design(x):
        return np.concatenate([(x - mean) / std, np.ones((len(x), 1))], axis=1).astype(np.float64)

    a, targets = design(x_train), np.eye(int(y_train.max()) + 1)[y_train]
    weights = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ targets)
    return np.argmax(design(x_test) @ weights, axis=1)


def ridge_accuracy(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, alpha: float
) -> float:
    """Closed-form ridge regression onto one-hot classes (standardised features): accuracy."""
    return float(np.mean(ridge_predict(x_train, y_train, x_test, alpha) == y_test))


def bootstrap_indices(num_items: int, num_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """(num_resamples, num_items) item indices drawn with replacement; shared across layers."""
    return np.random.default_rng(seed).integers(0, num_items, (num_resamples, num_items))


def bootstrap_ci(
    numerators: np.ndarray,
    denominators: np.ndarray | None = None,
    indices: np.ndarray | None = None,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of sum(num) / sum(den) over utterances resampled with replacement.

    Accuracy: numerators = 1 for a right answer, denominators 1. PER: edits per utterance over
    its reference length. The statistic on a 1-D numerators array; a leading axis (layers)
    gives one interval per row, from the same resamples."""
    num = np.asarray(numerators, np.float64)
    den = np.ones_like(num) if denominators is None else np.broadcast_to(denominators, num.shape)
    if indices is None:
        indices = bootstrap_indices(num.shape[-1])
    stats = num[..., indices].sum(-1) / np.maximum(den[..., indices].sum(-1), 1e-12)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(stats, [tail, 100 - tail], axis=-1)
    if np.ndim(lo) == 0:
        return float(lo), float(hi)
    return list(zip(lo.tolist(), hi.tolist()))


def _phoneme_edits(
    logits_ntv: np.ndarray, mask_nt: np.ndarray, ids: np.ndarray, paddings: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(edit distance, reference length) per utterance of greedy CTC decoding (blank 0)."""
    hyps = metrics.ctc_greedy_decode(np.argmax(logits_ntv, -1), np.sum(mask_nt, -1))
    refs = metrics.unpad(ids, paddings)
    edits = np.array([metrics.edit_distance(r, h) for r, h in zip(refs, hyps)], np.float64)
    return edits, np.array([len(r) for r in refs], np.float64)


def _phoneme_error(
    logits_ntv: np.ndarray, mask_nt: np.ndarray, ids: np.ndarray, paddings: np.ndarray
) -> float:
    """PER of greedy CTC decoding (blank 0) against the padded label rows."""
    hyps = metrics.ctc_greedy_decode(np.argmax(logits_ntv, -1), np.sum(mask_nt, -1))
    return metrics.error_rate(metrics.unpad(ids, paddings), hyps)


def ctc_probe_edits(
    x_ntd: np.ndarray,
    mask_nt: np.ndarray,
    ids: np.ndarray,
    paddings: np.ndarray,
    num_train: int,
    num_labels: int,
    c: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """A linear CTC probe trained on rows :num_train; (edits, reference lengths) of the rest."""
    valid = x_ntd[:num_train][mask_nt[:num_train]].astype(np.float32)
    mean, std = valid.mean(0), valid.std(0) + 1e-6
    x_ntd = jnp.asarray((x_ntd.astype(np.float32) - mean) / std)
    mask_j, ids_j, paddings_j = jnp.asarray(mask_nt), jnp.asarray(ids), jnp.asarray(paddings)
    params = ctc_head(jax.random.key(c.seed), x_ntd.shape[-1], num_labels)
    tx = optax.adam(c.ctc_learning_rate)

    @jax.jit
    def step(params, opt_state, idx):
        def loss_fn(p):
            logits = x_ntd[idx] @ p["kernel"] + p["bias"]
            return ctc_loss(logits, mask_j[idx], ids_j[idx], paddings_j[idx])

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    opt_state, rng = tx.init(params), np.random.default_rng(c.seed)
    for _ in range(c.ctc_steps):
        params, opt_state = step(params, opt_state, rng.integers(0, num_train, c.ctc_batch))
    logits = np.asarray(x_ntd[num_train:] @ params["kernel"] + params["bias"])
    return _phoneme_edits(logits, mask_nt[num_train:], ids[num_train:], paddings[num_train:])


def ctc_probe_error(
    x_ntd: np.ndarray,
    mask_nt: np.ndarray,
    ids: np.ndarray,
    paddings: np.ndarray,
    num_train: int,
    num_labels: int,
    c: Any,
) -> float:
    """Phoneme error rate on rows num_train: of a linear CTC probe trained on the rows before."""
    edits, lengths = ctc_probe_edits(x_ntd, mask_nt, ids, paddings, num_train, num_labels, c)
    return float(edits.sum() / lengths.sum())


def ridge_profile(
    pooled_lnd: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, alpha: float
) -> np.ndarray:
    """(L, num test) 1/0: whether layer l's ridge probe (fit on `train` rows) gets a row right."""
    return np.stack(
        [ridge_predict(x[train], labels[train], x[test], alpha) == labels[test] for x in pooled_lnd]
    ).astype(np.float64)


def _scores(
    num_ln: np.ndarray, den_n: np.ndarray, higher_is_better: bool, seed: int
) -> list[dict[str, Any]]:
    """Per layer: the statistic, its 95% interval, and the paired interval of (layer - best)."""
    indices = bootstrap_indices(num_ln.shape[1], seed=seed)
    values = num_ln.sum(1) / den_n.sum()
    best = int(np.argmax(values) if higher_is_better else np.argmin(values))
    return [
        {
            "value": float(values[layer]),
            "ci": bootstrap_ci(num_ln[layer], den_n, indices),
            "minus_best_ci": bootstrap_ci(num_ln[layer] - num_ln[best], den_n, indices),
        }
        for layer in range(len(num_ln))
    ]


def probe_layers(
    hidden: np.ndarray,
    mask: np.ndarray,
    rows: Sequence[dict[str, Any]],
    vocab: Sequence[str],
    config: ml_collections.ConfigDict,
    heads: Params | None = None,
) -> list[dict[str, Any]]:
    """Per layer on held-out rows: ridge speaker and keyword accuracy, linear-CTC phoneme
    error rate, each with its 95% bootstrap interval (`*_ci`) and the paired interval of its
    difference from the best layer (`*_minus_best_ci`: excludes 0 when the layer is worse
    beyond the probe's noise); with `heads`, also the trained heads' own scores (last entry)."""
    c = config.probe
    ids, paddings = label_ids([r["phonemes"] for r in rows], vocab, config.max_label_length)
    speakers = np.array([int(r["speaker"]) for r in rows])
    keywords = np.array([int(r.get("keyword", -1)) for r in rows])
    n = int(round(c.train_fraction * len(rows)))
    train, test = np.arange(n), np.arange(n, len(rows))
    pooled = np.stack([np.asarray(mean_pool(jnp.asarray(x, jnp.float32), mask)) for x in hidden])
    probes = {"speaker": ridge_profile(pooled, speakers, train, test, c.ridge_alpha)}
    probes["speaker"] = _scores(probes["speaker"], np.ones(len(test)), True, c.seed)
    said = keywords >= 0
    if said[train].any() and said[test].any():
        kw_correct = ridge_profile(
            pooled, keywords, train[said[train]], test[said[test]], c.ridge_alpha
        )
        probes["keyword"] = _scores(kw_correct, np.ones(kw_correct.shape[1]), True, c.seed)
    edits = [ctc_probe_edits(x, mask, ids, paddings, n, len(vocab), c) for x in hidden]
    lengths = edits[0][1]
    probes["phoneme_error"] = _scores(np.stack([e for e, _ in edits]), lengths, False, c.seed)
    table = []
    for layer in range(len(hidden)):
        row: dict[str, Any] = {"layer": layer}
        for name, scores in probes.items():
            key = (
                "speaker_acc" if name == "speaker" else "keyword_acc" if name == "keyword" else name
            )
            s = scores[layer]
            row.update(
                {key: s["value"], f"{key}_ci": s["ci"], f"{key}_minus_best_ci": s["minus_best_ci"]}
            )
        table.append(row)
        log.info(
            "probe layer %d: %s",
            layer,
            {k: round(v, 3) for k, v in row.items() if isinstance(v, float)},
        )
    if heads is not None:
        x_spk = mean_pool(jnp.asarray(hidden[config.speaker_layer][n:], jnp.float32), mask[n:])
        spk_logits = x_spk @ heads["speaker"]["kernel"] + heads["speaker"]["bias"]
        x_ctc = jnp.asarray(hidden[config.ctc_layer][n:], jnp.float32)
        logits = np.asarray(x_ctc @ heads["ctc"]["kernel"] + heads["ctc"]["bias"])
        head_edits, head_lengths = _phoneme_edits(logits, mask[n:], ids[n:], paddings[n:])
        correct = (np.argmax(np.asarray(spk_logits), -1) == speakers[n:]).astype(np.float64)
        table.append(
            {
                "layer": "heads",
                "speaker_acc": float(correct.mean()),
                "speaker_acc_ci": bootstrap_ci(correct),
                "phoneme_error": float(head_edits.sum() / head_lengths.sum()),
                "phoneme_error_ci": bootstrap_ci(head_edits, head_lengths),
            }
        )
    return table


PROBES = (
    ("speaker_acc", "speaker acc", True),
    ("keyword_acc", "keyword acc", True),
    ("phoneme_error", "phoneme error", False),
)


def tied_with_best(table: Sequence[dict[str, Any]], key: str) -> list[int]:
    """Layers whose paired interval of (layer - best layer) contains 0: the probe's peak."""
    tied = []
    for row in table:
        interval = row.get(f"{key}_minus_best_ci")
        if row["layer"] != "heads" and interval is not None and interval[0] <= 0 <= interval[1]:
            tied.append(row["layer"])
    return tied


def _cell(row: dict[str, Any] | None, key: str, tied: list[int]) -> str:
    if not row or key not in row:
        return "-"
    lo, hi = row[f"{key}_ci"]
    mark = "**" if row["layer"] in tied else ""
    return f"{mark}{row[key]:.2f}{mark} [{lo:.2f}, {hi:.2f}]"


def probe_markdown(tables: dict[str, list[dict[str, Any]]], num_train: int, num_test: int) -> str:
    """The probe tables side by side, one row per layer, with 95% intervals; in bold the
    layers not distinguishable from the best one (paired bootstrap over utterances)."""
    names = list(tables)
    present = [(k, t, h) for k, t, h in PROBES if any(k in r for r in tables[names[0]])]
    head = " | ".join(f"{n}: {t}" for n in names for _, t, _ in present)
    lines = [
        f"Linear probes, trained on {num_train} and scored on {num_test} held-out utterances "
        "(speaker, keyword: ridge on mean-pooled frames, chance 1/8 and 1/10; phonemes: linear "
        "CTC, greedy PER). [95% bootstrap interval over the scored utterances]; **bold**: not "
        "distinguishable from the layer with the best score (paired bootstrap of the difference).",
        "",
        f"| layer | {head} |",
        "|---|" + "---|" * (len(present) * len(names)),
    ]
    by_layer = {n: {row["layer"]: row for row in tables[n]} for n in names}
    tied = {(n, k): tied_with_best(tables[n], k) for n in names for k, _, _ in present}
    for layer in by_layer[names[0]]:
        cells = [_cell(by_layer[n].get(layer), k, tied[n, k]) for n in names for k, _, _ in present]
        label = "trained heads" if layer == "heads" else layer
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines.append("")
    for n in names:
        peaks = ", ".join(f"{t} at layers {tied[n, k]}" for k, t, _ in present)
        lines.append(f"- {n}: best (within noise) {peaks}")
    return "\n".join(lines) + "\n"
