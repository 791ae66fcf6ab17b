"""Export a trained student (`--mode=export`) in the formats its users load.

    python -m stackdistill.main --config=configs/demo.py --workdir=/tmp/demo --mode=export

reads the run's latest checkpoint (or `config.export.step`) and writes, into
`<workdir>/export/` (or `config.export.out_dir`), with `config.export.format`:

- "transformers" (default, `transformers.py`): a `HubertModel` directory (`config.json`,
  `model.safetensors`, `preprocessor_config.json`, the model card `README.md` from
  `model_card.py`, the prediction heads in `stackdistill_heads.*`).
- "s3prl_distiller" (`s3prl.py`): `distiller.ckpt`, the file s3prl's `distiller_local` loads
  (DistilHuBERT-shaped students only).
- "armhubert" (`armhubert.py`): `student.ckpt` + `student.yaml`, the Lightning checkpoint and
  yaml the ARMHuBERT repository's upstreams load (MaskHuBERT / ARMHuBERT / ARMwavLM-shaped
  students, attention reuse included); `armhubert_read.read` reads theirs back.

A DPHuBERT / DPWavLM pipeline (config.recipe="dp") exports its final model instead
(`dp.py`): "transformers" (the padded pruned model, where transformers can express it) or
"dphubert" (their `pruned_hubert_base.pth`).

Each format module has `FILES` (what it writes) and `write(config, workdir, cfg, params, meta,
out, identity)`. Both write `stackdistill_export.json` (run, step, formats). Exporting into a
directory that holds another run's or step's export, or files that are no export, is refused
unless `config.export.overwrite=True`. `config.export.push_to_hub="ORG/NAME"` then uploads the
directory with huggingface_hub (needs the network and `hf auth login`; offline it fails with
one error naming the hub, and the export on disk stays complete).
"""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from stackdistill import resume
from stackdistill.export import armhubert, dp, s3prl, transformers
from stackdistill.export.transformers import (  # noqa: F401  (the format's public names)
    HEADS_INFO,
    HEADS_WEIGHTS,
    HubUploadError,
    export_student,
    load_heads,
    push_to_hub,
)

log = logging.getLogger("stackdistill")

EXPORT_INFO = "stackdistill_export.json"
WRITERS = {"transformers": transformers, "s3prl_distiller": s3prl, "armhubert": armhubert}
FORMATS = tuple(WRITERS)
_IDENTITY = ("workdir", "step", "depth", "teacher")


class ExportMismatch(ValueError):
    """The output directory holds something other than this run's export of this step."""


def default_config() -> ml_collections.ConfigDict:
    """Where `--mode=export` writes, in which format, and which checkpoint it reads."""
    c = ml_collections.ConfigDict()
    c.out_dir = ""  # "" means <workdir>/export
    c.step = ml_collections.FieldReference(None, field_type=int)  # None: the latest checkpoint
    c.format = "transformers"  # "transformers" | "s3prl_distiller" | "armhubert"
    c.overwrite = False  # True: replace an export of another run/step in out_dir
    c.push_to_hub = ""  # "ORG/NAME": upload the transformers export (needs the network)
    return c


def check_out_dir(out: pathlib.Path, identity: Mapping[str, Any], overwrite: bool) -> None:
    """Refuses (ExportMismatch) to export into a dir holding another run's/step's export.

    With `overwrite` the files an earlier export wrote are removed instead.
    """
    if not out.exists() or not any(out.iterdir()):
        return
    manifest = out / EXPORT_INFO
    way_out = (
        "choose another config.export.out_dir, or set config.export.overwrite=True to replace it"
    )
    if not manifest.exists():
        if not overwrite:
            raise ExportMismatch(f"{out} is not empty and holds no stackdistill export; {way_out}")
        return
    old = json.loads(manifest.read_text())
    changes = resume.diff({k: old.get(k) for k in _IDENTITY}, dict(identity))
    if not changes:
        return
    if not overwrite:
        lines = "\n".join(f"  {name}: {a!r} -> {b!r}" for name, a, b in changes)
        raise ExportMismatch(f"{out} holds the export of another run or step:\n{lines}\n{way_out}")
    for fmt in old.get("formats", FORMATS):
        written = WRITERS[fmt].FILES if fmt in WRITERS else dp.FILES.get(fmt, ())
        for name in written:
            (out / name).unlink(missing_ok=True)
    manifest.unlink()


def _write_manifest(out: pathlib.Path, identity: Mapping[str, Any], fmt: str) -> None:
    """stackdistill_export.json: which run and step the directory holds, in which formats."""
    manifest = out / EXPORT_INFO
    formats = set()
    if manifest.exists():
        formats = set(json.loads(manifest.read_text()).get("formats", []))
    data = {**identity, "formats": sorted(formats | {fmt})}
    manifest.write_text(json.dumps(data, indent=1))


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = "export") -> pathlib.Path:
    """--mode=export: the run's checkpoint at config.export.step (or latest) -> export dir;
    a DP pipeline's final model (`dp.py`)."""
    from stackdistill import checkpoint

    del mode
    c = config.get("export") or default_config()
    fmt = c.get("format", "transformers")
    repo_id = c.get("push_to_hub", "")
    if repo_id and fmt != "transformers":
        raise ValueError("config.export.push_to_hub uploads the transformers format only")
    if config.get("recipe", "") == "dp":
        final = dp.load_final(workdir)
        identity = dp.identity(config, workdir, fmt, final)

        def write(out: pathlib.Path) -> None:
            dp.write(config, final, out, fmt)

    else:
        if fmt not in FORMATS:
            raise ValueError(f"config.export.format must be one of {FORMATS}, got {fmt!r}")
        cfg, params, meta = checkpoint.load_student(workdir, step=c.step)
        identity = {
            "workdir": str(pathlib.Path(workdir).resolve()),
            "step": int(meta["step"]),
            "depth": int(meta["depth"]),
            "teacher": config.teacher.name,
        }

        def write(out: pathlib.Path) -> None:
            WRITERS[fmt].write(config, workdir, cfg, params, meta, out, identity)

    out = pathlib.Path(c.out_dir or pathlib.Path(workdir) / "export")
    if jax.process_index() == 0:
        check_out_dir(out, identity, bool(c.get("overwrite", False)))
        write(out)
        _write_manifest(out, identity, fmt)
        if repo_id:
            log.info("pushed %s to the hub: %s", out, push_to_hub(out, repo_id))
    return out
