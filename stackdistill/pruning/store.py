"""Files of the DP pipeline (pruning/pipeline.py): models as npz + config JSON, atomic JSON.

A model folder (`pruned/`, `final/`) holds `encoder_config.json` (EncoderConfig.to_dict) and
`params.npz`: the student's params under "student/..." and the distill heads under
"heads/<i>/..." (their checkpoints keep `distill_linear_projs` beside the model, prune.py L65);
`save_theirs` adds their final `.pth` (pruning/their_format.py).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from etils import epath
from flax import traverse_util

from stackdistill.models.config import EncoderConfig
from stackdistill.pruning import their_format


def save_model(folder: epath.Path, cfg: EncoderConfig, tree: dict) -> None:
    """encoder_config.json + params.npz ("student/...", "heads/<i>/...") in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    heads = {str(i): h for i, h in enumerate(tree["heads"])}
    flat = traverse_util.flatten_dict({"student": tree["student"], "heads": heads}, sep="/")
    tmp = folder / "params.tmp.npz"
    with tmp.open("wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in flat.items()})
    tmp.replace(folder / "params.npz")
    write_json(folder / "encoder_config.json", cfg.to_dict())


def load_model(folder: str | epath.PathLike) -> tuple[EncoderConfig, dict]:
    """(EncoderConfig, {"student": params, "heads": [..]}) of pruned/ or final/."""
    return _load(epath.Path(folder))


def _load(folder: epath.Path) -> tuple[EncoderConfig, dict]:
    """load_model on an epath."""
    if not (folder / "params.npz").exists():
        raise FileNotFoundError(f"{folder}/params.npz is missing: run the pipeline to write it")
    cfg = EncoderConfig.from_dict(json.loads((folder / "encoder_config.json").read_text()))
    with (folder / "params.npz").open("rb") as f:
        arrays = dict(np.load(f))
    tree = traverse_util.unflatten_dict(arrays, sep="/")
    heads = [tree["heads"][k] for k in sorted(tree["heads"], key=int)]
    return cfg, {"student": tree["student"], "heads": heads}


def write_json(path: epath.Path, obj: Any) -> None:
    """Writes JSON through a temporary file: a killed run leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def read_json(path: epath.Path) -> dict[str, Any]:
    """The JSON object at `path`, or {} when there is none."""
    return json.loads(path.read_text()) if path.exists() else {}


def truncate_metrics(path: epath.Path, step: int) -> None:
    """Drops the lines a killed run logged after the checkpoint it resumes from."""
    if path.exists():
        lines = [x for x in path.read_text().splitlines() if json.loads(x)["step"] <= step]
        path.write_text("".join(x + "\n" for x in lines))


def last_metrics(path: epath.Path) -> dict[str, float]:
    """The last line of a metrics.jsonl ({} when empty)."""
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1]) if lines else {}


def save_theirs(folder: epath.Path, cfg: EncoderConfig, trainable: dict, spec: Any) -> None:
    """Their final checkpoint, `pruned_hubert_base.pth` (save_final_ckpt.py L38), if it can be."""
    try:
        their_format.write(
            folder / "pruned_hubert_base.pth",
            cfg,
            trainable["student"],
            trainable["heads"],
            spec.head_index(),
            spec.mode,
        )
    except (ImportError, ValueError) as e:  # no torch, or what their format cannot hold
        logging.getLogger("stackdistill").warning("final: their .pth format not written (%s)", e)
