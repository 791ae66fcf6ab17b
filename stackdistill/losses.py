"""Frame-masked distillation losses: the paper's MSE loss and DistilHuBERT's L1 + cosine.

Conventions: predictions and targets are (B, T, D); `mask_bt` is bool (B, T), True on
valid frames. Padded frames never count: every mean is over the valid frames of the whole
batch (pooled, not per utterance), and an all-padded batch gives 0, not NaN. s3prl's
DistilHuBERT averages over padded frames too; we do not. Everything is computed in
float32 whatever the input dtype, and the teacher targets are wrapped in stop_gradient.

`preds` maps a teacher layer id k (index into the teacher's hidden states: 0 is the
projected CNN output, L the last layer) to the student's prediction of it after its head.
Metrics carry `loss/layer_{k}` and `cos/layer_{k}` for every supervised teacher layer.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

Array = jax.Array
COSINE_EPS = 1e-8  # as torch.nn.functional.cosine_similarity


def _as_f32(pred_btd: Array, target_btd: Array) -> tuple[Array, Array]:
    """Both in float32, the target detached."""
    target_btd = jax.lax.stop_gradient(target_btd)
    return pred_btd.astype(jnp.float32), target_btd.astype(jnp.float32)


def masked_mean(values_bt: Array, mask_bt: Array) -> Array:
    """Mean of per-frame values over the valid frames; 0 when there are none."""
    values_bt = jnp.where(mask_bt, values_bt.astype(jnp.float32), 0.0)
    count = jnp.sum(mask_bt.astype(jnp.float32))
    return jnp.sum(values_bt) / jnp.maximum(count, 1.0)


def frame_cosine(pred_btd: Array, target_btd: Array) -> Array:
    """Cosine similarity per frame (B, T); a zero vector gives 0, with finite gradients."""
    pred_btd, target_btd = _as_f32(pred_btd, target_btd)
    dot_bt = jnp.sum(pred_btd * target_btd, axis=-1)
    # Clamp the squared norms before the sqrt so the gradient at a zero vector is finite.
    pred_norm_bt = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(pred_btd), axis=-1), COSINE_EPS**2))
    target_norm_bt = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(target_btd), axis=-1), COSINE_EPS**2))
    return dot_bt / (pred_norm_bt * target_norm_bt)


def masked_mse(pred_btd: Array, target_btd: Array, mask_bt: Array) -> Array:
    """Mean squared error over valid frames and all dims."""
    pred_btd, target_btd = _as_f32(pred_btd, target_btd)
    return masked_mean(jnp.mean(jnp.square(pred_btd - target_btd), axis=-1), mask_bt)


def masked_l1(pred_btd: Array, target_btd: Array, mask_bt: Array) -> Array:
    """Mean absolute error over valid frames and all dims."""
    pred_btd, target_btd = _as_f32(pred_btd, target_btd)
    return masked_mean(jnp.mean(jnp.abs(pred_btd - target_btd), axis=-1), mask_bt)


def masked_cosine(pred_btd: Array, target_btd: Array, mask_bt: Array) -> Array:
    """Mean per-frame cosine similarity over valid frames."""
    return masked_mean(frame_cosine(pred_btd, target_btd), mask_bt)


def paper_loss(
    preds: Mapping[int, Array],
    teacher_hidden_lbtd: Array,
    mask_bt: Array,
    output_layer: int,
    intermediate_weight: float = 0.5,
) -> tuple[Array, dict[str, Array]]:
    """MSE(output target) + w * mean MSE over the intermediate targets.

    The output target is preds[output_layer]; every other key of preds is an intermediate
    target, and their MSEs are averaged (not summed). With no intermediate target (the
    "Full" baseline without the layer-to-layer loss) the loss is the output MSE alone.
    """
    if output_layer not in preds:
        raise ValueError(
            f"output_layer {output_layer} is not among the predicted layers {sorted(preds)}"
        )
    metrics = {}
    layer_losses = {}
    for layer_id in sorted(preds):
        target_btd = teacher_hidden_lbtd[layer_id]
        layer_losses[layer_id] = masked_mse(preds[layer_id], target_btd, mask_bt)
        metrics[f"loss/layer_{layer_id}"] = layer_losses[layer_id]
        metrics[f"cos/layer_{layer_id}"] = masked_cosine(preds[layer_id], target_btd, mask_bt)
    output_loss = layer_losses[output_layer]
    intermediate = [v for k, v in layer_losses.items() if k != output_layer]
    intermediate_loss = jnp.mean(jnp.stack(intermediate)) if intermediate else jnp.float32(0.0)
    loss = output_loss + intermediate_weight * intermediate_loss
    metrics.update(
        {"loss": loss, "loss/output": output_loss, "loss/intermediate": intermediate_loss}
    )
    return loss, metrics


def distilhubert_loss(
    preds: Mapping[int, Array],
    teacher_hidden_lbtd: Array,
    mask_bt: Array,
    cos_weight: float = 1.0,
) -> tuple[Array, dict[str, Array]]:
    """DistilHuBERT: per head L1 + cos_weight * mean(-log sigmoid(cos)), averaged over heads.

    Heads are averaged, as s3prl does (`rec_loss.mean()` over B x N x T x D), although the
    paper writes a sum over layers; the feature penalty (0 in s3prl's configs) is left out.
    """
    if not preds:
        raise ValueError("distilhubert_loss needs at least one prediction head")
    metrics = {}
    head_losses = []
    for layer_id in sorted(preds):
        pred_btd, target_btd = preds[layer_id], teacher_hidden_lbtd[layer_id]
        l1 = masked_l1(pred_btd, target_btd, mask_bt)
        cos_bt = frame_cosine(pred_btd, target_btd)
        cos_term = masked_mean(-jax.nn.log_sigmoid(cos_bt), mask_bt)
        head_losses.append(l1 + cos_weight * cos_term)
        metrics[f"loss/layer_{layer_id}"] = head_losses[-1]
        metrics[f"l1/layer_{layer_id}"] = l1
        metrics[f"cos/layer_{layer_id}"] = masked_mean(cos_bt, mask_bt)
    loss = jnp.mean(jnp.stack(head_losses))
    metrics["loss"] = loss
    return loss, metrics
