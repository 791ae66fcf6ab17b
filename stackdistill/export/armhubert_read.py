"""Reading the ARMHuBERT repository's `.ckpt` + yaml into our EncoderConfig and params.

The inverse of `export.armhubert`: the yaml's `distiller` block (or, without a yaml, the copy
Lightning keeps in the checkpoint's `hyper_parameters["cfg"]`, train.py L32-34) gives the
architecture, with CustomStudentModelConfig's defaults (armhubert/model.py L22-246) for the
fields it omits; the `student_model.*` tensors (expert.py L42) are matched strictly, every
tensor used once, by the same names the writer uses. Their published checkpoints (README
"Checkpoints") then evaluate with our SUPERB (`arm:CKPT[,YAML]`) or initialise a run.
Only load checkpoints you trust: a Lightning `.ckpt` is a pickle (see `load_checkpoint`).
"""

from __future__ import annotations

import ast
import logging
import pathlib
import pickle
from typing import Any

import numpy as np

from stackdistill import convert, stacking
from stackdistill.export import armhubert as fmt
from stackdistill.models.config import EncoderConfig

log = logging.getLogger("stackdistill")

# CustomStudentModelConfig defaults (armhubert/model.py L25-246) of the fields read here;
# reuse_pattern's default (12 x True, L242-246) is "every layer attends" at any depth.
DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_grad_scale": False,
    "layer_type": "transformer",
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "dropout_input": 0.0,
    "layer_norm_first": False,
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False,
    "feature_grad_mult": 1.0,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "pos_conv_depth": 1,
    "pred_head_final_dim": 768,
    "layerwise_proj": False,
    "enable_tr_layer": True,
}


def conv_layers(text: str) -> list[tuple[int, int, int]]:
    """Their `conv_feature_layers` string (a list expression with + and *), without eval."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            a, b = value(node.left), value(node.right)
            return a + b if isinstance(node.op, ast.Add) else a * b
        raise ValueError(f"conv_feature_layers {text!r}: only lists of (dim, kernel, stride)")

    layers = value(ast.parse(text, mode="eval").body)
    if not isinstance(layers, list) or not all(len(t) == 3 for t in layers):
        raise ValueError(f"conv_feature_layers {text!r}: expected [(dim, kernel, stride), ...]")
    return [tuple(t) for t in layers]


def block_size(pattern: list[bool], where: str) -> int:
    """Layers per reuse block of a reuse_pattern: one (True, False, ..., False) repeated."""
    n = len(pattern)
    starts = [i for i, p in enumerate(pattern) if p]
    k = starts[1] - starts[0] if len(starts) > 1 else n
    if not pattern or not pattern[0] or pattern != ([True] + [False] * (k - 1)) * (n // k):
        raise ValueError(
            f"{where}: reuse_pattern {pattern} is not one block (True, False, ..., False) "
            "repeated; our encoder scans identical blocks, so this student cannot be read"
        )
    return k


def encoder_config(distiller: dict[str, Any], where: str = "distiller") -> EncoderConfig:
    """The EncoderConfig of their student from the yaml `distiller` block."""
    d = {**DEFAULTS, **distiller}
    unsupported = {
        "layer_type": (d["layer_type"], "transformer"),
        "activation_fn": (d["activation_fn"], "gelu"),
        "pos_conv_depth": (d["pos_conv_depth"], 1),
        "enable_tr_layer": (bool(d["enable_tr_layer"]), False),
    }
    bad = [f"{k}={v!r} (supported: {ok!r})" for k, (v, ok) in unsupported.items() if v != ok]
    if bad:
        raise ValueError(f"{where}: this student is not readable here: {', '.join(bad)}")
    convs = conv_layers(str(d["conv_feature_layers"]))
    dims, kernels, strides = zip(*convs, strict=True)
    n = int(d["encoder_layers"])
    pattern = d.get("reuse_pattern")
    k = 1 if pattern is None else block_size([bool(p) for p in ast.literal_eval(pattern)], where)
    if pattern is not None and len(ast.literal_eval(pattern)) != n:
        raise ValueError(f"{where}: reuse_pattern has not encoder_layers={n} entries")
    width = int(d["encoder_embed_dim"])
    return EncoderConfig(
        model_type="hubert",
        hidden_size=width,
        num_layers=n,
        num_heads=int(d["encoder_attention_heads"]),
        intermediate_size=int(d["encoder_ffn_embed_dim"]),
        conv_dim=dims,
        conv_kernel=kernels,
        conv_stride=strides,
        conv_bias=bool(d["conv_bias"]),
        feat_extract_norm="group" if d["extractor_mode"] == "default" else "layer",
        feat_proj_layer_norm=True,  # model.py L286
        feat_proj=dims[-1] != width,  # model.py L270-274
        num_conv_pos_embeddings=int(d["conv_pos"]),
        num_conv_pos_embedding_groups=int(d["conv_pos_groups"]),
        do_stable_layer_norm=bool(d["layer_norm_first"]),
        dropout=float(d["dropout"]),
        attention_dropout=float(d["attention_dropout"]),
        activation_dropout=float(d["activation_dropout"]),
        dropout_input=float(d["dropout_input"]),
        feature_grad_mult=float(d["feature_grad_mult"]),
        layers_per_block=k,
        layer_grad_scale=bool(d["layer_grad_scale"]),
        mask_emb=True,  # model.py L288-290: every student has mask_emb
    )


class _LenientUnpickler(pickle.Unpickler):
    """Classes of packages not installed here (Lightning's AttributeDict) become dict."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return dict


class _LenientPickle:
    """A `pickle_module` for torch.load using `_LenientUnpickler`."""

    Unpickler = _LenientUnpickler
    load = pickle.load
    __name__ = "pickle"


def load_checkpoint(path: str | pathlib.Path) -> dict[str, Any]:
    """Their Lightning `.ckpt` as a dict (CPU tensors); Lightning need not be installed.

    torch's safe loader first; a checkpoint holding other classes (Lightning pickles its
    hyper-parameters as an AttributeDict) is unpickled in full, so load only trusted files.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=_LenientPickle
        )


def _fold(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """weight_norm(dim=2): W = g * v / ||v||; exactly v where g is ||v|| in float32."""
    norm = np.sqrt((v.astype(np.float64) ** 2).sum(axis=(0, 1), keepdims=True))
    if np.array_equal(g, norm.astype(np.float32)):  # written as v = W, g = ||W||: W is v
        return v.copy()
    scale = (g.astype(np.float64) / norm).astype(np.float32)
    return v * scale


def _from_torch(leaf: str, x: np.ndarray) -> np.ndarray:
    if leaf == "kernel":  # (out, in) -> (in, out); (out, in, k) -> (k, in, out)
        return np.ascontiguousarray(x.T if x.ndim == 2 else x.transpose(2, 1, 0))
    return x


def params_from_state_dict(
    cfg: EncoderConfig, state: dict[str, np.ndarray], distiller: dict[str, Any], where: str
) -> dict[str, Any]:
    """{"encoder", "heads"} from their (prefix-stripped) state dict; strict on both sides."""
    d = {**DEFAULTS, **distiller}
    used: set[str] = set()
    missing: list[str] = []

    def take(name: str) -> np.ndarray | None:
        if name not in state:
            missing.append(name)
            return None
        used.add(name)
        return np.asarray(state[name], np.float32)

    group = cfg.feat_extract_norm == "group"
    k = cfg.layers_per_block
    flat: dict[tuple[str, ...], np.ndarray] = {}
    bad: list[str] = []
    for path, shape in convert._param_shapes(cfg).items():
        if path == ("masked_spec_embed",):
            value = take("mask_emb")
        elif path == ("encoder", "pos_conv_embed", "conv", "kernel"):
            g, v = take("encoder.pos_conv.0.weight_g"), take("encoder.pos_conv.0.weight_v")
            value = None if g is None or v is None else _from_torch("kernel", _fold(g, v))
        elif path[:2] == ("encoder", "layers"):
            kind, rest = (path[2], path[3:]) if k > 1 else ("attend", path[2:])
            blocks = shape[0]
            inner = 1 if kind == "attend" else k - 1
            first = 0 if kind == "attend" else 1
            names = [
                f"encoder.layers.{b * k + first + j}.{fmt._layer_name(rest)}"
                for b in range(blocks)
                for j in range(inner)
            ]
            xs = [take(nm) for nm in names]
            value = None
            if all(x is not None for x in xs):
                stacked = np.stack([_from_torch(rest[-1], x) for x in xs])
                value = stacked.reshape(shape) if stacked.size == np.prod(shape) else stacked
        else:
            x = take(f"{fmt._stem(path[:-1], group)}.{fmt._LEAF[path[-1]]}")
            value = None if x is None else _from_torch(path[-1], x)
        if value is None:
            continue
        if value.shape != tuple(shape):
            bad.append(f"{'/'.join(path)}: checkpoint {value.shape}, yaml {tuple(shape)}")
        flat[path] = value
    heads = _heads(cfg, state, d, take)
    unexpected = sorted(set(state) - used)
    if not d["layerwise_proj"]:  # DistilHuBERT-style proj_head (model.py L331-337): not kept
        dropped = [n for n in unexpected if n.startswith("proj_head.")]
        if dropped:
            log.warning("%s: prediction heads of layerwise_proj=False not read: %s", where, dropped)
        unexpected = [n for n in unexpected if not n.startswith("proj_head.")]
    problems = [
        f"{what}: {names}"
        for what, names in (("missing", missing), ("unexpected", unexpected), ("shapes", bad))
        if names
    ]
    if problems:
        raise ValueError(f"{where} does not match its yaml; " + "; ".join(problems))
    return {"encoder": convert._unflatten(flat), "heads": heads}


def _heads(cfg: EncoderConfig, state, d: dict[str, Any], take) -> dict[str, Any]:
    """Layer-wise heads (model.py L320-330) as ours: (L, D, D_t), or (blocks, k, D, D_t)."""
    if not d["layerwise_proj"]:
        return {}
    n, width, out_dim = cfg.num_layers, cfg.hidden_size, int(d["pred_head_final_dim"])
    if out_dim == width:  # LayerWiseProjHead without lin_proj (module.py L649-654): identity
        kernel = np.broadcast_to(np.eye(width, dtype=np.float32), (n, width, width)).copy()
        bias = np.zeros((n, width), np.float32)
    else:
        ws = [take(f"proj_head.{i}.lin_proj.weight") for i in range(n)]
        bs = [take(f"proj_head.{i}.lin_proj.bias") for i in range(n)]
        if any(x is None for x in ws + bs):
            return {}
        kernel = np.stack([w.T for w in ws])
        bias = np.stack(bs)
    k = cfg.layers_per_block
    if k > 1:
        kernel = kernel.reshape(-1, k, *kernel.shape[1:])
        bias = bias.reshape(-1, k, bias.shape[-1])
    return {stacking.LAYERS_KEY: {"kernel": kernel, "bias": bias}}


def read(
    path_ckpt: str | pathlib.Path, path_yaml: str | pathlib.Path | None = None
) -> tuple[EncoderConfig, dict[str, Any]]:
    """(EncoderConfig, {"encoder", "heads"}) of their student checkpoint.

    `path_yaml` None: `<ckpt stem>.yaml` beside it if present, else the yaml Lightning kept in
    the checkpoint (`hyper_parameters["cfg"]`).
    """
    import yaml

    ckpt_path = pathlib.Path(path_ckpt).expanduser()
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ARMHuBERT checkpoint {ckpt_path} is not a file")
    ckpt = load_checkpoint(ckpt_path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{ckpt_path} is not a Lightning checkpoint (no 'state_dict')")
    sibling = ckpt_path.with_suffix(".yaml")
    if path_yaml is None and sibling.is_file():
        path_yaml = sibling
    if path_yaml is not None:
        where = str(path_yaml)
        cfg_yaml = yaml.safe_load(pathlib.Path(path_yaml).expanduser().read_text())
    else:
        where = f"{ckpt_path} hyper_parameters"
        hp = dict(ckpt.get("hyper_parameters") or {})
        cfg_yaml = hp.get("cfg", hp)
    if not isinstance(cfg_yaml, dict) or "distiller" not in cfg_yaml:
        raise ValueError(
            f"{where}: no 'distiller' block; pass the yaml their training wrote "
            "(results/pretrain/<output_dir>/<time>.yaml) as arm:CKPT,YAML"
        )
    distiller = dict(cfg_yaml["distiller"])
    cfg = encoder_config(distiller, where)
    state = {
        k[len(fmt.PREFIX) :]: v.detach().float().numpy()
        for k, v in ckpt["state_dict"].items()
        if "student_model" in k  # expert.py L42
    }
    return cfg, params_from_state_dict(cfg, state, distiller, f"{ckpt_path} ({where})")
