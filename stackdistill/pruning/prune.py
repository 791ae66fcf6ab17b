"""DPHuBERT's prune step on our params: deterministic gates folded in, removed units zeroed.

Follows the `prune()` methods of pyf98/DPHuBERT `wav2vec2/components.py` (commit c18093f):
the eval gates decide what stays (hardconcrete.deterministic), kept units' soft gate values
are folded into the next weights (conv L219-226, heads L479, FFN units L787, layer gates
L459-460 / L771-772) and removed units go. A block left with no head (no FFN unit) is
removed whole, output bias included, as is one whose layer gate is 0 (L461-470, L773-783).

Transformer layers stay one uniform-width scan: a removed head has zero q/k/v rows and zero
out_proj rows, a removed FFN unit zero in and out weights, a removed block is all zeros
(the layout `pruning.checkpoint` reads their pruned checkpoints into); `params.units_of_padded`
reads the kept widths back. CNN channels (one width per conv in our config) are either
removed as theirs (`conv="remove"`, L214-226, and the projection's LayerNorm and input,
L1013-1014) or kept and zeroed (`conv="zero"`).

Function preservation: with `conv="zero"` the pruned model computes exactly the
deterministic-gate model (up to float rounding) wherever no block is emptied by its units.
Their removal is not quite function-preserving and `conv="remove"` follows it: a LayerNorm
over channels (the projection's, and each conv's in "layer" extractor mode) then normalises
over the kept channels only, where the gated model also counted the gated-off zeros; and an
emptied block loses its output bias, which the gated model still added. Their recipe
continues with a final distillation of the pruned model, which absorbs both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stackdistill.models.config import EncoderConfig
from stackdistill.pruning import gated, hardconcrete

Params = dict[str, Any]
CONV_MODES = ("remove", "zero")


def kept_units(cfg: EncoderConfig, det: Mapping[str, Any]) -> dict[str, np.ndarray | list[int]]:
    """Kept sizes of deterministic gate values, as `params.count` kwargs (their prune rules).

    A block with no kept head / FFN unit or a zero layer gate is off, and then keeps 0 units.
    """
    n = cfg.num_layers
    det = jax.tree_util.tree_map(np.asarray, dict(det))
    heads = (det["head"] != 0).sum(1) if "head" in det else np.full(n, cfg.num_heads)
    att_on = heads > 0
    if "attlayer" in det:
        att_on &= det["attlayer"][:, 0] != 0
    ffn = (det["interm"] != 0).sum(1) if "interm" in det else np.full(n, cfg.intermediate_size)
    ffn_on = ffn > 0
    if "ffnlayer" in det:
        ffn_on &= det["ffnlayer"][:, 0] != 0
    conv = [int((g != 0).sum()) for g in det["conv"]] if "conv" in det else list(cfg.conv_dim)
    return dict(
        conv_channels=conv,
        heads=np.where(att_on, heads, 0),
        attention_on=att_on.astype(np.float32),
        ffn_units=np.where(ffn_on, ffn, 0),
        ffn_on=ffn_on.astype(np.float32),
    )


def prune(
    cfg: EncoderConfig, params: Params, log_alpha: Mapping[str, Any], conv: str = "remove"
) -> tuple[EncoderConfig, Params]:
    """(config, params) of the pruned encoder for gate log_alphas (their `Wav2Vec2Model.prune`).

    `params` are the ungated student's; the result runs with `models.encode` / `Encoder`.
    """
    if conv not in CONV_MODES:
        raise ValueError(f"conv={conv!r}: the pruned CNN is one of {CONV_MODES}")
    det = jax.tree_util.tree_map(np.asarray, hardconcrete.deterministic_gates(log_alpha))
    units = kept_units(cfg, det)
    if min(units["conv_channels"]) == 0:
        # their FeatureExtractor.prune asserts the same (L208)
        raise ValueError(f"a conv lost all its channels: kept {units['conv_channels']}")
    p = jax.tree_util.tree_map(np.asarray, gated.apply_gates(cfg, params, det))
    out_cfg = gated.gated_config(cfg, det)
    _zero_layers(cfg, p["encoder"]["layers"], det, units)
    if conv == "remove" and "conv" in det:
        keep = [np.flatnonzero(g) for g in det["conv"]]
        _remove_channels(p, keep)
        out_cfg = out_cfg.replace(conv_dim=tuple(len(k) for k in keep))
    return out_cfg, jax.tree_util.tree_map(jnp.asarray, p)


def _zero_layers(cfg: EncoderConfig, layers: dict, det: Mapping, units: Mapping) -> None:
    """In place on numpy copies: removed heads, FFN units and whole blocks become zeros."""
    n, h = cfg.num_layers, cfg.hidden_size // cfg.num_heads
    att, ffn = layers["attention"], layers["feed_forward"]
    head_on = det["head"] != 0 if "head" in det else np.ones((n, cfg.num_heads), bool)
    head_on = head_on & (units["attention_on"][:, None] > 0)
    rows = np.repeat(head_on, h, axis=1)  # (L, D): the q/k/v outputs of kept heads
    for name in ("q_proj", "k_proj", "v_proj"):
        att[name] = {
            "kernel": att[name]["kernel"] * rows[:, None, :],
            "bias": att[name]["bias"] * rows,
        }
    att_on = units["attention_on"].astype(bool)
    att["out_proj"] = {
        "kernel": att["out_proj"]["kernel"] * rows[:, :, None],
        "bias": att["out_proj"]["bias"] * att_on[:, None],
    }
    for name in ("gru_rel_pos_linear", "gru_rel_pos_const"):  # WavLM: gone with the block
        if name in att:
            att[name] = jax.tree_util.tree_map(
                lambda x: x * att_on.reshape((n,) + (1,) * (x.ndim - 1)), att[name]
            )
    unit_on = det["interm"] != 0 if "interm" in det else np.ones((n, cfg.intermediate_size), bool)
    ffn_on = units["ffn_on"].astype(bool)
    unit_on = unit_on & ffn_on[:, None]
    w1, w2 = ffn["intermediate_dense"], ffn["output_dense"]
    ffn["intermediate_dense"] = {
        "kernel": w1["kernel"] * unit_on[:, None, :],
        "bias": w1["bias"] * unit_on,
    }
    ffn["output_dense"] = {
        "kernel": w2["kernel"] * unit_on[:, :, None],
        "bias": w2["bias"] * ffn_on[:, None],
    }


def _remove_channels(p: Params, keep: list[np.ndarray]) -> None:
    """In place: conv i keeps `keep[i]` outputs (and norm channels), conv i+1 those inputs."""
    fe = p["feature_extractor"]
    for i, idx in enumerate(keep):
        layer = fe[f"conv_layers_{i}"]
        layer["conv"]["kernel"] = layer["conv"]["kernel"][:, :, idx]
        if "bias" in layer["conv"]:
            layer["conv"]["bias"] = layer["conv"]["bias"][idx]
        if "layer_norm" in layer:  # GroupNorm (one group per channel) or LayerNorm: L215-216
            layer["layer_norm"] = {k: v[idx] for k, v in layer["layer_norm"].items()}
        if i + 1 < len(keep):
            nxt = fe[f"conv_layers_{i + 1}"]["conv"]
            nxt["kernel"] = nxt["kernel"][:, idx, :]  # L225-226, the soft values already in
    last = keep[-1]
    fe["feature_scale"] = fe["feature_scale"][last]  # their dummy_weight, L219-223
    proj = p["feature_projection"]
    if "layer_norm" in proj:  # L1013
        proj["layer_norm"] = {k: v[last] for k, v in proj["layer_norm"].items()}
    if "projection" in proj:  # L1014
        proj["projection"]["kernel"] = proj["projection"]["kernel"][last, :]


def shrink_ffn(cfg: EncoderConfig, params: Params) -> tuple[EncoderConfig, Params]:
    """The padded FFN width cut to the most units any layer kept (kept units moved first).

    Function-preserving (a unit's order within its layer does not matter; their pruned
    checkpoints are read the same way, `pruning.checkpoint`); saves FFN compute in the scan.
    """
    p = jax.tree_util.tree_map(np.asarray, params)
    ffn = p["encoder"]["layers"]["feed_forward"]
    w1, w2 = ffn["intermediate_dense"], ffn["output_dense"]
    on = (np.abs(w1["kernel"]).sum(1) > 0) | (w1["bias"] != 0) | (np.abs(w2["kernel"]).sum(2) > 0)
    width = max(int(on.sum(1).max()), 1)
    order = np.argsort(~on, axis=1, kind="stable")[:, :width]  # (L, width): kept units first
    take = np.take_along_axis
    w1["kernel"] = take(w1["kernel"], order[:, None, :], axis=2)
    w1["bias"] = take(w1["bias"], order, axis=1)
    w2["kernel"] = take(w2["kernel"], order[:, :, None], axis=1)
    return cfg.replace(intermediate_size=width), jax.tree_util.tree_map(jnp.asarray, p)


def removed_blocks_mask(cfg: EncoderConfig, params: Params) -> Params:
    """1.0 for every param the final distillation may train, 0.0 for a removed block's.

    Their pruned model has no removed attention / FFN block at all (`use_attention` /
    `use_feed_forward` False, `components.py` L835-856); ours keeps it as zeros. Removed heads
    and FFN units are fixed points of training (each one's in and out weights are both zero,
    so neither gets a gradient), but a removed block's output bias is not: its gradient is the
    residual stream's, and trained it would add a constant their model cannot hold. The mask
    (per layer of the scanned stack, over the whole block) keeps such a block removed.
    """
    from stackdistill.pruning import params as pruning_params

    units = pruning_params.units_of_padded(cfg, {"encoder": params["encoder"]})
    on = {"attention": units["attention_on"], "feed_forward": units["ffn_on"]}

    def mask(path, x):
        names = [getattr(k, "key", None) for k in path]
        if names[:2] == ["encoder", "layers"] and names[2] in on:
            flags = np.asarray(on[names[2]], np.float32)
            return flags.reshape((-1,) + (1,) * (np.ndim(x) - 1)) * np.ones_like(x, np.float32)
        return np.ones_like(x, np.float32)

    return jax.tree_util.tree_map_with_path(mask, jax.tree_util.tree_map(np.asarray, params))
