"""Reads a DPHuBERT / DPWavLM final checkpoint into our uniform-width encoder, zero-padded.

The format is what pyf98/DPHuBERT's `save_final_ckpt.py` writes (L31-46, commit c18093f): a
torch pickle {"state_dict", "config", "distill_linear_projs"}, the config being the kwargs of
their `wav2vec2_model` (`wav2vec2/model.py` L172-207; WavLM when "encoder_remaining_heads" is
present, L175-176) after `prune.py` L47-59 wrote the per-layer widths into it.

Their pruned layers differ in width; ours are one `nn.scan` with one width. Every layer is
zero-padded to the widest: heads to hidden_size / head_dim (our attention needs all of them;
a zero head has zero q, k, v, so its output is 0), FFN units to the largest kept count (a zero
unit is gelu(0) = 0 into zero output weights), and a removed attention or FFN block (their
`use_attention` / `use_feed_forward` False, `components.py` L835-856) is all zeros, its output
bias included, which is exactly the block's absence. CNN channels need no padding: our config
holds one width per conv, so the GroupNorm / LayerNorm over conv channels and the projection's
LayerNorm see exactly their channels. Their `dummy_weight` (the last conv's soft mask,
`components.py` L152-156, L184, L219-223) becomes our `feature_scale` when it is not all ones.
WavLM heads go back to their original slots (`remaining_heads`), since the gated relative
bias is computed for every head (`components.py` L637-647).

Zero-padding is function-preserving (tests/test_pruning.py checks their hidden states within
1e-4) but saves nothing: the padded model costs what the unpruned one does. Training a pruned
student with real savings (an unscanned heterogeneous stack) is issue 24's open design item 3.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from stackdistill.models.config import EncoderConfig

UNPRUNED_FLAGS = (
    "extractor_prune_conv_channels",
    "encoder_prune_attention_heads",
    "encoder_prune_attention_layer",
    "encoder_prune_feed_forward_intermediate",
    "encoder_prune_feed_forward_layer",
)


def is_dp_checkpoint(path: pathlib.Path) -> bool:
    """True for a single file (their .pth), which `teacher.load` then reads with `read`."""
    return path.is_file()


def load_torch(path: pathlib.Path) -> dict[str, Any]:
    """The checkpoint dict (tensors as float32 numpy), refusing what is not their format."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path} is a PyTorch pickle: reading it needs torch") from e
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is one message
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
    if not isinstance(ckpt, dict) or not {"state_dict", "config"} <= set(ckpt):
        raise ValueError(
            f"{path}: not a DPHuBERT/DPWavLM checkpoint (save_final_ckpt.py writes a dict "
            "with 'state_dict' and 'config'); for a transformers model pass its directory"
        )
    state = {k: v.float().numpy() for k, v in ckpt["state_dict"].items()}
    return {"state_dict": state, "config": dict(ckpt["config"])}


def encoder_config(config: Mapping[str, Any], dummy_weight: np.ndarray) -> EncoderConfig:
    """Our (padded, uniform) EncoderConfig for their pruned config."""
    gated = [k for k in UNPRUNED_FLAGS if config.get(k)]
    if gated:
        raise ValueError(
            f"config has pruning gates on ({gated}): this is a checkpoint before pruning; "
            "run their prune.py (and final distillation) first"
        )
    if config.get("normalize_waveform"):
        raise ValueError(
            "config normalize_waveform=True: their model normalises each waveform inside, ours "
            "does not; normalise the input yourself and set it False, or use a model without it"
        )
    wavlm = "encoder_remaining_heads" in config
    d = int(config["encoder_embed_dim"])
    n = int(config["encoder_num_layers"])
    if wavlm:
        totals = set(config["encoder_total_num_heads"])
        if len(totals) != 1:
            raise ValueError(f"encoder_total_num_heads {sorted(totals)} differ between layers")
        num_heads = totals.pop()
        if not config["encoder_use_attention"][0]:
            raise ValueError(
                "WavLM layer 0's attention was pruned away with its relative position table: "
                "their later layers then run without position bias, which our encoder cannot"
            )
    else:
        head_dim = int(config["encoder_head_dim"])
        if d % head_dim:
            raise ValueError(f"encoder_embed_dim {d} is not a multiple of head_dim {head_dim}")
        num_heads = d // head_dim
    ffn = [
        f
        for f, on in zip(config["encoder_ff_interm_features"], config["encoder_use_feed_forward"])
        if on
    ]
    conv = [tuple(int(x) for x in c) for c in config["extractor_conv_layer_config"]]
    fields = dict(
        model_type="wavlm" if wavlm else "hubert",
        hidden_size=d,
        num_layers=n,
        num_heads=num_heads,
        intermediate_size=max(ffn + [1]),
        conv_dim=tuple(c[0] for c in conv),
        conv_kernel=tuple(c[1] for c in conv),
        conv_stride=tuple(c[2] for c in conv),
        conv_bias=bool(config["extractor_conv_bias"]),
        feat_extract_norm={"group_norm": "group", "layer_norm": "layer"}[config["extractor_mode"]],
        feat_proj_layer_norm=True,
        num_conv_pos_embeddings=int(config["encoder_pos_conv_kernel"]),
        num_conv_pos_embedding_groups=int(config["encoder_pos_conv_groups"]),
        do_stable_layer_norm=bool(config["encoder_layer_norm_first"]),
        feature_scale=bool(np.any(dummy_weight != 1.0)),
    )
    if wavlm:
        fields.update(
            num_buckets=int(config["encoder_num_buckets"]),
            max_bucket_distance=int(config["encoder_max_distance"]),
        )
    return EncoderConfig(**fields)


def _head_slots(config: Mapping[str, Any], layer: int, num_heads: int) -> list[int]:
    if "encoder_remaining_heads" in config:
        return list(config["encoder_remaining_heads"][layer])
    return list(range(int(config["encoder_num_heads"][layer])))


def to_hf_state_dict(
    cfg: EncoderConfig, config: Mapping[str, Any], state: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Their pruned tensors, zero-padded, under transformers' names (for convert.py)."""
    src = dict(state)
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in src:
            raise ValueError(f"tensor {name!r} missing from the state dict for its config")
        used.add(name)
        return src[name]

    out: dict[str, np.ndarray] = {}
    for i in range(len(cfg.conv_dim)):
        out[f"feature_extractor.conv_layers.{i}.conv.weight"] = take(
            f"feature_extractor.conv_layers.{i}.conv.weight"
        )
        for leaf in ("conv.bias", "layer_norm.weight", "layer_norm.bias"):
            if f"feature_extractor.conv_layers.{i}.{leaf}" in src:
                out[f"feature_extractor.conv_layers.{i}.{leaf}"] = take(
                    f"feature_extractor.conv_layers.{i}.{leaf}"
                )
    dummy = take("feature_extractor.dummy_weight")
    if cfg.feature_scale:
        out["feature_extractor.feature_scale"] = dummy
    for leaf in ("layer_norm.weight", "layer_norm.bias", "projection.weight", "projection.bias"):
        out[f"feature_projection.{leaf}"] = take(f"encoder.feature_projection.{leaf}")
    t = "encoder.transformer"
    for leaf in ("conv.weight_g", "conv.weight_v", "conv.bias"):
        out[f"encoder.pos_conv_embed.{leaf}"] = take(f"{t}.pos_conv_embed.{leaf}")
    for leaf in ("weight", "bias"):
        out[f"encoder.layer_norm.{leaf}"] = take(f"{t}.layer_norm.{leaf}")

    d, h = cfg.hidden_size, cfg.hidden_size // cfg.num_heads
    f = cfg.intermediate_size
    for i in range(cfg.num_layers):
        theirs, ours = f"{t}.layers.{i}", f"encoder.layers.{i}"
        for norm in ("layer_norm", "final_layer_norm"):
            for leaf in ("weight", "bias"):
                out[f"{ours}.{norm}.{leaf}"] = take(f"{theirs}.{norm}.{leaf}")
        # Attention: kept heads in their slots, the rest (or all, if removed) zero.
        q = {p: np.zeros((d, d), np.float32) for p in ("q_proj", "k_proj", "v_proj")}
        qb = {p: np.zeros((d,), np.float32) for p in q}
        out_w, out_b = np.zeros((d, d), np.float32), np.zeros((d,), np.float32)
        if config["encoder_use_attention"][i]:
            rows = np.concatenate(
                [np.arange(s * h, (s + 1) * h) for s in _head_slots(config, i, cfg.num_heads)]
            )
            for p in q:
                q[p][rows] = take(f"{theirs}.attention.{p}.weight")
                qb[p][rows] = take(f"{theirs}.attention.{p}.bias")
            out_w[:, rows] = take(f"{theirs}.attention.out_proj.weight")
            out_b = take(f"{theirs}.attention.out_proj.bias")
        for p in q:
            out[f"{ours}.attention.{p}.weight"], out[f"{ours}.attention.{p}.bias"] = q[p], qb[p]
        out[f"{ours}.attention.out_proj.weight"], out[f"{ours}.attention.out_proj.bias"] = (
            out_w,
            out_b,
        )
        if cfg.model_type == "wavlm":
            gates = {
                "gru_rel_pos_linear.weight": (8, h),
                "gru_rel_pos_linear.bias": (8,),
                "gru_rel_pos_const": (1, cfg.num_heads, 1, 1),
            }
            for leaf, shape in gates.items():
                name = f"{theirs}.attention.{leaf}"
                out[f"{ours}.attention.{leaf}"] = (
                    take(name) if name in src else np.zeros(shape, np.float32)
                )
            if i == 0:
                out[f"{ours}.attention.rel_attn_embed.weight"] = take(
                    f"{theirs}.attention.rel_attn_embed.weight"
                )
        # Feed-forward: kept units first, then zeros (their unit order is arbitrary anyway).
        w1, b1 = np.zeros((f, d), np.float32), np.zeros((f,), np.float32)
        w2, b2 = np.zeros((d, f), np.float32), np.zeros((d,), np.float32)
        if config["encoder_use_feed_forward"][i]:
            k = int(config["encoder_ff_interm_features"][i])
            w1[:k] = take(f"{theirs}.feed_forward.intermediate_dense.weight")
            b1[:k] = take(f"{theirs}.feed_forward.intermediate_dense.bias")
            w2[:, :k] = take(f"{theirs}.feed_forward.output_dense.weight")
            b2 = take(f"{theirs}.feed_forward.output_dense.bias")
        ff = f"{ours}.feed_forward"
        out[f"{ff}.intermediate_dense.weight"], out[f"{ff}.intermediate_dense.bias"] = w1, b1
        out[f"{ff}.output_dense.weight"], out[f"{ff}.output_dense.bias"] = w2, b2

    unexpected = sorted(k for k in set(src) - used if not k.startswith("aux."))
    if unexpected:
        raise ValueError(f"tensors not used by the config: {unexpected}")
    return out


def read(path: str | pathlib.Path) -> tuple[EncoderConfig, dict[str, Any]]:
    """(EncoderConfig, float32 numpy params) of a DPHuBERT/DPWavLM final checkpoint."""
    from stackdistill import convert

    path = pathlib.Path(path)
    ckpt = load_torch(path)
    state, config = ckpt["state_dict"], ckpt["config"]
    try:
        dummy = state.get("feature_extractor.dummy_weight")
        if dummy is None:
            raise ValueError("tensor 'feature_extractor.dummy_weight' missing")
        cfg = encoder_config(config, dummy)
        params = convert.state_dict_to_params(cfg, to_hf_state_dict(cfg, config, state))
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e
    return cfg, params
