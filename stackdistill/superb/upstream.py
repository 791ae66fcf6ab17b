"""Upstreams: the frozen encoders SUPERB evaluates, named by a spec string.

- `"teacher"`: the config's teacher (`config.teacher`; the random demo teacher is written
  first if the config asks for one);
- `"student"` or `"student:<workdir>[@step]"`: a distillation run's student at any stage
  (`"student"` alone is the run in the --workdir itself; default step: the latest);
- `"hf:<dir or hub id>"`: an exported transformers HubertModel/WavLMModel;
- `"dp:<file>"`: a DPHuBERT/DPWavLM final checkpoint (their save_final_ckpt.py's .pth), read
  zero-padded to uniform widths by `pruning.checkpoint` (its "encoder_params" count the padding);
- `"arm:<ckpt>[,<yaml>]"`: a MaskHuBERT / ARMHuBERT / ARMwavLM Lightning checkpoint of the
  ARMHuBERT repository (or our `config.export.format="armhubert"` export), read by
  `export.armhubert_read.read`; without a yaml, `<ckpt stem>.yaml` beside it or the yaml the
  checkpoint keeps. Its own spec, not `dp:`, because it needs a second file and both are single
  files. We evaluate the encoder's hidden states, as for every upstream here; their s3prl
  expert (models/armhubert/expert.py L73-75) hands SUPERB the layer-wise heads' projections.

A spec may carry its display name: `"interleaved=student:/runs/a"`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any

import ml_collections

from stackdistill import models, stacking
from stackdistill.models.config import EncoderConfig


@dataclasses.dataclass
class Upstream:
    """A frozen encoder: its name, where it came from, its config and Encoder params."""

    name: str
    kind: str  # "teacher" | "student" | "hf" | "dp" | "arm"
    source: str
    cfg: EncoderConfig
    params: Any  # what models.encode takes
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        """Transformer layers (the hidden states are one more)."""
        return stacking.stack_depth(self.params)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", text).strip("_") or "upstream"


def parse_spec(spec: str, workdir: str | pathlib.Path) -> tuple[str, str, str, int | None]:
    """(name, kind, source, step) of an upstream spec; raises ValueError on a bad one."""
    name = None
    head, sep, rest = spec.partition("=")
    if sep and ":" not in head and head not in ("teacher", "student"):
        name, spec = head, rest
    kind, _, source = spec.partition(":")
    step = None
    if kind == "teacher":
        if source:
            raise ValueError(f"upstream {spec!r}: 'teacher' takes no argument (set config.teacher)")
        return name or "teacher", kind, "", None
    if kind == "student":
        source = source or str(workdir)
        if "@" in source:
            source, _, step_text = source.rpartition("@")
            if not step_text.isdigit():
                raise ValueError(f"upstream {spec!r}: the step after '@' must be an integer")
            step = int(step_text)
        default = f"student-{pathlib.Path(source).resolve().name}"
        default += f"@{step}" if step is not None else ""
        return _slug(name or default), kind, source, step
    if kind == "hf":
        if not source:
            raise ValueError(f"upstream {spec!r}: 'hf:' needs a directory or hub id")
        return _slug(name or f"hf-{pathlib.Path(source).name}"), kind, source, None
    if kind == "dp":
        if not source:
            raise ValueError(f"upstream {spec!r}: 'dp:' needs a DPHuBERT checkpoint file")
        return _slug(name or f"dp-{pathlib.Path(source).stem}"), kind, source, None
    if kind == "arm":
        if not source or source.startswith(","):
            raise ValueError(f"upstream {spec!r}: 'arm:' needs an ARMHuBERT .ckpt file[,yaml]")
        stem = pathlib.Path(source.partition(",")[0]).stem
        return _slug(name or f"arm-{stem}"), kind, source, None
    raise ValueError(
        f"upstream {spec!r}: expected 'teacher', 'student[:WORKDIR[@STEP]]', 'hf:PATH_OR_ID',"
        " 'dp:FILE' or 'arm:CKPT[,YAML]'"
        " (optionally prefixed by 'NAME=')"
    )


def load(spec: str, config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> Upstream:
    """Loads the frozen upstream named by `spec` (see the module docstring)."""
    from stackdistill import checkpoint, teacher

    name, kind, source, step = parse_spec(spec, workdir)
    info: dict[str, Any] = {}
    if kind == "teacher":
        source = teacher.prepare(config.teacher, workdir)
        cfg, params = teacher.load(source)
    elif kind in ("hf", "dp"):
        if kind == "dp" and not pathlib.Path(source).expanduser().is_file():
            raise FileNotFoundError(f"upstream {spec!r}: {source} is not a file")
        cfg, params = teacher.load(source)
    elif kind == "arm":
        from stackdistill.export import armhubert_read

        ckpt, _, yaml_path = source.partition(",")
        cfg, student_params = armhubert_read.read(ckpt, yaml_path or None)
        params = student_params["encoder"]
    else:
        cfg, student_params, meta = checkpoint.load_student(source, step)
        params = student_params["encoder"]
        info = {k: meta[k] for k in ("step", "stage", "depth") if k in meta}
        info["stacking"] = _stacking_method(source)
    cfg = cfg.replace(dtype=config.get("dtype", "float32"), dropout=0.0, attention_dropout=0.0)
    info.update(num_layers=stacking.stack_depth(params), hidden_size=cfg.hidden_size)
    info["encoder_params"] = models.param_count(params)
    return Upstream(name, kind, str(source), cfg, params, info)


def _stacking_method(run_dir: str) -> str | None:
    """The stacking method recorded in a run's newest checkpoint config, if readable."""
    import json

    checkpoints = pathlib.Path(run_dir) / "checkpoints"
    steps = sorted((int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()), reverse=True)
    for step in steps:
        for config_file in (checkpoints / str(step) / "config").glob("*"):
            try:
                return json.loads(config_file.read_text())["stacking"]["method"]
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                continue
    return None
