"""Export a trained student as a transformers `HubertModel` directory (`--mode=export`).

    python -m stackdistill.main --config=configs/demo.py --workdir=/tmp/demo --mode=export

reads the run's latest checkpoint (or `config.export.step`) and writes, into
`<workdir>/export/` (or `config.export.out_dir`):

- `config.json`, `model.safetensors`: the student encoder in the `save_pretrained` layout,
  so `transformers.HubertModel.from_pretrained(dir)` (PyTorch) and s3prl-style upstreams
  that wrap it load it as they load HuBERT Base. `output_hidden_states=True` gives the
  student's hidden states; `teacher.load(dir)` reads it back into our params.
- `stackdistill_heads.safetensors`: the prediction heads, which HubertModel has no place
  for, in `torch.nn.Linear` layout: `layer_<k>.weight` (teacher width, student width) and
  `layer_<k>.bias` (teacher width) for every supervised teacher layer k.
- `stackdistill_heads.json`: how to use them. `{"format": 1, "teacher_layers": [k, ...],
  "target_sources": {"<k>": s, ...}, "step": ..., "depth": ..., "teacher": ...}`; the head
  of teacher layer k reads `hidden_states[s]` of the exported model (entry 0 is the input
  to the first layer, as in transformers), so the prediction of teacher layer k is
  `hidden_states[s] @ weight.T + bias`.
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
from stackdistill.models.config import EncoderConfig

log = logging.getLogger("stackdistill")

HEADS_WEIGHTS = "stackdistill_heads.safetensors"
HEADS_INFO = "stackdistill_heads.json"
HEADS_FORMAT = 1


def default_config() -> ml_collections.ConfigDict:
    """Where `--mode=export` writes and which checkpoint it reads."""
    c = ml_collections.ConfigDict()
    c.out_dir = ""  # "" means <workdir>/export
    c.step = ml_collections.FieldReference(None, field_type=int)  # None: the latest checkpoint
    return c


def hf_config(cfg: EncoderConfig, depth: int) -> dict[str, Any]:
    """config.json of the exported HubertModel (the student's architecture at `depth`)."""
    if cfg.model_type != "hubert":
        raise ValueError(f"only HuBERT-architecture students export, not {cfg.model_type!r}")
    return {
        **cfg.replace(num_layers=depth).to_hf(),
        "architectures": ["HubertModel"],
        "dtype": "float32",
        # The dropouts the student was distilled with; no layer drop (it never had any).
        "hidden_dropout": cfg.dropout,
        "activation_dropout": cfg.dropout,
        "attention_dropout": cfg.attention_dropout,
        "layerdrop": 0.0,
    }


def export_student(
    cfg: EncoderConfig,
    params: Mapping[str, Any],
    out_dir: str | pathlib.Path,
    target_sources: Mapping[str | int, int],
    info: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Writes student `params` ({"encoder", "heads"}) to `out_dir`; returns the directory."""
    from safetensors.numpy import save_file

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder = jax.device_get(params["encoder"])
    depth = stacking.stack_depth(encoder)
    state = convert.params_to_state_dict(cfg.replace(num_layers=depth), encoder)
    # safetensors 0.8 writes a strided array's buffer as is (the weight-norm v is a transpose).
    state = {name: np.ascontiguousarray(x) for name, x in state.items()}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(cfg, depth), indent=1))

    heads = jax.device_get(params["heads"])
    teacher_layers = sorted(int(name.removeprefix("layer_")) for name in heads)
    sources = {str(k): int(v) for k, v in target_sources.items()}
    if sorted(map(int, sources)) != teacher_layers:
        raise ValueError(f"target_sources {sources} do not name the heads {sorted(heads)}")
    if any(not 0 <= s <= depth for s in sources.values()):
        raise ValueError(f"target_sources {sources}: a hidden state beyond depth {depth}")
    head_tensors = {}
    for k in teacher_layers:
        head = heads[f"layer_{k}"]
        head_tensors[f"layer_{k}.weight"] = np.ascontiguousarray(np.asarray(head["kernel"]).T)
        head_tensors[f"layer_{k}.bias"] = np.asarray(head["bias"])
    save_file(head_tensors, out / HEADS_WEIGHTS, metadata={"format": "pt"})
    head_info = {
        "format": HEADS_FORMAT,
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
    heads = {
        f"layer_{k}": {
            "kernel": np.ascontiguousarray(tensors[f"layer_{k}.weight"].T),
            "bias": tensors[f"layer_{k}.bias"],
        }
        for k in info["teacher_layers"]
    }
    return heads, info


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = "export") -> pathlib.Path:
    """--mode=export: the run's checkpoint at config.export.step (or latest) -> export dir."""
    from stackdistill import checkpoint

    del mode
    c = config.get("export") or default_config()
    cfg, params, meta = checkpoint.load_student(workdir, step=c.step)
    out = pathlib.Path(c.out_dir or pathlib.Path(workdir) / "export")
    if jax.process_index() == 0:
        info = {
            "step": int(meta["step"]),
            "stage": int(meta["stage"]),
            "lineage": meta["lineage"],
            "teacher": config.teacher.name,
        }
        export_student(cfg, params, out, meta["target_sources"], info)
        log.info("exported step %d (depth %d) to %s", meta["step"], meta["depth"], out)
    return out
