"""Tests for stackdistill.losses against hand computations and a numpy reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stackdistill import losses

# One utterance, 3 frames, 2 dims; the last frame is padding and holds junk.
PRED = np.array([[[1.0, 0.0], [0.0, 2.0], [50.0, -80.0]]], np.float32)
TARGET = np.array([[[1.0, 0.0], [0.0, -1.0], [3.0, 3.0]]], np.float32)
MASK = np.array([[True, True, False]])


def test_masked_metrics_by_hand():
    # Valid differences: (0, 0) and (0, 3).
    assert float(losses.masked_mse(PRED, TARGET, MASK)) == pytest.approx(9 / 4)
    assert float(losses.masked_l1(PRED, TARGET, MASK)) == pytest.approx(3 / 4)
    # Frame 0 points the same way (cos 1), frame 1 the opposite way (cos -1).
    assert float(losses.masked_cosine(PRED, TARGET, MASK)) == pytest.approx(0.0, abs=1e-7)


def test_distilhubert_loss_by_hand():
    preds = {1: jnp.asarray(PRED)}
    hidden_lbtd = np.stack([np.zeros_like(TARGET), TARGET])
    loss, metrics = losses.distilhubert_loss(preds, hidden_lbtd, MASK)
    # L1 3/4, plus mean of -log sigmoid(1) = log(1 + e^-1) and -log sigmoid(-1) = log(1 + e).
    expected = 0.75 + 0.5 * (math.log(1 + math.exp(-1)) + math.log(1 + math.e))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["l1/layer_1"]) == pytest.approx(0.75)
    assert float(metrics["cos/layer_1"]) == pytest.approx(0.0, abs=1e-7)


def test_paper_loss_by_hand():
    hidden_lbtd = np.stack([TARGET + 5.0, TARGET - 3.0, TARGET])
    preds = {
        2: jnp.asarray(PRED),  # output target: MSE 9/4
        1: jnp.asarray(TARGET - 3.0 + 1.0),  # off by 1 everywhere: MSE 1
        0: jnp.asarray(TARGET + 5.0 - 2.0),  # off by 2 everywhere: MSE 4
    }
    loss, metrics = losses.paper_loss(preds, hidden_lbtd, MASK, output_layer=2)
    assert float(loss) == pytest.approx(9 / 4 + 0.5 * (1 + 4) / 2)
    assert float(metrics["loss/layer_0"]) == pytest.approx(4.0)
    assert float(metrics["loss/intermediate"]) == pytest.approx(2.5)
    assert float(metrics["loss/output"]) == pytest.approx(9 / 4)
    keys = {"loss", "loss/output", "loss/intermediate"}
    keys |= {f"{kind}/layer_{k}" for kind in ("loss", "cos") for k in (0, 1, 2)}
    assert set(metrics) == keys

    weighted, _ = losses.paper_loss(preds, hidden_lbtd, MASK, 2, intermediate_weight=2.0)
    assert float(weighted) == pytest.approx(9 / 4 + 2.0 * 2.5)
    output_only, _ = losses.paper_loss({2: preds[2]}, hidden_lbtd, MASK, output_layer=2)
    assert float(output_only) == pytest.approx(9 / 4)
    with pytest.raises(ValueError, match="output_layer"):
        losses.paper_loss({1: preds[1]}, hidden_lbtd, MASK, output_layer=2)


def random_batch(seed: int = 0):
    """Teacher states (4, B, T, D), predictions for layers 1..3, ragged mask with one empty row."""
    rng = np.random.default_rng(seed)
    hidden_lbtd = rng.normal(size=(4, 3, 6, 5)).astype(np.float32)
    preds = {k: rng.normal(size=(3, 6, 5)).astype(np.float32) for k in (1, 2, 3)}
    lengths = np.array([6, 2, 0])
    mask_bt = np.arange(6)[None, :] < lengths[:, None]
    return preds, hidden_lbtd, mask_bt


def numpy_per_layer(pred_btd, target_btd, mask_bt):
    """Reference on the valid frames only: (mse, l1, per-frame cosines)."""
    p, t = pred_btd[mask_bt].astype(np.float64), target_btd[mask_bt].astype(np.float64)
    cos = np.sum(p * t, -1) / (np.linalg.norm(p, axis=-1) * np.linalg.norm(t, axis=-1))
    return np.mean((p - t) ** 2), np.mean(np.abs(p - t)), cos


def test_losses_match_numpy_reference():
    preds, hidden_lbtd, mask_bt = random_batch()
    ref = {k: numpy_per_layer(preds[k], hidden_lbtd[k], mask_bt) for k in preds}

    loss, metrics = losses.paper_loss(preds, hidden_lbtd, mask_bt, output_layer=3)
    assert float(loss) == pytest.approx(ref[3][0] + 0.5 * (ref[1][0] + ref[2][0]) / 2, rel=1e-5)
    for k in preds:
        assert float(metrics[f"cos/layer_{k}"]) == pytest.approx(np.mean(ref[k][2]), abs=1e-6)

    loss, metrics = losses.distilhubert_loss(preds, hidden_lbtd, mask_bt, cos_weight=0.7)
    per_head = {k: l1 + 0.7 * np.mean(np.log1p(np.exp(-cos))) for k, (_, l1, cos) in ref.items()}
    assert float(loss) == pytest.approx(np.mean(list(per_head.values())), rel=1e-5)
    for k, value in per_head.items():
        assert float(metrics[f"loss/layer_{k}"]) == pytest.approx(value, rel=1e-5)


@pytest.mark.parametrize("loss_name", ["paper", "distilhubert"])
def test_padded_frames_never_count(loss_name):
    preds, hidden_lbtd, mask_bt = random_batch()
    loss_fn = {
        "paper": lambda p, h: losses.paper_loss(p, h, mask_bt, output_layer=3)[0],
        "distilhubert": lambda p, h: losses.distilhubert_loss(p, h, mask_bt)[0],
    }[loss_name]
    junk_preds = {k: np.where(mask_bt[..., None], v, 1e3) for k, v in preds.items()}
    junk_hidden = np.where(mask_bt[None, ..., None], hidden_lbtd, -7.0)
    assert float(loss_fn(junk_preds, junk_hidden)) == pytest.approx(
        float(loss_fn(preds, hidden_lbtd))
    )
    grads = jax.grad(loss_fn)(jax.tree_util.tree_map(jnp.asarray, junk_preds), junk_hidden)
    for grad_btd in grads.values():
        assert np.all(np.asarray(grad_btd)[~mask_bt] == 0)
        assert np.all(np.isfinite(grad_btd))


def test_all_padded_batch_gives_zero_and_finite_grads():
    preds, hidden_lbtd, _ = random_batch()
    empty_bt = np.zeros((3, 6), bool)
    for fn in (losses.masked_mse, losses.masked_l1, losses.masked_cosine):
        assert float(fn(preds[1], hidden_lbtd[1], empty_bt)) == 0.0
    loss, grads = jax.value_and_grad(
        lambda p: losses.distilhubert_loss(p, hidden_lbtd, empty_bt)[0]
    )(preds)
    assert float(loss) == 0.0
    assert all(np.all(np.asarray(g) == 0) for g in grads.values())


def test_zero_vectors_give_finite_cosine_and_grads():
    pred_btd = jnp.zeros((1, 2, 3))
    target_btd = jnp.zeros((1, 2, 3)).at[0, 1].set(1.0)
    mask_bt = np.ones((1, 2), bool)
    assert float(losses.masked_cosine(pred_btd, target_btd, mask_bt)) == 0.0
    grad = jax.grad(lambda p: losses.distilhubert_loss({1: p}, target_btd[None], mask_bt)[0])(
        pred_btd
    )
    assert np.all(np.isfinite(grad))


def test_bfloat16_inputs_computed_in_float32():
    preds, hidden_lbtd, mask_bt = random_batch()
    preds_bf16 = {k: jnp.asarray(v, jnp.bfloat16) for k, v in preds.items()}
    hidden_bf16 = jnp.asarray(hidden_lbtd, jnp.bfloat16)
    loss, metrics = losses.paper_loss(preds_bf16, hidden_bf16, mask_bt, output_layer=3)
    assert loss.dtype == jnp.float32 and metrics["cos/layer_1"].dtype == jnp.float32
    # Same inputs rounded to bf16 but held in float32: only the arithmetic precision differs.
    preds_rounded = {k: np.asarray(v, np.float32) for k, v in preds_bf16.items()}
    expected, _ = losses.paper_loss(preds_rounded, np.asarray(hidden_bf16, np.float32), mask_bt, 3)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_losses_under_jit_match_eager():
    preds, hidden_lbtd, mask_bt = random_batch()
    jitted = jax.jit(losses.paper_loss, static_argnames="output_layer")
    loss, metrics = jitted(preds, hidden_lbtd, mask_bt, output_layer=3, intermediate_weight=0.5)
    eager_loss, eager_metrics = losses.paper_loss(preds, hidden_lbtd, mask_bt, output_layer=3)
    assert float(loss) == pytest.approx(float(eager_loss), rel=1e-6)
    assert set(metrics) == set(eager_metrics)
    jit_dh = jax.jit(losses.distilhubert_loss)(preds, hidden_lbtd, mask_bt)[0]
    assert float(jit_dh) == pytest.approx(
        float(losses.distilhubert_loss(preds, hidden_lbtd, mask_bt)[0])
    )
