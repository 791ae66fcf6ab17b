"""The model card (README.md) of a transformers export: hub front matter and the run's facts."""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import ml_collections

from stackdistill import stacking
from stackdistill.models.config import EncoderConfig

# Data sources with a dataset on the hub.
HUB_DATASETS = {"librispeech": "openslr/librispeech_asr"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_model_id(name: str) -> str | None:
    """`name` when it reads as a hub model id ("org/name") and is no local path, else None."""
    if not _HUB_ID.match(name) or pathlib.Path(name).exists():
        return None
    return name


def _front_matter(config: ml_collections.ConfigDict, cfg: EncoderConfig) -> str:
    lines = ["---", "library_name: transformers", "pipeline_tag: feature-extraction"]
    base = hub_model_id(config.teacher.name)
    if base:
        lines.append(f"base_model: {base}")
    tags = ["audio", "speech", cfg.model_type, "knowledge-distillation", "stackdistill"]
    lines.append("tags:")
    lines += [f"- {t}" for t in tags]
    dataset = HUB_DATASETS.get(config.data.source)
    if dataset:
        lines += ["datasets:", f"- {dataset}"]
    lines.append("---")
    return "\n".join(lines)


def _schedule(config: ml_collections.ConfigDict, summary: Mapping[str, Any]) -> str:
    """'interleaved: depth 3 (steps 0-50k) -> 6 (...)' from the run's stages."""
    stages = summary.get("stages")
    if not stages:
        plan = stacking.plan_stages(config.stacking, config.total_steps, config.student.num_layers)
        stages = [s.__dict__ for s in plan]
    parts = [
        f"{s['depth']} (steps {s['start_step']}-{s['start_step'] + s['num_steps']})" for s in stages
    ]
    return f"{config.stacking.method}: depth " + " -> ".join(parts)


def _losses(summary: Mapping[str, Any]) -> list[str]:
    metrics = summary.get("final_metrics") or {}
    rows = [
        (k, v) for k, v in sorted(metrics.items()) if "loss" in k or k.startswith(("l1", "cos"))
    ]
    if not rows:
        return ["(no summary.json in the workdir: the run has not finished)"]
    return ["| metric | value |", "|---|---|"] + [f"| {k} | {float(v):.4g} |" for k, v in rows]


def render(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    cfg: EncoderConfig,
    num_params: int,
    info: Mapping[str, Any],
) -> str:
    """The card's markdown text for the export of `info["step"]` of the run in `workdir`."""
    workdir = pathlib.Path(workdir)
    summary_path = workdir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    s = config.student
    size = (
        f"{cfg.num_layers} layers x {cfg.hidden_size} (FFN {cfg.intermediate_size}, "
        f"{cfg.num_heads} heads), {num_params / 1e6:.1f} M encoder parameters"
    )
    heads = (
        f"{s.get('head', 'linear')} heads for teacher layers {list(config.distill.teacher_layers)}"
    )
    facts = [
        ("teacher", f"`{config.teacher.name}`"),
        ("student", size),
        ("prediction heads", f"{heads} (`stackdistill_heads.*`, not used by transformers)"),
        ("stacking", _schedule(config, summary)),
        ("steps", f"{info['step']} (of {config.total_steps}), batch {config.batch_size}"),
        ("loss", config.distill.loss),
        ("data", f"{config.data.source}, do_normalize={bool(config.data.normalize)}"),
    ]
    parts = [
        _front_matter(config, cfg),
        "",
        f"# {cfg.num_layers} x {cfg.hidden_size} student of {config.teacher.name}",
        "",
        "Distilled with stackdistill (interleaved stacking: the student "
        "grows during distillation, each copied layer inserted after its original).",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in facts],
        "",
        "## Final losses",
        "",
        *_losses(summary),
        "",
        "## Use",
        "",
        "```python",
        "import torch",
        "from transformers import HubertModel, Wav2Vec2FeatureExtractor",
        "",
        'extractor = Wav2Vec2FeatureExtractor.from_pretrained("THIS_DIR")',
        'model = HubertModel.from_pretrained("THIS_DIR").eval()',
        "# the student was distilled with padded frames masked: pass the attention mask",
        "inputs = extractor(",
        "    wavs, sampling_rate=16000, padding=True, return_attention_mask=True,",
        '    return_tensors="pt",',
        ")",
        "with torch.no_grad():",
        "    hidden_states = model(**inputs, output_hidden_states=True).hidden_states",
        "```",
        "",
        'In s3prl: `S3PRLUpstream("hf_hubert_custom", path_or_url="THIS_DIR")`.',
    ]
    results = workdir / "superb" / "results.md"
    if results.exists():
        parts += ["", "## mini-SUPERB", "", results.read_text().strip()]
    return "\n".join(parts) + "\n"
