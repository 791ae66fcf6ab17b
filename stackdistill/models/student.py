"""Students: the shared encoder at student size plus one linear head per supervised layer.

Two families, both built from the teacher's config:
- deep-thin (the paper): 12 layers x 384, FFN 1536, 6 heads, the teacher's CNN front-end;
- DistilHuBERT: 2 layers x 768 whose three heads all read the last layer.
Params are `{"encoder": <Encoder params>, "heads": {"layer_<k>": {"kernel", "bias"}}}` with
one head per supervised teacher layer k; the layer stack is `encoder/encoder/layers`.
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


def default_config() -> ml_collections.ConfigDict:
    """The paper's deep-thin student (final depth; stacking starts it shallower)."""
    c = ml_collections.ConfigDict()
    c.num_layers = 12
    c.hidden_size = 384
    c.intermediate_size = 1536
    c.num_heads = 6
    c.init_from_teacher = True  # copy every teacher tensor whose name and shape match
    c.frozen_shared_frontend = False  # reuse the teacher's frozen CNN output, skip our own
    c.dropout = 0.0
    c.attention_dropout = 0.0
    return c


def distilhubert_config() -> ml_collections.ConfigDict:
    """DistilHuBERT (Chang et al., 2022): 2 x 768 layers, init from the teacher."""
    c = default_config()
    c.update(num_layers=2, hidden_size=768, intermediate_size=3072, num_heads=12)
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
    return teacher.replace(
        model_type="hubert",  # students use the conv positional embedding only
        num_layers=student.num_layers,
        hidden_size=student.hidden_size,
        intermediate_size=student.intermediate_size,
        num_heads=student.num_heads,
        do_stable_layer_norm=False,
        feat_proj_layer_norm=True,
        dropout=student.dropout,
        attention_dropout=student.attention_dropout,
    )


def _copy_matching(student: Any, teacher: Any) -> Any:
    """Student tree with every teacher leaf of the same path and shape copied in."""
    by_path = dict(jax.tree_util.tree_leaves_with_path(teacher))

    def copy(path, leaf):
        source = by_path.get(path)
        if source is None:
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


def init_student(
    cfg: EncoderConfig,
    rng: jax.Array,
    teacher_cfg: EncoderConfig,
    teacher_params: Params | None,
    teacher_layer_ids: tuple[int, ...],
    init_from_teacher: bool = True,
) -> Params:
    """Student params: encoder (teacher-initialised where shapes allow) and one head per target."""
    enc_rng, head_rng = jax.random.split(rng)
    wav = jnp.zeros((1, max(cfg.receptive_field, 16000)), jnp.float32)
    encoder = Encoder(cfg).init(enc_rng, wav, jnp.array([wav.shape[1]]))["params"]
    if init_from_teacher:
        if teacher_params is None:
            raise ValueError("init_from_teacher needs the teacher params")
        encoder = _copy_matching(encoder, teacher_params)
    heads = {}
    for k, key in zip(teacher_layer_ids, jax.random.split(head_rng, len(teacher_layer_ids))):
        # torch nn.Linear's default init (uniform +-1/sqrt(fan_in)), as DistilHuBERT's heads.
        bound = 1.0 / np.sqrt(cfg.hidden_size)
        w_key, b_key = jax.random.split(key)
        heads[f"layer_{k}"] = {
            "kernel": jax.random.uniform(
                w_key, (cfg.hidden_size, teacher_cfg.hidden_size), jnp.float32, -bound, bound
            ),
            "bias": jax.random.uniform(
                b_key, (teacher_cfg.hidden_size,), jnp.float32, -bound, bound
            ),
        }
    return {"encoder": encoder, "heads": heads}


def apply_encoder(
    cfg: EncoderConfig,
    encoder_params: Params,
    wav: jax.Array,
    lengths: jax.Array,
    features: jax.Array | None = None,
    dropout_rng: jax.Array | None = None,
) -> EncoderOutput:
    """The student encoder on a waveform, or on precomputed CNN `features` (shared front-end)."""
    cfg = cfg.replace(num_layers=stacking.stack_depth(encoder_params))
    deterministic = dropout_rng is None
    module = Encoder(cfg, deterministic=deterministic)
    rngs = {} if deterministic else {"dropout": dropout_rng}
    variables = {"params": encoder_params}
    if features is None:
        return module.apply(variables, wav, lengths, rngs=rngs)
    return module.apply(variables, features, lengths, rngs=rngs, method=Encoder.from_features)


def predict(
    heads: Params, hidden_lbtd: jax.Array, source_layers: Mapping[int, int]
) -> dict[int, jax.Array]:
    """Predictions of each teacher layer k from the student hidden state source_layers[k]."""
    preds = {}
    for k, s in source_layers.items():
        head = heads[f"layer_{k}"]
        h_btd = hidden_lbtd[s]
        preds[k] = h_btd @ head["kernel"].astype(h_btd.dtype) + head["bias"].astype(h_btd.dtype)
    return preds


def encoder_param_count(params: Params) -> int:
    """Scalars of the student encoder alone (what is kept after distillation)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params["encoder"]))
