"""STaR (Jang, Kim & Kim, ICASSP 2024, arXiv 2312.09040): temporal Gram matrix distillation.

What could be established, and from where:
- The paper's equations were not reachable from here (only its abstract and the
  repository's README). What follows is built from sungnyun/ARMHuBERT's README (L173-176:
  "Temporal Gram Matrix (TGM) which aggregates channel information at two time steps";
  "Layer-wise TGM: distill the TGM for every Transformer layer"; "Intra-layer TGM: ... the
  temporal relation between the input and output of a single Transformer layer";
  "Incorporating two TGMs as the distillation objectives together") and from STaRHuBERT's
  model code (models/starhubert/model.py L208-210, L297-311: no projection head, no final
  projection: the loss reads the student's own hidden states; module.py L250-251 and
  L258-272: `pre_trf`, the input of the first layer, and every layer's output are returned).
- Our reading, labelled as such: TGM(X)[i, j] = <x_i, x_j> / D for a layer's frames
  X (T, D) (the 1/D makes Gram matrices of a 480-wide student and a 768-wide teacher
  comparable, and makes a TGM invariant to channel rotations and duplications); the
  intra-layer TGM of a layer with input X and output Y is <x_i, y_j> / D; each term is the
  mean squared difference between the student's and the teacher's matrices over the valid
  (i, j) pairs; the layer-wise and intra-layer terms are averaged over the supervised layers
  and weighted 1 : 1 (the README gives no weights).
- Frame masks: a pair (i, j) counts only when both frames are valid, and the mean is pooled
  over the batch (sum over utterances of T_b^2 pairs), as losses.py pools frames. Padded
  frames never count. The paper's treatment of padding is not known.

Arrays: hidden states are (B, T, D); `mask_bt` is bool, True on valid frames. Everything is
computed in float32 and the teacher's side is wrapped in stop_gradient.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections

Array = jax.Array


def default_config() -> ml_collections.ConfigDict:
    """STaR's two terms and their weights (README: both TGMs together; weights not given: 1, 1)."""
    c = ml_collections.ConfigDict()
    c.layer_weight = 1.0  # layer-wise TGM term
    c.intra_weight = 1.0  # intra-layer TGM term
    return c


def temporal_gram(x_btd: Array, y_btd: Array | None = None) -> Array:
    """TGM (B, T, T): <x_i, x_j> / D (README's layer-wise TGM); with y, <x_i, y_j> / D (intra)."""
    x_btd = x_btd.astype(jnp.float32)
    y_btd = x_btd if y_btd is None else y_btd.astype(jnp.float32)
    if x_btd.shape != y_btd.shape:
        raise ValueError(f"temporal_gram: input {x_btd.shape} and output {y_btd.shape} differ")
    return jnp.einsum("bid,bjd->bij", x_btd, y_btd) / x_btd.shape[-1]


def pair_mask(mask_bt: Array) -> Array:
    """(B, T, T) True where both frames i and j are valid."""
    return mask_bt[:, :, None] & mask_bt[:, None, :]


def tgm_distance(student_btt: Array, teacher_btt: Array, mask_bt: Array) -> Array:
    """Mean squared difference of two TGMs over the valid (i, j) pairs of the batch; 0 if none."""
    teacher_btt = jax.lax.stop_gradient(teacher_btt)
    pairs = pair_mask(mask_bt)
    sq = jnp.where(pairs, jnp.square(student_btt - teacher_btt), 0.0)
    return jnp.sum(sq) / jnp.maximum(jnp.sum(pairs.astype(jnp.float32)), 1.0)


def layerwise_tgm_loss(student_btd: Array, teacher_btd: Array, mask_bt: Array) -> Array:
    """Layer-wise TGM term of one layer: TGM(student layer) vs TGM(teacher layer)."""
    return tgm_distance(temporal_gram(student_btd), temporal_gram(teacher_btd), mask_bt)


def intralayer_tgm_loss(
    student_in_btd: Array,
    student_out_btd: Array,
    teacher_in_btd: Array,
    teacher_out_btd: Array,
    mask_bt: Array,
) -> Array:
    """Intra-layer TGM term of one layer: TGM(input, output) of the student's vs the teacher's."""
    student = temporal_gram(student_in_btd, student_out_btd)
    teacher = temporal_gram(teacher_in_btd, teacher_out_btd)
    return tgm_distance(student, teacher, mask_bt)


def star_loss(
    student_hidden_lbtd: Array,
    teacher_hidden_lbtd: Array,
    mask_bt: Array,
    sources: Mapping[int, int],
    layer_weight: float = 1.0,
    intra_weight: float = 1.0,
) -> tuple[Array, dict[str, Array]]:
    """layer_weight * mean layer-wise TGM + intra_weight * mean intra-layer TGM, with metrics.

    `sources` maps a teacher layer k (>= 1) to the student hidden-state index s (>= 1) paired
    with it (distill.target_sources). Layer-wise: student hidden s vs teacher hidden k.
    Intra-layer: the student layer that outputs hidden s (input s - 1) vs teacher layer k
    (input k - 1), each a single layer as the README says; hidden 0 is the input of the first
    layer on both sides (their `pre_trf`). At full depth with every layer paired (s = k) this
    is every layer's pair of TGMs.
    """
    if not sources:
        raise ValueError("star_loss needs at least one supervised layer")
    metrics = {}
    layer_terms, intra_terms = [], []
    for k in sorted(sources):
        s = int(sources[k])
        if k < 1 or s < 1:
            raise ValueError(
                f"star_loss: teacher layer {k} <- student hidden {s}: both must be >= 1"
            )
        layer = layerwise_tgm_loss(student_hidden_lbtd[s], teacher_hidden_lbtd[k], mask_bt)
        intra = intralayer_tgm_loss(
            student_hidden_lbtd[s - 1],
            student_hidden_lbtd[s],
            teacher_hidden_lbtd[k - 1],
            teacher_hidden_lbtd[k],
            mask_bt,
        )
        layer_terms.append(layer)
        intra_terms.append(intra)
        metrics[f"loss/tgm_layer_{k}"] = layer
        metrics[f"loss/tgm_intra_{k}"] = intra
    layer_loss = jnp.mean(jnp.stack(layer_terms))
    intra_loss = jnp.mean(jnp.stack(intra_terms))
    loss = layer_weight * layer_loss + intra_weight * intra_loss
    metrics.update({"loss": loss, "loss/tgm_layer": layer_loss, "loss/tgm_intra": intra_loss})
    return loss, metrics


def validate(distill: ml_collections.ConfigDict) -> None:
    """Refuses `config.distill` settings STaR cannot train with, naming the field."""
    star = distill.get("star")
    if star is None:
        raise ValueError("config.distill.loss='star' needs the config.distill.star section")
    for name in ("layer_weight", "intra_weight"):
        value = star.get(name)
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"config.distill.star.{name} must be a number >= 0, got {value!r}")
    if star.layer_weight == 0 and star.intra_weight == 0:
        raise ValueError("config.distill.star: layer_weight and intra_weight are both 0")
    if any(int(k) < 1 for k in distill.teacher_layers):
        raise ValueError(
            f"config.distill.teacher_layers={tuple(distill.teacher_layers)}: STaR pairs "
            "transformer layers (>= 1); hidden state 0 is only a layer's input"
        )
    if distill.heads_on != "lineage":
        raise ValueError(
            "config.distill.heads_on must be 'lineage' with loss='star': STaR has no heads "
            "and reads each supervised student layer itself"
        )
