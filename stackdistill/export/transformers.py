"""The transformers format (`config.export.format="transformers"`, the default).

Writes, into the export directory:
- `config.json`, `model.safetensors`: the student encoder in the `save_pretrained` layout,
  SpecAugment off (so `HubertModel` expects no `masked_spec_embed`: every tensor it wants
  is in the file), the dropouts it was distilled with, no layer drop.
  `transformers.HubertModel.from_pretrained(dir)` and s3prl's `hf_hubert_custom` load it;
  `output_hidden_states=True` gives the student's hidden states; `teacher.load(dir)` reads
  it back into our params.
- `preprocessor_config.json`: `Wav2Vec2FeatureExtractor` at 16 kHz, `do_normalize` =
  `config.data.normalize`, `return_attention_mask` as transformers sets it for the
  front-end's norm (False for "group", True for "layer"; s3prl always asks for the mask,
  and the student was distilled with padded frames masked).
- `README.md`: a model card (hub front matter, the run's facts; `model_card.py`).
- `stackdistill_heads.safetensors` + `stackdistill_heads.json`: the prediction heads, which
  HubertModel has no place for, in `torch.nn.Linear` layout. Linear heads:
  `layer_<k>.weight` (teacher width, student width), `layer_<k>.bias`; mlp heads:
  `layer_<k>.fc1.{weight,bias}` and `layer_<k>.fc2.{weight,bias}`. The json:
  `{"format": 1, "head": "linear"|"mlp", "teacher_layers": [k, ...], "target_sources":
  {"<k>": s, ...}, "step", "depth", "teacher", ...}`; the head of teacher layer k reads
  `hidden_states[s]` of the exported model (entry 0 is the input to the first layer, as in
  transformers): `hidden_states[s] @ weight.T + bias`, or `fc2(gelu(fc1(hidden_states[s])))`.
  A headless student (loss "star") writes `"head": "none"`, no tensors, and the pairs its
  loss read as `target_sources`.

`push_to_hub` uploads such a directory with huggingface_hub.
"""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from stackdistill import convert, stacking
from stackdistill.export import model_card
from stackdistill.models import student
from stackdistill.models.config import HF_ARCHITECTURES, EncoderConfig

log = logging.getLogger("stackdistill")

HEADS_WEIGHTS = "stackdistill_heads.safetensors"
HEADS_INFO = "stackdistill_heads.json"
HEADS_FORMAT = 1
PREPROCESSOR = "preprocessor_config.json"


class HubUploadError(RuntimeError):
    """The export could not be uploaded to the Hugging Face hub."""


def hf_config(cfg: EncoderConfig, depth: int) -> dict[str, Any]:
    """config.json of the exported HubertModel (the student's architecture at `depth`)."""
    if cfg.model_type != "hubert":
        raise ValueError(f"only HuBERT-architecture students export, not {cfg.model_type!r}")
    if cfg.layers_per_block > 1:
        raise ValueError(
            "transformers' HubertModel cannot express attention-map reuse (config.student."
            "reuse_pattern): its layers all have q_proj/k_proj and compute their own attention. "
            "Export it in the ARMHuBERT repository's format: config.export.format='armhubert'"
        )
    if not cfg.feat_proj:
        raise ValueError(
            "transformers' HubertModel always has a feature projection Linear; this student "
            "has none (config.student.feat_proj=False); config.export.format='armhubert' writes it"
        )
    return model_config(cfg.replace(num_layers=depth))


def model_config(cfg: EncoderConfig) -> dict[str, Any]:
    """config.json of `cfg` as its transformers model (HubertModel, WavLMModel, ...)."""
    return {
        **cfg.to_hf(),
        "architectures": [HF_ARCHITECTURES[cfg.model_type]],
        "dtype": "float32",
        # The dropouts the student was distilled with; no layer drop (it never had any).
        "hidden_dropout": cfg.dropout,
        "activation_dropout": cfg.activation_dropout,
        "attention_dropout": cfg.attention_dropout,
        "feat_proj_dropout": 0.0,
        "final_dropout": 0.0,
        "layerdrop": 0.0,
        # No SpecAugment: the student was never trained with it, and with zero mask
        # probabilities HubertModel builds no masked_spec_embed (nothing left random).
        "apply_spec_augment": False,
        "mask_time_prob": 0.0,
        "mask_feature_prob": 0.0,
    }


def preprocessor_config(cfg: EncoderConfig, normalize: bool) -> dict[str, Any]:
    """preprocessor_config.json: the Wav2Vec2FeatureExtractor the student expects."""
    return {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": 16000,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": bool(normalize),
        # transformers' convention: group-norm front-ends take no attention mask by default.
        "return_attention_mask": cfg.feat_extract_norm == "layer",
    }


def export_student(
    cfg: EncoderConfig,
    params: Mapping[str, Any],
    out_dir: str | pathlib.Path,
    target_sources: Mapping[str | int, int],
    info: Mapping[str, Any] | None = None,
    normalize: bool = False,
) -> pathlib.Path:
    """Writes student `params` ({"encoder", "heads"}) to `out_dir`; returns the directory."""
    from safetensors.numpy import save_file

    hf_config(cfg, cfg.num_layers)  # refuses what HubertModel cannot express, before writing
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder = jax.device_get(params["encoder"])
    depth = stacking.stack_depth(encoder)
    state = convert.params_to_state_dict(cfg.replace(num_layers=depth), encoder)
    # HubertModel without SpecAugment (mask_time_prob 0) has no mask embedding to load.
    state.pop(convert.MASK_EMB, None)
    # safetensors 0.8 writes a strided array's buffer as is (the weight-norm v is a transpose).
    state = {name: np.ascontiguousarray(x) for name, x in state.items()}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(cfg, depth), indent=1))
    (out / PREPROCESSOR).write_text(json.dumps(preprocessor_config(cfg, normalize), indent=1))

    heads = jax.device_get(params["heads"])
    if student.is_layerwise(heads):  # the head of each target's source layer
        heads = student.per_target_heads(heads, {int(k): int(v) for k, v in target_sources.items()})
    teacher_layers = sorted(int(name.removeprefix("layer_")) for name in heads)
    sources = {str(k): int(v) for k, v in target_sources.items()}
    # A headless recipe (STaR) keeps its target_sources: the pairs its loss read.
    if heads and sorted(map(int, sources)) != teacher_layers:
        raise ValueError(f"target_sources {sources} do not name the heads {sorted(heads)}")
    if any(not 0 <= s <= depth for s in sources.values()):
        raise ValueError(f"target_sources {sources}: a hidden state beyond depth {depth}")
    kinds = {student.head_type(heads[f"layer_{k}"]) for k in teacher_layers}
    if len(kinds) > 1:
        raise ValueError(f"heads of mixed types {sorted(kinds)}")
    kind = kinds.pop() if kinds else "none"
    head_tensors = {}
    for k in teacher_layers:
        head = heads[f"layer_{k}"]
        linears = {"": head} if kind == "linear" else {".fc1": head["fc1"], ".fc2": head["fc2"]}
        for suffix, p in linears.items():
            head_tensors[f"layer_{k}{suffix}.weight"] = np.ascontiguousarray(
                np.asarray(p["kernel"]).T
            )
            head_tensors[f"layer_{k}{suffix}.bias"] = np.asarray(p["bias"])
    save_file(head_tensors, out / HEADS_WEIGHTS, metadata={"format": "pt"})
    head_info = {
        "format": HEADS_FORMAT,
        "head": kind,
        "teacher_layers": teacher_layers,
        "target_sources": sources,
        "depth": depth,
        **(info or {}),
    }
    (out / HEADS_INFO).write_text(json.dumps(head_info, indent=1))
    return out


def load_heads(
    export_dir: str | pathlib.Path,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """The heads of an export in our layout ({"layer_<k>": {kernel, bias}}) and their info."""
    from safetensors.numpy import load_file

    export_dir = pathlib.Path(export_dir)
    info = json.loads((export_dir / HEADS_INFO).read_text())
    if info.get("format") != HEADS_FORMAT:
        raise ValueError(f"{export_dir / HEADS_INFO}: unknown heads format {info.get('format')}")
    tensors = load_file(export_dir / HEADS_WEIGHTS)

    def linear(name: str) -> dict[str, np.ndarray]:
        return {
            "kernel": np.ascontiguousarray(tensors[f"{name}.weight"].T),
            "bias": tensors[f"{name}.bias"],
        }

    heads = {}
    for k in info["teacher_layers"]:
        name = f"layer_{k}"
        if info.get("head", "linear") == "linear":
            heads[name] = linear(name)
        else:
            heads[name] = {"fc1": linear(f"{name}.fc1"), "fc2": linear(f"{name}.fc2")}
    return heads, info


def push_to_hub(out_dir: str | pathlib.Path, repo_id: str) -> str:
    """Uploads an export directory to the hub model repo `repo_id`; returns the commit url."""
    import huggingface_hub

    try:
        api = huggingface_hub.HfApi()
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        info = api.upload_folder(folder_path=str(out_dir), repo_id=repo_id, repo_type="model")
    except Exception as e:  # offline, no token, no permission: one message, the cause chained
        raise HubUploadError(
            f"could not upload {out_dir} to the Hugging Face hub "
            f"({huggingface_hub.constants.ENDPOINT}) as {repo_id}: {type(e).__name__}: {e}. "
            "The export on disk is complete; from a machine online, after `hf auth login`: "
            f"hf upload {repo_id} {out_dir}"
        ) from e
    return str(getattr(info, "commit_url", info))


FILES = (
    "config.json",
    "model.safetensors",
    PREPROCESSOR,
    "README.md",
    HEADS_WEIGHTS,
    HEADS_INFO,
)


def write(
    config: ml_collections.ConfigDict,
    workdir: str,
    cfg: EncoderConfig,
    params: Mapping[str, Any],
    meta: Mapping[str, Any],
    out: pathlib.Path,
    identity: Mapping[str, Any],
) -> pathlib.Path:
    """The checkpoint's student (`meta`: its metadata) as a transformers directory + card."""
    info = {
        "step": int(meta["step"]),
        "stage": int(meta["stage"]),
        "lineage": meta["lineage"],
        "teacher": config.teacher.name,
    }
    normalize = bool(config.data.get("normalize", False))
    export_student(cfg, params, out, meta["target_sources"], info, normalize)
    depth_cfg = cfg.replace(num_layers=int(meta["depth"]))
    card = model_card.render(
        config, workdir, depth_cfg, student.encoder_param_count(params), identity
    )
    (out / "README.md").write_text(card)
    log.info("exported step %d (depth %d) to %s", meta["step"], meta["depth"], out)
    return out
