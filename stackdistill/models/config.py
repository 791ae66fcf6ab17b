"""EncoderConfig: the hyper-parameters of one HuBERT/WavLM/wav2vec2 encoder (teacher or student)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from stackdistill import frames

MODEL_TYPES = ("hubert", "wavlm", "wav2vec2")
# The transformers class whose `save_pretrained` layout each model type reads and writes.
HF_ARCHITECTURES = {"hubert": "HubertModel", "wavlm": "WavLMModel", "wav2vec2": "Wav2Vec2Model"}
DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "dots_saveable", "nothing_saveable")
ATTENTION = ("xla", "cudnn", "flash")  # by key lengths: cuDNN's kernel on a GPU, Pallas' on TPU
FRONTEND_NORMS = ("float32", "compute")  # the CNN norms' elementwise math (stats: float32)
FIRST_CONV = ("conv", "matmul")  # "matmul": conv 0 over strided windows, its GroupNorm folded in
STRIDED_CONV = ("conv", "matmul")  # "matmul": convs 1.. as matmuls over stride-long frame groups
LAYER_NORMS = ("flax", "recompute")  # "recompute": the backward recomputes from the input


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Architecture of a CNN front-end + transformer speech encoder (hashable, jit-static)."""

    model_type: str = "hubert"
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"  # "group": GroupNorm on conv 0 (Base); "layer": LN per conv
    feat_proj_layer_norm: bool = True
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False  # False: post-LN (Base); True: pre-LN + final LN (Large)
    layer_norm_eps: float = 1e-5
    num_buckets: int = 320  # WavLM relative position bias
    max_bucket_distance: int = 800
    dtype: str = "float32"  # compute dtype; params stay float32
    remat: str = "none"  # jax.checkpoint policy for each scanned layer
    dropout: float = 0.0  # hidden dropout: after attention, FFN and the encoder's LayerNorm
    attention_dropout: float = 0.0  # on the attention weights
    activation_dropout: float = 0.0  # after the FFN's GELU
    feature_grad_mult: float = 1.0  # scales the gradient into the CNN front-end (fairseq's)
    attention: str = "xla"  # fast path (stackdistill/fastpath.py); numerics as "xla"
    frontend_norm: str = "float32"  # "compute": normalise in `dtype`, float32 statistics
    # A learned per-channel scale on the CNN output (DPHuBERT's `dummy_weight`, which holds
    # the last conv's pruning mask); transformers has no such tensor.
    feature_scale: bool = False
    feat_proj: bool = True  # False: no Linear after the CNN (fairseq when conv dim == width)
    # 1: every layer computes its attention. k > 1 (ARMHuBERT): the scanned unit is a block of
    # one attending layer and k - 1 layers that reuse its attention map (no q/k params).
    layers_per_block: int = 1
    layer_grad_scale: bool = False  # ARMHuBERT's per-layer GradMultiply (encoder.py)
    # A learned (D,) `masked_spec_embed` that replaces time-masked frames after the projection
    # (fairseq `mask_emb`, transformers `masked_spec_embed`); masking distillation turns it on.
    mask_emb: bool = False
    dropout_input: float = 0.0  # fairseq `dropout_input`: after the projection, before masking
    first_conv: str = "conv"  # "matmul": conv 0 as a matmul over strided windows (fastpath)
    strided_conv: str = "conv"  # "matmul": convs 1.. as matmuls over frame groups (fastpath)
    # "recompute": LayerNorms whose backward recomputes from the input (frontend.layer_norm)
    layer_norm: str = "flax"

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not one of {MODEL_TYPES}")
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm {self.feat_extract_norm!r} is not 'group'/'layer'")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ValueError("conv_dim, conv_kernel and conv_stride must have the same length")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {DTYPES}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat {self.remat!r} is not one of {REMAT_POLICIES}")
        if self.feature_grad_mult < 0:
            raise ValueError(f"feature_grad_mult {self.feature_grad_mult} must be >= 0")
        if self.attention not in ATTENTION:
            raise ValueError(f"attention {self.attention!r} is not one of {ATTENTION}")
        if self.frontend_norm not in FRONTEND_NORMS:
            raise ValueError(f"frontend_norm {self.frontend_norm!r} is not one of {FRONTEND_NORMS}")
        if not self.feat_proj and self.conv_dim[-1] != self.hidden_size:
            raise ValueError(
                f"feat_proj=False needs the CNN's last conv_dim {self.conv_dim[-1]} to equal "
                f"hidden_size {self.hidden_size} (config.student.conv_layers / feat_proj)"
            )
        if self.layers_per_block < 1 or self.num_layers % self.layers_per_block:
            raise ValueError(
                f"num_layers {self.num_layers} is not a whole number of reuse blocks of "
                f"{self.layers_per_block} layers (config.student.reuse_pattern, config.stacking)"
            )
        if self.first_conv not in FIRST_CONV:
            raise ValueError(f"first_conv {self.first_conv!r} is not one of {FIRST_CONV}")
        if self.strided_conv not in STRIDED_CONV:
            raise ValueError(f"strided_conv {self.strided_conv!r} is not one of {STRIDED_CONV}")
        if self.layer_norm not in LAYER_NORMS:
            raise ValueError(f"layer_norm {self.layer_norm!r} is not one of {LAYER_NORMS}")

    def replace(self, **changes: Any) -> EncoderConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def has_dropout(self) -> bool:
        """True when any dropout is on (the step then needs a dropout rng)."""
        rates = (self.dropout, self.attention_dropout, self.activation_dropout, self.dropout_input)
        return max(rates) > 0

    @property
    def num_blocks(self) -> int:
        """Length of the scanned axis: layers, or reuse blocks of `layers_per_block` layers."""
        return self.num_layers // self.layers_per_block

    def at_depth_of(self, params: Any) -> EncoderConfig:
        """This config at the depth of a (grown) param tree: blocks on its layer axis x k."""
        from stackdistill import stacking  # stacking imports no models; avoids a cycle here

        return self.replace(num_layers=stacking.stack_depth(params) * self.layers_per_block)

    @property
    def hf_architecture(self) -> str:
        """The transformers model class of this model type ("HubertModel", ...)."""
        return HF_ARCHITECTURES[self.model_type]

    @property
    def receptive_field(self) -> int:
        """Samples seen by one output frame of the CNN front-end (400 for HuBERT)."""
        return frames.receptive_field(self.conv_kernel, self.conv_stride)

    @property
    def hop(self) -> int:
        """Samples between two output frames (320 for HuBERT: 20 ms at 16 kHz)."""
        return frames.hop(self.conv_stride)

    def num_frames(self, num_samples: int) -> int:
        """Frames the CNN front-end produces for `num_samples` samples."""
        return frames.num_frames(num_samples, self.conv_kernel, self.conv_stride)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any] | Any, **overrides: Any) -> EncoderConfig:
        """Reads a transformers HubertConfig/WavLMConfig/Wav2Vec2Config (object or config.json)."""
        d = hf if isinstance(hf, Mapping) else hf.to_dict()
        model_type = d.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {model_type!r}: stackdistill converts {MODEL_TYPES}"
            )
        if d.get("hidden_act", "gelu") != "gelu" or d.get("feat_extract_activation", "gelu") != (
            "gelu"
        ):
            raise ValueError("only hidden_act='gelu' and feat_extract_activation='gelu' supported")
        if d.get("add_adapter"):
            raise ValueError("add_adapter=True (a CTC adapter) is not supported")
        if d.get("adapter_attn_dim") is not None:
            raise ValueError(
                "adapter_attn_dim (MMS per-language attention adapters) is not supported"
            )
        fields = dict(
            model_type=model_type,
            hidden_size=d["hidden_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=d["num_attention_heads"],
            intermediate_size=d["intermediate_size"],
            conv_dim=tuple(d["conv_dim"]),
            conv_kernel=tuple(d["conv_kernel"]),
            conv_stride=tuple(d["conv_stride"]),
            conv_bias=bool(d.get("conv_bias", False)),
            feat_extract_norm=d.get("feat_extract_norm", "group"),
            # WavLM and wav2vec2 always normalise before the projection; HuBERT makes it optional.
            feat_proj_layer_norm=model_type != "hubert"
            or bool(d.get("feat_proj_layer_norm", True)),
            num_conv_pos_embeddings=d["num_conv_pos_embeddings"],
            num_conv_pos_embedding_groups=d["num_conv_pos_embedding_groups"],
            do_stable_layer_norm=bool(d.get("do_stable_layer_norm", False)),
            layer_norm_eps=float(d.get("layer_norm_eps", 1e-5)),
            num_buckets=int(d.get("num_buckets", 320)),
            max_bucket_distance=int(d.get("max_bucket_distance", 800)),
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf(self) -> dict[str, Any]:
        """The transformers config.json fields that describe this architecture."""
        if self.feature_scale:
            raise ValueError(
                "feature_scale=True (a DPHuBERT/DPWavLM checkpoint's per-channel CNN scale) has "
                "no transformers equivalent: this encoder cannot be written as a transformers model"
            )
        d = dict(
            model_type=self.model_type,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            conv_dim=list(self.conv_dim),
            conv_kernel=list(self.conv_kernel),
            conv_stride=list(self.conv_stride),
            num_feat_extract_layers=len(self.conv_dim),
            conv_bias=self.conv_bias,
            feat_extract_norm=self.feat_extract_norm,
            num_conv_pos_embeddings=self.num_conv_pos_embeddings,
            num_conv_pos_embedding_groups=self.num_conv_pos_embedding_groups,
            do_stable_layer_norm=self.do_stable_layer_norm,
            layer_norm_eps=self.layer_norm_eps,
            hidden_act="gelu",
            feat_extract_activation="gelu",
        )
        if self.model_type == "hubert":
            d["feat_proj_layer_norm"] = self.feat_proj_layer_norm
        elif self.model_type == "wavlm":
            d.update(num_buckets=self.num_buckets, max_bucket_distance=self.max_bucket_distance)
        return d

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-friendly dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.asdict().items()}

    def asdict(self) -> dict[str, Any]:
        """All fields as a dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EncoderConfig:
        """Inverse of `to_dict`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown EncoderConfig fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
