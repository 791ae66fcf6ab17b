"""The s3prl distiller format (`config.export.format="s3prl_distiller"`).

s3prl's `distiller_local` upstream (s3prl/upstream/distiller/builder.py) reads one torch file
`{"Config": {"distiller": {...}}, "Distiller": state_dict}`: it builds
`DistillerModel(DistillerConfig(Config["distiller"]))` (upstream/distiller/model.py) and loads
`Distiller` into it strictly. This module writes that file for students that model can
express: the DistilHuBERT shape (no LayerNorm before the projection, a projection, no conv
bias, Linear -> GELU -> Linear heads that all read the last layer). Anything else raises
`NotExpressible` saying why. Then

    S3PRLUpstream("distiller_local", path_or_url="<export>/distiller.ckpt")

gives `hidden_states` = [projection output, every layer, every head's prediction].
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from stackdistill import convert, stacking
from stackdistill.models import student
from stackdistill.models.config import EncoderConfig

log = logging.getLogger("stackdistill")

CKPT_NAME = "distiller.ckpt"
FILES = (CKPT_NAME,)  # what this format writes (an overwrite removes these)

# Our transformers state-dict names -> s3prl DistillerModel names (module.py, model.py).
_LAYER_RENAMES = (
    ("attention.", "self_attn."),
    ("layer_norm.", "self_attn_layer_norm."),
    ("feed_forward.intermediate_dense.", "fc1."),
    ("feed_forward.output_dense.", "fc2."),
)


class NotExpressible(ValueError):
    """The student has a part s3prl's DistillerModel cannot hold."""


def _why_not(cfg: EncoderConfig, heads: Mapping[str, Any], sources: Mapping[int, int]) -> list[str]:
    """Every reason the student does not fit DistillerModel (empty: it fits)."""
    depth = cfg.num_layers
    reasons = []
    if cfg.model_type != "hubert":
        reasons.append(f"model_type {cfg.model_type!r}: DistillerModel is a HuBERT encoder")
    if cfg.feat_proj_layer_norm:
        reasons.append(
            "a LayerNorm between the CNN front-end and the projection: DistillerModel has "
            "none (train with config.student.feat_proj_layer_norm=False)"
        )
    if cfg.conv_dim[-1] == cfg.hidden_size:
        reasons.append(
            f"CNN width {cfg.conv_dim[-1]} equals hidden_size: DistillerModel then has no "
            "post_extract_proj, and the student's projection would be dropped"
        )
    if cfg.layers_per_block > 1:
        reasons.append("attention-map reuse (config.student.reuse_pattern): no such layer")
    if not cfg.feat_proj:
        reasons.append("no feature projection (config.student.feat_proj=False)")
    if cfg.conv_bias:
        reasons.append("conv_bias=True: DistillerModel builds its CNN with conv_bias=False")
    if cfg.layer_norm_eps != 1e-5:
        reasons.append(f"layer_norm_eps {cfg.layer_norm_eps}: s3prl's LayerNorms use 1e-5")
    kinds = {student.head_type(h) for h in heads.values()}
    if kinds != {"mlp"}:
        reasons.append(
            "linear prediction heads: s3prl's expand-last output layer is Linear -> GELU -> "
            "Linear (train with config.student.head='mlp')"
        )
    elif any(h["fc1"]["kernel"].shape != (cfg.hidden_size,) * 2 for h in heads.values()):
        reasons.append("mlp heads whose inner width is not hidden_size")
    middle = {k: s for k, s in sources.items() if s != depth}
    if middle:
        reasons.append(
            f"heads on middle layers (teacher layer -> student hidden state {middle}): "
            f"DistillerModel's heads all read the last layer ({depth}); use "
            "config.distill.heads_on='last'"
        )
    if len({h["fc2"]["kernel"].shape[1] for h in heads.values() if "fc2" in h}) > 1:
        reasons.append("heads of different output widths: SplitLinear has one final_dim")
    return reasons


def distiller_config(
    cfg: EncoderConfig,
    teacher_layers: list[int],
    final_dim: int,
    cosine_loss: float = 1.0,
) -> dict[str, Any]:
    """Config["distiller"]: every field DistillerConfig reads, set to describe `cfg`."""
    convs = [(d, k, s) for d, k, s in zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)]
    return {
        "extractor_mode": "default" if cfg.feat_extract_norm == "group" else "layer_norm",
        "extractor_conv_feature_layers": repr(convs),  # DistillerModel eval()s this string
        "extractor_dropout": 0.0,
        "feature_grad_mult": float(cfg.feature_grad_mult),
        "conv_pos": cfg.num_conv_pos_embeddings,
        "conv_pos_groups": cfg.num_conv_pos_embedding_groups,
        "encoder_layers": cfg.num_layers,
        "encoder_embed_dim": cfg.hidden_size,
        "encoder_ffn_embed_dim": cfg.intermediate_size,
        "encoder_attention_heads": cfg.num_heads,
        "activation_fn": "gelu",
        "layer_norm_first": cfg.do_stable_layer_norm,
        "attention_type": "original",
        "dropout": float(cfg.dropout),
        "attention_dropout": float(cfg.attention_dropout),
        "activation_dropout": float(cfg.activation_dropout),
        "encoder_layerdrop": 0.0,
        "final_dim": final_dim,
        "out_layer_type": "expand-last",
        "out_layer_inter_dim": -1,  # -1: encoder_embed_dim
        "n_tasks": len(teacher_layers),
        "task_emb_type": "expand-last",
        "task_emb_size": 0,
        "layer_emb_size": 0,
        "loss_type": "l1",
        "feat_pen_loss": 0.0,
        "cosine_loss": float(cosine_loss),
        "pred_layer_id": list(teacher_layers),
        "init_teacher_conv_layers": True,
        "init_teacher_encoder_layers": True,
    }


def _rename(name: str, group_norm: bool) -> str:
    """One transformers HubertModel state-dict name -> its DistillerModel name."""
    if name.startswith("feature_projection.projection."):
        return name.replace("feature_projection.projection.", "post_extract_proj.")
    if name.startswith("feature_extractor.conv_layers."):
        # nn.Sequential(conv, dropout, norm, gelu); the layer-norm mode wraps its LayerNorm in
        # Sequential(TransposeLast, Fp32LayerNorm, TransposeLast).
        _, _, i, part, leaf = name.split(".", 4)
        prefix = f"feature_extractor.conv_layers.{i}"
        if part == "conv":
            return f"{prefix}.0.{leaf}"
        return f"{prefix}.2.{leaf}" if group_norm else f"{prefix}.2.1.{leaf}"
    if name.startswith("encoder.pos_conv_embed.conv."):
        leaf = name.removeprefix("encoder.pos_conv_embed.conv.")
        leaf = {
            "parametrizations.weight.original0": "weight_g",
            "parametrizations.weight.original1": "weight_v",
        }.get(leaf, leaf)
        return f"encoder.pos_conv.0.{leaf}"
    if name.startswith("encoder.layers."):
        _, _, i, rest = name.split(".", 3)
        for old, new in _LAYER_RENAMES:
            if rest.startswith(old):
                rest = new + rest.removeprefix(old)
                break
        return f"encoder.layers.{i}.{rest}"
    return name  # encoder.layer_norm.*


def distiller_state_dict(
    cfg: EncoderConfig, encoder: Any, heads: Mapping[str, Any], teacher_layers: list[int]
) -> dict[str, np.ndarray]:
    """DistillerModel's state dict (numpy, float32) of a student that fits it."""
    state = convert.params_to_state_dict(cfg, encoder)
    state.pop(convert.MASK_EMB, None)  # DistillerModel has no mask embedding
    out = {}
    for name, x in state.items():
        out[_rename(name, cfg.feat_extract_norm == "group")] = np.asarray(x, np.float32)
    fc1 = [heads[f"layer_{k}"]["fc1"] for k in teacher_layers]
    fc2 = [heads[f"layer_{k}"]["fc2"] for k in teacher_layers]
    # output_layer = Sequential(Linear(D, D * N), GELU, SplitLinear(D, N, final_dim)): the
    # first Linear's output is N task-major blocks of D (SplitLinear reshapes it to N x D).
    out["output_layer.0.weight"] = np.concatenate([np.asarray(h["kernel"]).T for h in fc1])
    out["output_layer.0.bias"] = np.concatenate([np.asarray(h["bias"]) for h in fc1])
    if len(teacher_layers) == 1:  # SplitLinear with one split is a plain nn.Linear
        out["output_layer.2.layer.weight"] = np.asarray(fc2[0]["kernel"]).T
        out["output_layer.2.layer.bias"] = np.asarray(fc2[0]["bias"])
    else:
        out["output_layer.2.weight"] = np.stack([np.asarray(h["kernel"]) for h in fc2])
        out["output_layer.2.bias"] = np.stack([np.asarray(h["bias"]) for h in fc2])[None, None]
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def export_distiller(
    cfg: EncoderConfig,
    params: Mapping[str, Any],
    out_dir: str | pathlib.Path,
    target_sources: Mapping[str | int, int],
    teacher: Mapping[str, Any] | None = None,
    cosine_loss: float = 1.0,
    step: int | None = None,
) -> pathlib.Path:
    """Writes `<out_dir>/distiller.ckpt` for s3prl's distiller_local; returns its path."""
    try:
        import torch
    except ImportError as e:  # torch is in the dev extra only
        raise ImportError(
            "the s3prl_distiller export writes a torch file: pip install torch"
        ) from e
    import jax

    encoder = jax.device_get(params["encoder"])
    heads = jax.device_get(params["heads"])
    depth = stacking.stack_depth(encoder)
    cfg = cfg.replace(num_layers=depth)
    sources = {int(k): int(v) for k, v in target_sources.items()}
    reasons = _why_not(cfg, heads, sources)
    if reasons:
        raise NotExpressible(
            "this student cannot be written as s3prl's DistillerModel:\n"
            + "\n".join(f"  - {r}" for r in reasons)
        )
    teacher_layers = sorted(sources)
    final_dim = int(heads[f"layer_{teacher_layers[0]}"]["fc2"]["kernel"].shape[1])
    state = distiller_state_dict(cfg, encoder, heads, teacher_layers)
    ckpt = {
        "Config": {
            "distiller": distiller_config(cfg, teacher_layers, final_dim, cosine_loss),
            "teacher": dict(teacher or {}),
        },
        "Distiller": {k: torch.tensor(v) for k, v in state.items()},
    }
    if step is not None:
        ckpt["Step"] = int(step)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out / CKPT_NAME)
    return out / CKPT_NAME


def write(
    config: ml_collections.ConfigDict,
    workdir: str,
    cfg: EncoderConfig,
    params: Mapping[str, Any],
    meta: Mapping[str, Any],
    out: pathlib.Path,
    identity: Mapping[str, Any],
) -> pathlib.Path:
    """The checkpoint's student (`meta`: its metadata) as s3prl's `distiller.ckpt`."""
    del workdir, identity
    path = export_distiller(
        cfg,
        params,
        out,
        meta["target_sources"],
        teacher={"model": config.teacher.name},
        cosine_loss=float(config.distill.get("cos_weight", 1.0)),
        step=int(meta["step"]),
    )
    log.info("exported step %d as s3prl's distiller to %s", meta["step"], path)
    return path
