"""The ARMHuBERT repository's checkpoint format (`config.export.format="armhubert"`).

sungnyun/ARMHuBERT's s3prl upstreams (models/armhubert/expert.py L24-43, the same in
models/maskhubert/expert.py) read two files: a yaml whose `distiller` block is passed as
`CustomStudentModelConfig(**cfg["distiller"])` (expert.py L25-34), and a Lightning `.ckpt`
whose `state_dict` entries containing "student_model" lose their first 14 characters
("student_model.") and are loaded strictly into `CustomStudentModel` (expert.py L40-43).
This module writes both, `<out>/student.ckpt` and `<out>/student.yaml`, key for key:

- attention-reuse students (`layers_per_block` > 1) as `models/armhubert` builds them (yaml
  `model: armhubert`, with `reuse_pattern`), the others as `models/maskhubert` (its config has
  no `reuse_pattern` field: maskhubert/model.py L21-235);
- the `.ckpt` holds what Lightning 1.7.7 (their requirements.txt) saves that costs nothing:
  `state_dict`, `epoch`, `global_step`, `pytorch-lightning_version`, and `hyper_parameters`
  = `{"cfg": <the yaml dict>}`: W2V2Distil.__init__(self, cfg) calls save_hyperparameters()
  (train.py L32-34), so Lightning stores the yaml under its argument's name, not bare.

`read(ckpt, yaml)` goes the other way, so their published checkpoints (README "Checkpoints")
can be evaluated (`superb` upstream spec `arm:CKPT[,YAML]`) or trained on here.

The names and shapes come from their module code (cited at `_LAYER`, `_stem`, `state_dict`);
the tests check them against a hand list made from that code. fairseq is not installed here,
so their `CustomStudentModel` cannot be instantiated: no test loads a written file into it.
The yaml is written with PyYAML (a dependency of transformers), the `.ckpt` with torch.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from stackdistill import stacking
from stackdistill.models.config import EncoderConfig

log = logging.getLogger("stackdistill")

NAME = "student"
FILES = (f"{NAME}.ckpt", f"{NAME}.yaml")  # what this format writes (an overwrite removes these)
PREFIX = "student_model."  # expert.py L42: k[14:] for k containing "student_model"
LIGHTNING_VERSION = "1.7.7"  # requirements.txt
Params = dict[str, Any]

# Our per-layer param paths -> fairseq names inside encoder.layers.{i}:
# TransformerSentenceEncoderLayer (armhubert/module.py L503-523: self_attn = fairseq
# MultiheadAttention with k_proj/v_proj/q_proj/out_proj, fairseq multihead_attention.py
# L123-141, no bias_k/bias_v; self_attn_layer_norm, fc1, fc2, final_layer_norm) and
# TransformerSentenceEncoderLayerReuse (reusing_module.py L1006-1026: self_attn has v_proj
# and out_proj only, L158-179, bias_v None as add_bias_v=False).
_LAYER = {
    "attention": "self_attn",
    "layer_norm": "self_attn_layer_norm",
    "feed_forward/intermediate_dense": "fc1",
    "feed_forward/output_dense": "fc2",
    "final_layer_norm": "final_layer_norm",
}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


class NotExpressible(ValueError):
    """The student has a part their CustomStudentModel cannot hold."""


def why_not(cfg: EncoderConfig, heads: Mapping[str, Any]) -> list[str]:
    """Every reason the student does not fit their CustomStudentModel (empty: it fits)."""
    reasons = []
    if cfg.model_type != "hubert":
        reasons.append(
            f"model_type {cfg.model_type!r}: their student has the conv positional embedding "
            "only, no relative position bias"
        )
    if cfg.do_stable_layer_norm:
        reasons.append("pre-LN layers: we export post-LN students only (layer_norm_first=False)")
    if not cfg.feat_proj_layer_norm:
        reasons.append("no LayerNorm on the CNN output: theirs always has one (model.py L286)")
    if cfg.feat_proj and cfg.conv_dim[-1] == cfg.hidden_size:
        reasons.append(
            "a projection between equal widths: their post_extract_proj exists only when the "
            "CNN width differs from encoder_embed_dim (model.py L270-274)"
        )
    if cfg.feature_scale:
        reasons.append("feature_scale (a DPHuBERT per-channel CNN scale): no such tensor")
    if cfg.layer_norm_eps != 1e-5:
        reasons.append(f"layer_norm_eps {cfg.layer_norm_eps}: fairseq's LayerNorms use 1e-5")
    if stacking.LAYERS_KEY not in heads:
        reasons.append(
            "per-target heads: their checkpoints hold layer-wise heads, one per layer "
            "(layerwise_proj, model.py L320-330); train with config.student.head='layerwise'"
        )
    else:
        kernel = np.asarray(heads[stacking.LAYERS_KEY]["kernel"])
        kernel = kernel.reshape(-1, *kernel.shape[-2:])
        bias = np.asarray(heads[stacking.LAYERS_KEY]["bias"]).reshape(kernel.shape[0], -1)
        if kernel.shape[-1] == cfg.hidden_size and not (
            np.array_equal(kernel, np.broadcast_to(np.eye(cfg.hidden_size), kernel.shape))
            and not bias.any()
        ):
            reasons.append(
                "layer-wise heads as wide as the student: their LayerWiseProjHead then has no "
                "Linear (module.py L649-654), only an identity"
            )
    return reasons


def _conv_layers_string(cfg: EncoderConfig) -> str:
    convs = zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride, strict=True)
    return "[" + ", ".join(f"({d}, {k}, {s})" for d, k, s in convs) + "]"


def distiller_config(cfg: EncoderConfig, head_dim: int) -> dict[str, Any]:
    """The yaml `distiller` block: every CustomStudentModelConfig field, describing `cfg`.

    Fields and order as armhubert/model.py L22-246 (maskhubert/model.py has all but
    `reuse_pattern`); the transformer-only values (no time reduction, no conformer) are theirs.
    """
    k = cfg.layers_per_block
    d = {
        "extractor_mode": "default" if cfg.feat_extract_norm == "group" else "layer_norm",
        "encoder_layers": cfg.num_layers,
        "encoder_embed_dim": cfg.hidden_size,
        "encoder_ffn_embed_dim": cfg.intermediate_size,
        "encoder_attention_heads": cfg.num_heads,
        "activation_fn": "gelu",
        "layer_grad_scale": bool(cfg.layer_grad_scale),
        "layer_type": "transformer",
        "dropout": float(cfg.dropout),
        "attention_dropout": float(cfg.attention_dropout),
        "activation_dropout": float(cfg.activation_dropout),
        "encoder_layerdrop": 0.0,
        "dropout_input": float(cfg.dropout_input),
        "final_dim": 256,  # unused by the student (their yaml's value)
        "layer_norm_first": bool(cfg.do_stable_layer_norm),
        "conv_feature_layers": _conv_layers_string(cfg),
        "conv_bias": bool(cfg.conv_bias),
        "feature_grad_mult": float(cfg.feature_grad_mult),
        "freeze_student_mask": False,
        "update_teacher_mask": False,
        "conv_pos": cfg.num_conv_pos_embeddings,
        "conv_pos_groups": cfg.num_conv_pos_embedding_groups,
        "pos_conv_depth": 1,
        "max_positions": 100000,
        "checkpoint_activations": False,
        "required_seq_len_multiple": 1,
        "crop_seq_to_multiple": 1,
        "depthwise_conv_kernel_size": 31,
        "attn_type": "",
        "pos_enc_type": "abs",
        "fp16": cfg.dtype != "float32",
        "init_conv_layers": False,
        "init_encoder_layers": 0,
        "pred_head_inter_dim": 0,
        "pred_head_final_dim": int(head_dim),
        "pred_layer_id": f"[{cfg.num_layers - 1}]",
        "layerwise_proj": True,
        "enable_tr_layer": False,  # model.py L311-317, reusing_module.py L1197: no tr layer
        # Unused without a time-reduction layer; the values of their 960 h yamls (L86-90).
        "tr_reduce_factor": 2 if k > 1 else 1,
        "tr_layer_type": "conv1d",
        "tr_conv1d_kernel": 2,
        "tr_layer_index": 0,
    }
    if k > 1:  # reusing_module.py L1231-1247: True attends, False reuses the previous map
        pattern = ([True] + [False] * (k - 1)) * cfg.num_blocks
        d["reuse_pattern"] = "[" + ", ".join(str(p) for p in pattern) + "]"
    return d


def yaml_config(
    cfg: EncoderConfig, head_dim: int, config: ml_collections.ConfigDict | None = None
) -> dict[str, Any]:
    """Their yaml layout (conf/armhubert/armhubert-960.yaml): teacher/train/distiller/...

    The non-distiller blocks record the run's values where ours map onto theirs; only
    `distiller` is read by their upstream.
    """
    c = config or ml_collections.ConfigDict()
    masking = dict(c.get("distill", {}).get("masking", None) or {})
    optim = c.get("optim", ml_collections.ConfigDict())
    teacher = {"teacher_model": str(c.get("teacher", {}).get("name", ""))}
    teacher.update(
        mask_length=int(masking.get("length", 10)),
        mask_prob=float(masking.get("prob", 0.8)),
        mask_selection=str(masking.get("selection", "uniform")),
        mask_other=float(masking.get("other", 0.0)),
        no_mask_overlap=bool(masking.get("no_overlap", True)),
        mask_min_space=int(masking.get("min_space", 1)),
    )
    train = {
        "base_dir": "./",
        "output_dir": "stackdistill-export",
        "checkpoint": None,
        "batch_size": int(c.get("batch_size", 0) or 0),
        "rec_loss_weight": float(c.get("distill", {}).get("rec_weight", 1.0)),
        "rec_loss_type": str(c.get("distill", {}).get("rec_loss", "mse")),
        "random_layer_weight": float(c.get("distill", {}).get("hint_weight", 0.1)),
        "delete_projections": False,
        "specaug": False,
        "mask_prob_schedule": "",
    }
    optimizer = {
        "name": "AdamW_with_schedule",
        "lr": float(optim.get("learning_rate", 5e-4)),
        "warmup_proportion": float(optim.get("warmup_fraction", 0.05)),
        "betas": [float(optim.get("b1", 0.9)), float(optim.get("b2", 0.98))],
        "eps": float(optim.get("eps", 1e-6)),
        "weight_decay": float(optim.get("weight_decay", 1e-6)),
    }
    data = {"libri_root": str(c.get("data", {}).get("path", ""))}
    return {
        "teacher": teacher,
        "train": train,
        "distiller": distiller_config(cfg, head_dim),
        "optimizer": optimizer,
        "data": data,
        # train.py L408, L420: which models/ package builds the student (models/__init__.py)
        "model": "armhubert" if cfg.layers_per_block > 1 else "maskhubert",
    }


def _stem(path: tuple[str, ...], group_norm: bool) -> str:
    """Their name of a non-layer tensor of ours (path without its leaf)."""
    if path[0] == "feature_extractor":  # module.py L55-74, L77-93
        i = path[1].removeprefix("conv_layers_")
        if path[2] == "conv":
            return f"feature_extractor.conv_layers.{i}.0"
        # default: Sequential(conv, dropout, Fp32GroupNorm, GELU); layer_norm: the norm is
        # Sequential(TransposeLast, Fp32LayerNorm, TransposeLast) at index 2.
        return f"feature_extractor.conv_layers.{i}.2" + ("" if group_norm else ".1")
    if path[0] == "feature_projection":  # model.py L286 layer_norm, L270-274 post_extract_proj
        return "layer_norm" if path[1] == "layer_norm" else "post_extract_proj"
    if path[:2] == ("encoder", "pos_conv_embed"):  # reusing_module.py L1185-1186: Sequential
        return "encoder.pos_conv.0"
    if path[:2] == ("encoder", "layer_norm"):  # reusing_module.py L1254
        return "encoder.layer_norm"
    raise NotExpressible(f"no place for {'/'.join(path)} in their CustomStudentModel")


def _layer_name(rest: tuple[str, ...]) -> str:
    """Their name, inside encoder.layers.{i}, of our per-layer path `rest` (with its leaf)."""
    inner = "/".join(rest[:-1])
    for ours, theirs in _LAYER.items():
        if inner == ours or inner.startswith(ours + "/"):
            tail = inner.removeprefix(ours).strip("/").replace("/", ".")
            return ".".join(p for p in (theirs, tail, _LEAF[rest[-1]]) if p)
    raise NotExpressible(f"no place for layer tensor {inner} in their layers")


def _to_torch(leaf: str, x: np.ndarray) -> np.ndarray:
    if leaf == "kernel":  # Linear (in, out) -> (out, in); Conv1d (k, in, out) -> (out, in, k)
        return np.ascontiguousarray(x.T if x.ndim == 2 else x.transpose(2, 1, 0))
    return np.ascontiguousarray(x)


def weight_norm_parts(kernel_kio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weight_g, weight_v) of the positional conv with g * v / ||v|| == our kernel.

    torch weight_norm(dim=2) (reusing_module.py L1185): ||v|| over dims 0 and 1 of the
    (out, in/groups, k) weight, g of shape (1, 1, k). v = W and g = ||W|| give W back exactly.
    """
    v = np.ascontiguousarray(np.asarray(kernel_kio, np.float32).transpose(2, 1, 0))
    g = np.sqrt((v.astype(np.float64) ** 2).sum(axis=(0, 1), keepdims=True))
    return g.astype(np.float32), v


def _per_layer(layers: Params, k: int) -> list[tuple[str, Params]]:
    """Our scanned layer params as one (kind, tree) per layer, in depth order."""
    n = jax.tree_util.tree_leaves(layers)[0].shape[0]  # layers or blocks
    if k == 1:
        return [("attend", jax.tree_util.tree_map(lambda x, i=i: x[i], layers)) for i in range(n)]
    out = []
    for b in range(n):
        out.append(("attend", jax.tree_util.tree_map(lambda x, b=b: x[b], layers["attend"])))
        for j in range(k - 1):
            out.append(
                ("reuse", jax.tree_util.tree_map(lambda x, b=b, j=j: x[b, j], layers["reuse"]))
            )
    return out


def state_dict(cfg: EncoderConfig, params: Params) -> dict[str, np.ndarray]:
    """Their CustomStudentModel state dict (numpy float32) of our student `params`."""
    encoder = jax.device_get(params["encoder"])
    heads = jax.device_get(params["heads"])
    group = cfg.feat_extract_norm == "group"
    out: dict[str, np.ndarray] = {}
    for key_path, leaf in jax.tree_util.tree_leaves_with_path(encoder):
        path = tuple(k.key for k in key_path)
        x = np.asarray(leaf, np.float32)
        if path == ("masked_spec_embed",):
            out["mask_emb"] = x  # model.py L288-290
        elif path == ("encoder", "pos_conv_embed", "conv", "kernel"):
            g, v = weight_norm_parts(x)
            out["encoder.pos_conv.0.weight_g"], out["encoder.pos_conv.0.weight_v"] = g, v
        elif not stacking.under_layers(key_path):
            out[f"{_stem(path[:-1], group)}.{_LEAF[path[-1]]}"] = _to_torch(path[-1], x)
    if "masked_spec_embed" not in encoder:  # theirs always has one; unused without masking
        out["mask_emb"] = np.zeros((cfg.hidden_size,), np.float32)
    layers = encoder["encoder"]["layers"]
    for i, (_, tree) in enumerate(_per_layer(layers, cfg.layers_per_block)):
        for key_path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            rest = tuple(k.key for k in key_path)
            x = np.asarray(leaf, np.float32)
            out[f"encoder.layers.{i}.{_layer_name(rest)}"] = _to_torch(rest[-1], x)
    stack = heads[stacking.LAYERS_KEY]
    kernel = np.asarray(stack["kernel"], np.float32)
    kernel = kernel.reshape(-1, *kernel.shape[-2:])
    bias = np.asarray(stack["bias"], np.float32).reshape(kernel.shape[0], -1)
    if kernel.shape[-1] != cfg.hidden_size:  # module.py L649-654: identity heads hold nothing
        for i in range(kernel.shape[0]):  # model.py L323-330: proj_head = ModuleList
            out[f"proj_head.{i}.lin_proj.weight"] = np.ascontiguousarray(kernel[i].T)
            out[f"proj_head.{i}.lin_proj.bias"] = bias[i]
    return out


def export_checkpoint(
    cfg: EncoderConfig,
    params: Params,
    out_dir: str | pathlib.Path,
    config: ml_collections.ConfigDict | None = None,
    step: int = 0,
) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes `<out_dir>/student.ckpt` and `student.yaml`; returns their paths."""
    try:
        import torch
        import yaml
    except ImportError as e:  # torch is in the dev extra only
        raise ImportError("the armhubert export writes a torch file: pip install torch") from e
    cfg = cfg.at_depth_of(params["encoder"])
    heads = jax.device_get(params["heads"])
    reasons = why_not(cfg, heads)
    if reasons:
        raise NotExpressible(
            "this student cannot be written as the ARMHuBERT repository's CustomStudentModel:\n"
            + "\n".join(f"  - {r}" for r in reasons)
        )
    head_dim = int(np.shape(heads[stacking.LAYERS_KEY]["bias"])[-1])
    cfg_yaml = yaml_config(cfg, head_dim, config)
    state = {PREFIX + k: torch.from_numpy(v.copy()) for k, v in state_dict(cfg, params).items()}
    ckpt = {
        "epoch": 0,
        "global_step": int(step),
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "state_dict": state,
        "hparams_name": "kwargs",
        "hyper_parameters": {"cfg": cfg_yaml},
    }
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, yaml_path = out / FILES[0], out / FILES[1]
    torch.save(ckpt, ckpt_path)
    yaml_path.write_text(yaml.safe_dump(cfg_yaml, sort_keys=False))
    return ckpt_path, yaml_path


def write(
    config: ml_collections.ConfigDict,
    workdir: str,
    cfg: EncoderConfig,
    params: Mapping[str, Any],
    meta: Mapping[str, Any],
    out: pathlib.Path,
    identity: Mapping[str, Any],
) -> pathlib.Path:
    """The checkpoint's student (`meta`: its metadata) as their `.ckpt` + `.yaml`."""
    del workdir, identity
    ckpt, yaml_path = export_checkpoint(cfg, dict(params), out, config, int(meta["step"]))
    log.info("exported step %d in the ARMHuBERT format: %s, %s", meta["step"], ckpt, yaml_path)
    return ckpt
