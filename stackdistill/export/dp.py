"""`--mode=export` of a DPHuBERT / DPWavLM pipeline (config.recipe="dp"): its final model.

    python -m stackdistill.main --config=configs/dphubert.py --workdir=DIR --mode=export \
        [--config.export.format=transformers|dphubert]

reads `DIR/final` (the pruned, finally distilled model: `pruning.store`) and writes into
`DIR/export` (or `config.export.out_dir`):

- "transformers" (default): a `HubertModel` / `WavLMModel` directory (`config.json`,
  `model.safetensors`, `preprocessor_config.json`, the model card `README.md`). transformers
  holds one width per model, so the pruned layers stay zero-padded to the widest (a zero head,
  FFN unit or block adds nothing: the function is the pruned model's, its cost the padded
  one's). Refused, with the reason, where transformers cannot express the model: a CNN whose
  last conv keeps their per-channel scale (`dummy_weight`, pruned with `prune.units` holding
  "conv"), which no transformers model has.
- "dphubert": their final checkpoint `pruned_hubert_base.pth` (save_final_ckpt.py L38-46:
  state dict, config, distill heads; `pruning.their_format`), which their `wav2vec2` model code,
  s3prl-style upstreams of their repository, `teacher.load` and our `dp:` upstream read.

Both write the card's facts: parameters before and after pruning (their count, as
summary.json), the stages' steps and seconds.
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

from stackdistill import convert
from stackdistill.export import transformers as hf_export
from stackdistill.models.config import HF_ARCHITECTURES, EncoderConfig

log = logging.getLogger("stackdistill")

FORMATS = ("transformers", "dphubert")
FILES = {
    "transformers": ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"),
    "dphubert": ("pruned_hubert_base.pth", "README.md"),
}


def load_final(workdir: str | pathlib.Path) -> tuple[EncoderConfig, dict, dict[str, Any]]:
    """(cfg, {"student", "heads"}, summary.json) of a finished pipeline in `workdir`."""
    from stackdistill.pruning import pipeline, store

    workdir = pathlib.Path(workdir)
    if not (workdir / "final" / pipeline.DONE).is_file():
        raise FileNotFoundError(
            f"{workdir / 'final'} is not finished (no {pipeline.DONE}): run the pipeline "
            "(--mode=distill) to its end before exporting"
        )
    cfg, tree = store.load_model(workdir / "final")
    summary = json.loads((workdir / "summary.json").read_text())
    return cfg, tree, summary


def hf_config(cfg: EncoderConfig) -> dict[str, Any]:
    """config.json of the padded pruned model, or ValueError naming what transformers lacks."""
    if cfg.feature_scale:
        raise ValueError(
            "the pruned CNN's last conv keeps their per-channel scale (dummy_weight, "
            "components.py L184), which no transformers model has: export it with "
            "--config.export.format=dphubert (their .pth, read by teacher.load and the dp: "
            "upstream), or prune without 'conv' in config.prune.units"
        )
    return hf_export.model_config(cfg)


def write_transformers(cfg: EncoderConfig, student: Any, out: pathlib.Path) -> None:
    """The padded pruned encoder as a transformers directory (model files only)."""
    from safetensors.numpy import save_file

    config = hf_config(cfg)  # refuses before anything is written
    state = convert.params_to_state_dict(cfg, jax.device_get(student))
    state.pop(convert.MASK_EMB, None)
    state = {name: np.ascontiguousarray(x) for name, x in state.items()}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=1))
    pre = hf_export.preprocessor_config(cfg, normalize=False)
    (out / hf_export.PREPROCESSOR).write_text(json.dumps(pre, indent=1))


def card(config: ml_collections.ConfigDict, cfg: EncoderConfig, summary: Mapping, fmt: str) -> str:
    """The export's README.md: what was pruned from what, and how to load it."""
    p = summary.get("params", {})
    before, after = p.get("params_before"), p.get("params_after")
    sparsity = p.get("sparsity")
    arch = HF_ARCHITECTURES[cfg.model_type]
    lines = [
        f"# {config.teacher.name} pruned by DPHuBERT's recipe (stackdistill)",
        "",
        "| | |",
        "|---|---|",
        f"| teacher | `{config.teacher.name}` |",
        f"| parameters before pruning | {before} |",
        f"| parameters after pruning | {after} (sparsity {sparsity:.3f} of the teacher's; "
        f"target {summary.get('target_sparsity')}) |"
        if sparsity is not None
        else f"| parameters after pruning | {after} |",
        f"| stages (steps) | prune {summary['steps'].get('prune')}, "
        f"final distillation {summary['steps'].get('final')} |",
        f"| stage seconds | {summary.get('seconds')} |",
    ]
    depth = summary.get("depth") or {}
    if depth.get("pruned") not in (None, depth.get("final")):  # pruning with stacking
        lines.append(
            f"| depth | pruned at {depth['pruned']} layers (one in "
            f"{depth['final'] // depth['pruned']} of the teacher's), grown to "
            f"{depth['final']} by interleaved stacking before the final distillation |"
        )
    lines.append("")
    if fmt == "transformers":
        lines += [
            f"`{arch}.from_pretrained(THIS_DIR)` loads it. transformers holds one width per "
            "model, so the pruned heads, FFN units and blocks are zeros here: the same "
            "function as the pruned model, at the unpruned model's cost. Their "
            "`pruned_hubert_base.pth` (`--config.export.format=dphubert`) holds the real "
            "widths.",
        ]
    else:
        lines += [
            "`pruned_hubert_base.pth`: {state_dict, config, distill_linear_projs} as "
            "pyf98/DPHuBERT's save_final_ckpt.py writes it; their `wav2vec2.model."
            "wav2vec2_model(**config)` (or `wavlm_model`) loads the state dict.",
        ]
    return "\n".join(lines) + "\n"


Final = tuple[EncoderConfig, dict, dict[str, Any]]  # load_final's


def identity(
    config: ml_collections.ConfigDict, workdir: str, fmt: str, final: Final
) -> dict[str, Any]:
    """What the export directory records (`export.check_out_dir`): run, step, depth, teacher.
    Refuses (ValueError) an unknown format, or a model the format cannot hold, first."""
    if fmt not in FORMATS:
        raise ValueError(f"config.export.format={fmt!r}: a DP pipeline exports as one of {FORMATS}")
    cfg, _, summary = final
    if fmt == "transformers":
        hf_config(cfg)  # refuses before the directory is touched
    return {
        "workdir": str(pathlib.Path(workdir).resolve()),
        "step": int(summary["steps"]["final"]),
        "depth": cfg.num_layers,
        "teacher": config.teacher.name,
    }


def write(config: ml_collections.ConfigDict, final: Final, out: pathlib.Path, fmt: str) -> None:
    """Exports the finished pipeline's final model in `fmt` (identity checked it) into `out`."""
    from stackdistill.pruning import pipeline, their_format

    cfg, tree, summary = final
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "transformers":
        write_transformers(cfg, tree["student"], out)
    else:
        spec = pipeline.distill_spec(config)
        their_format.write(
            out / "pruned_hubert_base.pth",
            cfg,
            tree["student"],
            tree["heads"],
            spec.head_index(),
            spec.mode,
        )
    (out / "README.md").write_text(card(config, cfg, summary, fmt))
    log.info("exported the DP pipeline's final model (%s) to %s", fmt, out)
