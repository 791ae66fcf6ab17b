"""Layer-wise linear probes of an encoder: what each hidden state holds.

Speaker: ridge regression onto one-hot classes from standardised mean-pooled frames.
Phonemes: a linear CTC head trained on frozen frames, scored by greedy phoneme error rate.
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


def ridge_accuracy(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, alpha: float
) -> float:
    """Closed-form ridge regression onto one-hot classes (standardised features): accuracy."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6

    def design(x):
        return np.concatenate([(x - mean) / std, np.ones((len(x), 1))], axis=1).astype(np.float64)

    a, targets = design(x_train), np.eye(int(y_train.max()) + 1)[y_train]
    weights = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ targets)
    return float(np.mean(np.argmax(design(x_test) @ weights, axis=1) == y_test))


def _phoneme_error(
    logits_ntv: np.ndarray, mask_nt: np.ndarray, ids: np.ndarray, paddings: np.ndarray
) -> float:
    """PER of greedy CTC decoding (blank 0) against the padded label rows."""
    hyps = metrics.ctc_greedy_decode(np.argmax(logits_ntv, -1), np.sum(mask_nt, -1))
    return metrics.error_rate(metrics.unpad(ids, paddings), hyps)


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
    return _phoneme_error(logits, mask_nt[num_train:], ids[num_train:], paddings[num_train:])


def probe_layers(
    hidden: np.ndarray,
    mask: np.ndarray,
    rows: Sequence[dict[str, Any]],
    vocab: Sequence[str],
    config: ml_collections.ConfigDict,
    heads: Params | None = None,
) -> list[dict[str, float]]:
    """Per layer: ridge speaker accuracy and linear-CTC phoneme error rate on held-out rows;
    with `heads`, also the trained heads' own scores on the same held-out rows (last entry)."""
    c = config.probe
    ids, paddings = label_ids([r["phonemes"] for r in rows], vocab, config.max_label_length)
    speakers = np.array([int(r["speaker"]) for r in rows])
    n = int(round(c.train_fraction * len(rows)))
    table = []
    for layer, x_ntd in enumerate(hidden):
        pooled = np.asarray(mean_pool(jnp.asarray(x_ntd, jnp.float32), mask))
        acc = ridge_accuracy(pooled[:n], speakers[:n], pooled[n:], speakers[n:], c.ridge_alpha)
        per = ctc_probe_error(x_ntd, mask, ids, paddings, n, len(vocab), c)
        table.append({"layer": layer, "speaker_acc": acc, "phoneme_error": per})
        log.info("probe layer %d: speaker acc %.3f, PER %.3f", layer, acc, per)
    if heads is not None:
        x_spk = mean_pool(jnp.asarray(hidden[config.speaker_layer][n:], jnp.float32), mask[n:])
        spk_logits = x_spk @ heads["speaker"]["kernel"] + heads["speaker"]["bias"]
        x_ctc = jnp.asarray(hidden[config.ctc_layer][n:], jnp.float32)
        logits = np.asarray(x_ctc @ heads["ctc"]["kernel"] + heads["ctc"]["bias"])
        per = _phoneme_error(logits, mask[n:], ids[n:], paddings[n:])
        acc = float(np.mean(np.argmax(np.asarray(spk_logits), -1) == speakers[n:]))
        table.append({"layer": "heads", "speaker_acc": acc, "phoneme_error": per})
    return table


def probe_markdown(tables: dict[str, list[dict[str, float]]], num_train: int, num_test: int) -> str:
    """The probe tables side by side, one row per layer."""
    names = list(tables)
    head = " | ".join(f"{n}: speaker acc | {n}: phoneme error" for n in names)
    lines = [
        f"Linear probes, trained on {num_train} and scored on {num_test} held-out utterances "
        "(speaker: ridge on mean-pooled frames, chance 1/8; phonemes: linear CTC, greedy PER).",
        "",
        f"| layer | {head} |",
        "|---|" + "---|" * (2 * len(names)),
    ]
    by_layer = {n: {row["layer"]: row for row in tables[n]} for n in names}
    for layer in by_layer[names[0]]:
        cells = [
            f"{r['speaker_acc']:.2f} | {r['phoneme_error']:.2f}" if r else "- | -"
            for r in (by_layer[n].get(layer) for n in names)
        ]
        label = "trained heads" if layer == "heads" else layer
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"
