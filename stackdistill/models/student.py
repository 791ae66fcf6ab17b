"""Students: the shared encoder at student size plus one prediction head per supervised layer.

Two families, both built from the teacher's config:
- deep-thin (the paper): 12 layers x 384, FFN 1536, 6 heads, the teacher's CNN front-end and
  its LayerNorm before the projection, one linear head per target, no dropout;
- DistilHuBERT as s3prl trains it (pretrain/distiller/config_model.yaml): 2 layers x 768, no
  LayerNorm between the CNN and the projection, the three dropouts 0.1, the front-end's
  gradient scaled by 0.1, Linear -> GELU -> Linear heads that all read the last layer.
Params are `{"encoder": <Encoder params>, "heads": {"layer_<k>": head}}` with one head per
supervised teacher layer k, a head being `{"kernel", "bias"}` (linear) or
`{"fc1": {...}, "fc2": {...}}` (mlp); the layer stack is `encoder/encoder/layers`.
Layer-wise heads (`head="layerwise"`, ARMHuBERT's `LayerWiseProjHead` per student layer,
models/maskhubert/model.py L306-317) are one Linear per student layer, stacked:
`heads = {"layers": {"kernel": (N, D, D_t), "bias": (N, D_t)}}`, so `stacking.grow` copies a
layer's head with the layer (params and optimizer moments alike).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from stackdistill import stacking
from stackdistill.models.config import EncoderConfig
from stackdistill.models.encoder import Encoder, EncoderOutput

Params = dict[str, Any]
FRONTEND_FIELDS = ("conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm")
HEADS = ("linear", "mlp", "layerwise")


def default_config() -> ml_collections.ConfigDict:
    """The paper's deep-thin student (final depth; stacking starts it shallower)."""
    c = ml_collections.ConfigDict()
    c.num_layers = 12
    c.hidden_size = 384
    c.intermediate_size = 1536
    c.num_heads = 6
    c.init_from_teacher = True  # copy every teacher tensor whose name and shape match
    # Fresh tensors: False keeps Flax's init (LeCun normal); True draws them as fairseq does
    # (`fairseq_init`: the ARMHuBERT repo's students, trained from scratch).
    c.fairseq_init = False
    c.frozen_shared_frontend = False  # reuse the teacher's frozen CNN output, skip our own
    c.copy_teacher_encoder_norm = True  # with init_from_teacher: the encoder's LayerNorm too
    c.feat_proj_layer_norm = True  # LayerNorm between the CNN front-end and the projection
    c.dropout = 0.0  # hidden dropout (s3prl/fairseq `dropout`)
    c.attention_dropout = 0.0
    c.activation_dropout = 0.0
    c.feature_grad_mult = 1.0  # gradient scale into the CNN front-end
    # "linear" | "mlp" (Linear -> GELU -> Linear, s3prl's expand-last) | "layerwise" (one
    # Linear per student layer, grown with it: MaskHuBERT/ARMHuBERT's `layerwise_proj`)
    c.head = "linear"
    c.mask_emb = False  # a learned mask embedding for masked input (config.distill.loss="masked")
    c.dropout_input = 0.0  # fairseq `dropout_input`: after the projection (their yaml: 0.05)
    # The CNN front-end as ((dim, kernel, stride), ...) (fairseq `conv_feature_layers`);
    # None: the teacher's.
    c.conv_layers = ml_collections.FieldReference(None, field_type=object)
    c.feat_proj = True  # False: no Linear between the CNN and the transformer (needs equal dims)
    # The student's own CNN (with conv_layers): its norm, "group" (GroupNorm on conv 0, fairseq's
    # extractor_mode "default") or "layer" (LayerNorm after every conv), and conv biases;
    # None: the teacher's.
    c.conv_norm = ml_collections.FieldReference(None, field_type=str)
    c.conv_bias = ml_collections.FieldReference(None, field_type=bool)
    # Per layer: True computes its attention map, False reuses the previous one (ARMHuBERT's
    # `reuse_pattern`; a repeated block like (True, False) * 6); None: no reuse.
    c.reuse_pattern = ml_collections.FieldReference(None, field_type=object)
    c.layer_grad_scale = False  # ARMHuBERT's per-layer GradMultiply (encoder.layer_grad_scales)
    return c


def layers_per_block(student: ml_collections.ConfigDict) -> int:
    """Layers per reuse block from config.student.reuse_pattern (1: no reuse).

    The pattern must be one block (True, False, ..., False) repeated over the stack, so that
    the stack scans as identical blocks and grows by whole blocks (stacking.py).
    """
    pattern = student.get("reuse_pattern")
    if pattern is None:
        return 1
    pattern = tuple(bool(p) for p in pattern)
    n = student.num_layers
    starts = [i for i, p in enumerate(pattern) if p]
    k = starts[1] - starts[0] if len(starts) > 1 else len(pattern)
    if len(pattern) != n or not pattern[0] or pattern != ((True,) + (False,) * (k - 1)) * (n // k):
        raise ValueError(
            f"config.student.reuse_pattern={pattern}: expected {n} entries (config.student."
            "num_layers), one block (True, False, ..., False) repeated, e.g. (True, False) * 6"
        )
    return k


def distilhubert_config() -> ml_collections.ConfigDict:
    """DistilHuBERT as s3prl's pretrain/distiller/config_model.yaml builds it.

    2 x 768 layers initialised from the teacher's front-end, projection, positional conv and
    first two layers (not its encoder LayerNorm: s3prl copies `pos_conv` and `layers` only);
    no LayerNorm before the projection; dropouts 0.1; `feature_grad_mult: 0.1`; mlp heads.
    """
    c = default_config()
    c.update(num_layers=2, hidden_size=768, intermediate_size=3072, num_heads=12)
    c.update(copy_teacher_encoder_norm=False, feat_proj_layer_norm=False, head="mlp")
    c.update(dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, feature_grad_mult=0.1)
    return c


def student_encoder_config(
    student: ml_collections.ConfigDict, teacher: EncoderConfig
) -> EncoderConfig:
    """The student's EncoderConfig: the teacher's front-end, the student's transformer sizes."""
    if student.frozen_shared_frontend and not student.init_from_teacher:
        raise ValueError(
            "config.student.frozen_shared_frontend needs config.student.init_from_teacher: "
            "the shared front-end is the teacher's"
        )
    frontend = {}
    if student.get("conv_layers") is not None:
        dims, kernels, strides = zip(*student.conv_layers, strict=True)
        frontend = dict(conv_dim=dims, conv_kernel=kernels, conv_stride=strides)
        if student.get("conv_norm") is not None:
            frontend["feat_extract_norm"] = student.conv_norm
        if student.get("conv_bias") is not None:
            frontend["conv_bias"] = bool(student.conv_bias)
    return teacher.replace(
        **frontend,
        feat_proj=student.get("feat_proj", True),
        layers_per_block=layers_per_block(student),
        layer_grad_scale=student.get("layer_grad_scale", False),
        # No relative position bias (ARMwavLM's student is ARMHuBERT's model: models/__init__.py)
        model_type="hubert",  # students use the conv positional embedding only
        num_layers=student.num_layers,
        hidden_size=student.hidden_size,
        intermediate_size=student.intermediate_size,
        num_heads=student.num_heads,
        do_stable_layer_norm=False,
        feat_proj_layer_norm=student.get("feat_proj_layer_norm", True),
        dropout=student.dropout,
        attention_dropout=student.attention_dropout,
        activation_dropout=student.get("activation_dropout", student.dropout),
        feature_grad_mult=student.get("feature_grad_mult", 1.0),
        mask_emb=bool(student.get("mask_emb", False)),
        dropout_input=float(student.get("dropout_input", 0.0)),
    )


ENCODER_NORM = ("encoder", "layer_norm")
# Never copied from the teacher: their student keeps its uniform init (the copy is commented
# out in ARMHuBERT's train.py L70-71).
MASK_EMB = ("masked_spec_embed",)


def _copy_matching(student: Any, teacher: Any, skip: tuple[tuple[str, ...], ...] = ()) -> Any:
    """Student tree with every teacher leaf of the same path and shape copied in.

    Leaves under a path prefix in `skip` (tuples of keys) keep their fresh init.
    """
    by_path = dict(jax.tree_util.tree_leaves_with_path(teacher))

    def copy(path, leaf):
        source = by_path.get(path)
        keys = tuple(getattr(k, "key", None) for k in path)
        if source is None or any(keys[: len(p)] == p for p in skip):
            return leaf
        if stacking.under_layers(path):
            # Layer stacks: the student's first N teacher layers, as DistilHuBERT does.
            n = leaf.shape[0]
            if source.shape[0] >= n and source.shape[1:] == leaf.shape[1:]:
                return jnp.asarray(source[:n], leaf.dtype)
            return leaf
        if source.shape == leaf.shape:
            return jnp.asarray(source, leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(copy, student)


def fairseq_init(encoder: Params, cfg: EncoderConfig, rng: jax.Array) -> Params:
    """Encoder params drawn as fairseq draws a student trained from scratch (ARMHuBERT).

    Linear kernels of the transformer layers N(0, 0.02) (init_bert_params, fairseq
    modules/transformer_sentence_encoder.py L21-51, applied by reusing_module.py L1257); the
    positional conv N(0, sqrt(4 / (k D))) (reusing_module.py L1172-1183); the CNN convs
    kaiming_normal, N(0, sqrt(2 / (k C_in))) (module.py L46-49). Biases 0 and LayerNorms
    (1, 0) as Flax's; a projection Linear, when there is one, keeps Flax's init.
    """
    leaves = jax.tree_util.tree_leaves_with_path(encoder)
    keys = iter(jax.random.split(rng, len(leaves)))

    def draw(path, leaf):
        key = next(keys)
        names = [getattr(k, "key", None) for k in path]
        if names[-1] != "kernel":
            return leaf
        if names[0] == "encoder" and stacking.under_layers(path):
            std = 0.02
        elif names[:2] == ["encoder", "pos_conv_embed"]:
            std = np.sqrt(4.0 / (leaf.shape[0] * cfg.hidden_size))
        elif names[0] == "feature_extractor":
            std = np.sqrt(2.0 / (leaf.shape[0] * leaf.shape[1]))  # kernel (K, C_in, C_out)
        else:
            return leaf
        return std * jax.random.normal(key, leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, encoder)


def init_student(
    cfg: EncoderConfig,
    rng: jax.Array,
    teacher_cfg: EncoderConfig,
    teacher_params: Params | None,
    teacher_layer_ids: tuple[int, ...],
    init_from_teacher: bool = True,
    head: str = "linear",
    copy_teacher_encoder_norm: bool = True,
    fairseq: bool = False,
) -> Params:
    """Student params: encoder (teacher-initialised where shapes allow) and one head per target.

    `fairseq`: fresh encoder tensors drawn by `fairseq_init` (before any teacher copy).
    """
    if head not in HEADS:
        raise ValueError(f"config.student.head must be one of {HEADS}, got {head!r}")
    enc_rng, head_rng = jax.random.split(rng)
    wav = jnp.zeros((1, max(cfg.receptive_field, 16000)), jnp.float32)
    encoder = Encoder(cfg).init(enc_rng, wav, jnp.array([wav.shape[1]]))["params"]
    if fairseq:
        encoder = fairseq_init(encoder, cfg, jax.random.fold_in(enc_rng, 1))
    if init_from_teacher:
        if teacher_params is None:
            raise ValueError("init_from_teacher needs the teacher params")
        skip = (MASK_EMB,) if copy_teacher_encoder_norm else (ENCODER_NORM, MASK_EMB)
        encoder = _copy_matching(encoder, teacher_params, skip)
    if head == "layerwise":
        keys = jax.random.split(head_rng, cfg.num_layers)
        per_layer = [_torch_linear(k, cfg.hidden_size, teacher_cfg.hidden_size) for k in keys]
        stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *per_layer)
        if cfg.layers_per_block > 1:  # (blocks, k, ...): the heads grow with whole blocks
            k = cfg.layers_per_block
            stacked = jax.tree_util.tree_map(lambda x: x.reshape(-1, k, *x.shape[1:]), stacked)
        return {"encoder": encoder, "heads": {stacking.LAYERS_KEY: stacked}}
    heads = {}
    for k, key in zip(teacher_layer_ids, jax.random.split(head_rng, len(teacher_layer_ids))):
        fc1_key, fc2_key = jax.random.split(key)
        d, t = cfg.hidden_size, teacher_cfg.hidden_size
        if head == "linear":
            heads[f"layer_{k}"] = _torch_linear(fc2_key, d, t)
        else:  # s3prl: Linear(D, D) -> GELU -> SplitLinear(D -> teacher D), one slice per task
            heads[f"layer_{k}"] = {
                "fc1": _torch_linear(fc1_key, d, d),
                "fc2": _torch_linear(fc2_key, d, t),
            }
    return {"encoder": encoder, "heads": heads}


def _torch_linear(key: jax.Array, fan_in: int, fan_out: int) -> Params:
    """torch nn.Linear's default init (uniform +-1/sqrt(fan_in)), as DistilHuBERT's heads."""
    bound = 1.0 / np.sqrt(fan_in)
    w_key, b_key = jax.random.split(key)
    return {
        "kernel": jax.random.uniform(w_key, (fan_in, fan_out), jnp.float32, -bound, bound),
        "bias": jax.random.uniform(b_key, (fan_out,), jnp.float32, -bound, bound),
    }


def head_type(head: Params) -> str:
    """ "linear" or "mlp", read from one head's params."""
    return "mlp" if "fc1" in head else "linear"


def is_layerwise(heads: Params) -> bool:
    """Whether `heads` are layer-wise (one per student layer, under `layers`)."""
    return stacking.LAYERS_KEY in heads


def per_target_heads(heads: Params, source_layers: Mapping[int, int]) -> Params:
    """{"layer_<k>": head} for each teacher layer k; layer-wise heads give their source's."""
    if not is_layerwise(heads):
        return {f"layer_{k}": heads[f"layer_{k}"] for k in source_layers}
    stack = heads[stacking.LAYERS_KEY]
    if stack["kernel"].ndim == 4:  # reuse blocks: (blocks, k, D, D_teacher) -> one per layer
        stack = jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), stack)
    return {
        f"layer_{k}": jax.tree_util.tree_map(lambda x, s=s: x[s - 1], stack)
        for k, s in source_layers.items()
    }


def apply_head(head: Params, h_btd: jax.Array) -> jax.Array:
    """One head on hidden states: x W + b, or (GELU(x W1 + b1)) W2 + b2 for an mlp head."""

    def linear(p, x):
        return x @ p["kernel"].astype(x.dtype) + p["bias"].astype(x.dtype)

    if head_type(head) == "linear":
        return linear(head, h_btd)
    return linear(head["fc2"], jax.nn.gelu(linear(head["fc1"], h_btd), approximate=False))


def apply_encoder(
    cfg: EncoderConfig,
    encoder_params: Params,
    wav: jax.Array,
    lengths: jax.Array,
    features: jax.Array | None = None,
    dropout_rng: jax.Array | None = None,
    time_mask: jax.Array | None = None,
) -> EncoderOutput:
    """The student encoder on a waveform, or on precomputed CNN `features` (shared front-end).

    `time_mask` (B, T): frames replaced by the student's mask embedding (masked input).
    """
    cfg = cfg.at_depth_of(encoder_params)
    deterministic = dropout_rng is None
    module = Encoder(cfg, deterministic=deterministic)
    rngs = {} if deterministic else {"dropout": dropout_rng}
    variables = {"params": encoder_params}
    if features is None:
        return module.apply(variables, wav, lengths, time_mask, rngs=rngs)
    return module.apply(
        variables, features, lengths, time_mask, rngs=rngs, method=Encoder.from_features
    )


def predict(
    heads: Params, hidden_lbtd: jax.Array, source_layers: Mapping[int, int]
) -> dict[int, jax.Array]:
    """Predictions of each teacher layer k from the student hidden state source_layers[k].

    Layer-wise heads: student layer s (hidden state s, s >= 1) is read by its own head s - 1.
    """
    if is_layerwise(heads) and any(s < 1 for s in source_layers.values()):
        raise ValueError(
            f"layer-wise heads read transformer layers only; sources {dict(source_layers)} "
            "include hidden state 0 (the projected CNN output)"
        )
    per_target = per_target_heads(heads, source_layers)
    return {
        k: apply_head(per_target[f"layer_{k}"], hidden_lbtd[s]) for k, s in source_layers.items()
    }


def paper_param_count(params: Params, cfg: EncoderConfig) -> int:
    """The student's size as the ARMHuBERT repository reports it (README: 26.45M, ...).

    Every tensor of the student (encoder, prediction heads, mask embedding: their counts hold
    the 12 layer-wise heads and `mask_emb`, models/armhubert/model.py L288-290, L320-330),
    plus the positional conv's weight-norm magnitude g (k scalars, weight_norm(dim=2),
    reusing_module.py L1185) that our folded kernel does not store.
    """
    return sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(params)) + (
        cfg.num_conv_pos_embeddings
    )


def param_counts(params: Params, cfg: EncoderConfig) -> dict[str, int]:
    """summary.json's `student_params`: the encoder kept after distillation, and every trained
    tensor as the recipes' papers count their students (`paper_param_count`)."""
    return {"encoder": encoder_param_count(params), "with_heads": paper_param_count(params, cfg)}


def encoder_param_count(params: Params) -> int:
    """Scalars of the student encoder alone (what is kept after distillation)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params["encoder"]))
