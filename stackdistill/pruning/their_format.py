"""Writes a pruned model in pyf98/DPHuBERT's final checkpoint format (the inverse of checkpoint.py).

Their `save_final_ckpt.py` (L31-46, commit c18093f) saves a torch pickle {"state_dict",
"config", "distill_linear_projs"}: the config holds their `wav2vec2_model` kwargs
(`wav2vec2/model.py` L181-207) with the per-layer widths `prune.py` L47-59 writes, and each
layer keeps only its heads and FFN units. Ours are zero-padded to one width: a head is kept
when its q, k or v rows are not all zero, an FFN unit when its weights or bias are not (as
`prune.shrink_ffn`), a block when it keeps a head / unit. `checkpoint.read` reads the file
back (HuBERT heads then sit in the first slots: the same function). WavLM (DPWavLM): their
`wavlm_model` kwargs (`wav2vec2/model.py` L736-763) name each layer's kept heads by their
original slots (`encoder_remaining_heads`, out of `encoder_total_num_heads`), since the gated
relative position bias is computed for every slot (`components.py` L515-543): ours stay in
their slots, so the slot numbers are ours; layer 0 keeps the relative position table
(`components.py` L1349) and the gate parameters of every slot in every attention it keeps.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from stackdistill import convert
from stackdistill.models.config import EncoderConfig
from stackdistill.pruning import checkpoint


def their_config(cfg: EncoderConfig, heads: Sequence[Sequence[int]], units: Sequence[int]) -> dict:
    """Their `wav2vec2_model` (or `wavlm_model`) kwargs for per-layer kept head slots `heads`
    and FFN `units`."""
    if cfg.model_type == "wavlm":
        per_layer_heads = {
            "encoder_total_num_heads": [cfg.num_heads] * cfg.num_layers,
            "encoder_remaining_heads": [[int(s) for s in h] for h in heads],
            "encoder_num_buckets": cfg.num_buckets,
            "encoder_max_distance": cfg.max_bucket_distance,
        }
    else:
        per_layer_heads = {
            "encoder_num_heads": [len(h) for h in heads],
            "encoder_head_dim": cfg.hidden_size // cfg.num_heads,
        }
    return {
        "extractor_mode": {"group": "group_norm", "layer": "layer_norm"}[cfg.feat_extract_norm],
        "extractor_conv_layer_config": [
            [int(c), int(k), int(s)]
            for c, k, s in zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)
        ],
        "extractor_conv_bias": bool(cfg.conv_bias),
        "encoder_embed_dim": cfg.hidden_size,
        "encoder_projection_dropout": cfg.dropout,
        "encoder_pos_conv_kernel": cfg.num_conv_pos_embeddings,
        "encoder_pos_conv_groups": cfg.num_conv_pos_embedding_groups,
        "encoder_num_layers": cfg.num_layers,
        "encoder_use_attention": [len(h) > 0 for h in heads],
        "encoder_use_feed_forward": [bool(u) for u in units],
        **per_layer_heads,
        "encoder_attention_dropout": cfg.attention_dropout,
        "encoder_ff_interm_features": [int(u) for u in units],
        "encoder_ff_interm_dropout": cfg.activation_dropout,
        "encoder_dropout": cfg.dropout,
        "encoder_layer_norm_first": bool(cfg.do_stable_layer_norm),
        "encoder_layer_drop": 0.0,
        "aux_num_out": None,
        "normalize_waveform": False,
        **{flag: False for flag in checkpoint.UNPRUNED_FLAGS},
    }


def state_and_config(cfg: EncoderConfig, params: Any) -> tuple[dict[str, np.ndarray], dict]:
    """(their state dict as numpy, their config) of our zero-padded pruned encoder."""
    if cfg.model_type not in ("hubert", "wav2vec2", "wavlm"):
        raise ValueError(f"model_type {cfg.model_type!r}: their format has HuBERT / WavLM models")
    if not cfg.feat_proj_layer_norm:
        raise ValueError("their model always has the projection LayerNorm; this config has none")
    hf = convert.params_to_state_dict(cfg, params)
    out: dict[str, np.ndarray] = {}
    for name, x in hf.items():
        if name.startswith("feature_extractor.conv_layers."):
            out[name] = x
    last = cfg.conv_dim[-1]
    scale = hf.get("feature_extractor.feature_scale", np.ones((last,), np.float32))
    out["feature_extractor.dummy_weight"] = scale
    for leaf in ("layer_norm.weight", "layer_norm.bias", "projection.weight", "projection.bias"):
        out[f"encoder.feature_projection.{leaf}"] = hf[f"feature_projection.{leaf}"]
    t = "encoder.transformer"
    # Weight norm (dim 2, as theirs): written as g = ||w||, v = w, the same weight.
    out[f"{t}.pos_conv_embed.conv.weight_g"] = hf[convert._PARAMETRIZED["weight_g"]]
    out[f"{t}.pos_conv_embed.conv.weight_v"] = hf[convert._PARAMETRIZED["weight_v"]]
    out[f"{t}.pos_conv_embed.conv.bias"] = hf["encoder.pos_conv_embed.conv.bias"]
    for leaf in ("weight", "bias"):
        out[f"{t}.layer_norm.{leaf}"] = hf[f"encoder.layer_norm.{leaf}"]
    h = cfg.hidden_size // cfg.num_heads
    heads, units = [], []
    for i in range(cfg.num_layers):
        ours, theirs = f"encoder.layers.{i}", f"{t}.layers.{i}"
        for norm in ("layer_norm", "final_layer_norm"):
            for leaf in ("weight", "bias"):
                out[f"{theirs}.{norm}.{leaf}"] = hf[f"{ours}.{norm}.{leaf}"]
        att = {p: hf[f"{ours}.attention.{p}.weight"] for p in ("q_proj", "k_proj", "v_proj")}
        used = sum(np.abs(w).reshape(cfg.num_heads, h, -1).sum((1, 2)) for w in att.values())
        slots = np.flatnonzero(used)
        rows = np.concatenate([np.arange(s * h, (s + 1) * h) for s in slots] + [[]]).astype(int)
        heads.append(slots.tolist())
        if cfg.model_type == "wavlm" and i == 0 and not len(slots):
            raise ValueError(
                "layer 0 keeps no attention head: their WavLM holds the relative position "
                "table in layer 0's attention (components.py L1349), so it cannot be written"
            )
        if len(slots):
            if cfg.model_type == "wavlm":
                for leaf in ("gru_rel_pos_linear.weight", "gru_rel_pos_linear.bias"):
                    out[f"{theirs}.attention.{leaf}"] = hf[f"{ours}.attention.{leaf}"]
                const = hf[f"{ours}.attention.gru_rel_pos_const"]
                out[f"{theirs}.attention.gru_rel_pos_const"] = const
                if i == 0:
                    table = hf[f"{ours}.attention.rel_attn_embed.weight"]
                    out[f"{theirs}.attention.rel_attn_embed.weight"] = table
            for p in ("q_proj", "k_proj", "v_proj"):
                out[f"{theirs}.attention.{p}.weight"] = att[p][rows]
                out[f"{theirs}.attention.{p}.bias"] = hf[f"{ours}.attention.{p}.bias"][rows]
            out[f"{theirs}.attention.out_proj.weight"] = hf[f"{ours}.attention.out_proj.weight"][
                :, rows
            ]
            out[f"{theirs}.attention.out_proj.bias"] = hf[f"{ours}.attention.out_proj.bias"]
        ff = f"{ours}.feed_forward"
        w1, b1 = hf[f"{ff}.intermediate_dense.weight"], hf[f"{ff}.intermediate_dense.bias"]
        w2, b2 = hf[f"{ff}.output_dense.weight"], hf[f"{ff}.output_dense.bias"]
        keep = np.flatnonzero((np.abs(w1).sum(1) > 0) | (b1 != 0) | (np.abs(w2).sum(0) > 0))
        units.append(len(keep))
        if len(keep):
            out[f"{theirs}.feed_forward.intermediate_dense.weight"] = w1[keep]
            out[f"{theirs}.feed_forward.intermediate_dense.bias"] = b1[keep]
            out[f"{theirs}.feed_forward.output_dense.weight"] = w2[:, keep]
            out[f"{theirs}.feed_forward.output_dense.bias"] = b2
    return out, their_config(cfg, heads, units)


def head_state(heads: Sequence[dict], head_index: Sequence[int], mode: str) -> dict:
    """Their `distill_linear_projs` state dict (torch Linear weights are (out, in))."""
    prefix = "" if mode == "layer2layer" else ".0"  # predlayer: Sequential(Linear, GELU)
    out = {}
    for j, h in enumerate(head_index):
        out[f"{j}{prefix}.weight"] = np.asarray(heads[h]["kernel"]).T
        out[f"{j}{prefix}.bias"] = np.asarray(heads[h]["bias"])
    return out


def write(
    path: str | pathlib.Path,
    cfg: EncoderConfig,
    params: Any,
    heads: Sequence[dict],
    head_index: Sequence[int],
    mode: str,
) -> pathlib.Path:
    """Saves their final checkpoint (save_final_ckpt.py L39-46) at `path` (needs torch)."""
    import torch

    state, config = state_and_config(cfg, params)

    def tensors(d):
        return {k: torch.from_numpy(np.array(v, np.float32)) for k, v in d.items()}

    path = pathlib.Path(path)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "state_dict": tensors(state),
            "config": config,
            "distill_linear_projs": tensors(head_state(heads, head_index, mode)),
        },
        tmp,
    )
    tmp.replace(path)
    return path
