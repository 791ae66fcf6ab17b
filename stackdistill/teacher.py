"""Teachers: load a transformers HuBERT/WavLM/wav2vec2 checkpoint as (EncoderConfig, params).

`load` accepts a local directory in the `save_pretrained` layout or a hub id. The converted
params are cached with orbax in `paths.teachers_dir()` (`$STACKDISTILL_CACHE/teachers/`, default
`~/.cache/stackdistill/teachers/`), keyed by the contents of the source files, so a second
load reads the cache and needs neither torch nor the conversion, and the same checkpoint in
two folders is stored once. Writing an entry removes those whose source folders are all gone.
Task-model checkpoints (`HubertForCTC`, `Wav2Vec2ForPreTraining`, ...) load too: their
encoder is read, their heads are ignored. A single file is read as a DPHuBERT/DPWavLM final
checkpoint (pyf98/DPHuBERT's save_final_ckpt.py), zero-padded to uniform widths, except a
`.ckpt` file: a MaskHuBERT/ARMHuBERT/ARMwavLM Lightning checkpoint (sungnyun/ARMHuBERT, or our
`armhubert` export) with its yaml beside it or inside it (`export.armhubert_read.read`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
from typing import Any

import jax
import numpy as np

from stackdistill import convert, distributed, fastpath, paths
from stackdistill.models.config import EncoderConfig
from stackdistill.pruning import checkpoint as dp_checkpoint

log = logging.getLogger(__name__)

CONVERTER_VERSION = 2  # bump when the params layout changes (2: masked_spec_embed kept)
SOURCES_FILE = "sources.json"  # in each cache entry: the folders its checkpoint was read from
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# The offline demos' random teacher (configs/demo.py, the recipes' `:runlocal`): 12 x 48,
# HuBERT architecture, EncoderConfig fields for `config.teacher.random_arch`.
DEMO_ARCH = dict(
    model_type="hubert",
    hidden_size=48,
    num_layers=12,
    num_heads=4,
    intermediate_size=96,
    conv_dim=(32,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


def _resolve(name_or_path: str, revision: str | None) -> pathlib.Path:
    """A local directory holding config.json and the weights (downloads a hub id if needed)."""
    path = pathlib.Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a model directory nor a hub id like "
            "'facebook/hubert-base-ls960'"
        )
    # A hub id: huggingface_hub honours HF_HOME/HF_HUB_CACHE and HF_HUB_OFFLINE.
    from huggingface_hub import hf_hub_download

    config_file = hf_hub_download(name_or_path, "config.json", revision=revision)
    for weights in ("model.safetensors", "pytorch_model.bin"):
        try:
            hf_hub_download(name_or_path, weights, revision=revision)
            break
        except Exception as e:  # noqa: BLE001 - try the next format, report if none
            last_error = e
    else:
        raise FileNotFoundError(f"{name_or_path}: no weights on the hub ({last_error})")
    return pathlib.Path(config_file).parent


def _weights_file(model_dir: pathlib.Path) -> pathlib.Path:
    for name in WEIGHT_FILES:
        if (model_dir / name).is_file():
            return model_dir / name
    raise FileNotFoundError(
        f"{model_dir} has no weights: expected one of {', '.join(WEIGHT_FILES)} "
        "(a transformers save_pretrained directory)"
    )


def _read_state_dict(weights: pathlib.Path) -> dict[str, np.ndarray]:
    """Tensors of a safetensors file, a sharded safetensors index or a pytorch_model.bin."""
    if weights.name.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(weights)
    if weights.name.endswith(".index.json"):
        shards = sorted(set(json.loads(weights.read_text())["weight_map"].values()))
        state: dict[str, np.ndarray] = {}
        for shard in shards:
            state.update(_read_state_dict(weights.parent / shard))
        return state
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"{weights} is a PyTorch pickle: install torch (pip install 'stackdistill[dev]') "
            "or save the model with safetensors"
        ) from e
    state = torch.load(weights, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}


def _source_files(model_dir: pathlib.Path, weights: pathlib.Path) -> list[pathlib.Path]:
    files = [model_dir / "config.json", weights]
    if weights.name.endswith(".index.json"):
        shards = json.loads(weights.read_text())["weight_map"].values()
        files += [model_dir / s for s in sorted(set(shards))]
    return files


def _cache_key(files: list[pathlib.Path], cache: pathlib.Path) -> str:
    """A hash of the source files' contents: the same checkpoint anywhere is one entry.

    Each file's sha256 is remembered in `cache/index.json` under its path, size and mtime,
    so a file is read once, not at every load.
    """
    index_path = cache / "index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    h = hashlib.sha256(f"v{CONVERTER_VERSION}".encode())
    for f in files:
        real = f.resolve()
        st = real.stat()
        stamp = f"{real}|{st.st_size}|{st.st_mtime_ns}"
        if stamp not in index:
            with open(real, "rb") as fh:
                index[stamp] = hashlib.file_digest(fh, "sha256").hexdigest()
        h.update(index[stamp].encode())
    index = {k: v for k, v in index.items() if os.path.exists(k.rsplit("|", 2)[0])}
    _write_json(index_path, index)
    return h.hexdigest()[:24]


def _write_json(path: pathlib.Path, value: Any) -> None:
    """Replaces `path` atomically (a concurrent reader sees the old or the new file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def _note_source(entry: pathlib.Path, model_dir: pathlib.Path) -> None:
    """Records that `model_dir` holds the entry's checkpoint (what `_prune` checks)."""
    path = entry / SOURCES_FILE
    try:
        sources = json.loads(path.read_text())
    except (OSError, ValueError):
        sources = []
    if str(model_dir.resolve()) not in sources:
        _write_json(path, sources + [str(model_dir.resolve())])


def _prune(cache: pathlib.Path, keep: pathlib.Path) -> None:
    """Removes the entries none of whose source folders exist any more (and older layouts)."""
    import shutil

    for entry in cache.iterdir():
        if not entry.is_dir() or entry == keep:
            continue
        try:
            sources = json.loads((entry / SOURCES_FILE).read_text())
        except (OSError, ValueError):
            sources = []
        if not any(os.path.exists(s) for s in sources):
            shutil.rmtree(entry, ignore_errors=True)
            log.info("teacher cache: removed %s (its source is gone)", entry)


def _read_cache(path: pathlib.Path) -> tuple[EncoderConfig, Any] | None:
    if not (path / "encoder_config.json").is_file():
        return None
    import orbax.checkpoint as ocp

    cfg = EncoderConfig.from_dict(json.loads((path / "encoder_config.json").read_text()))
    params = ocp.StandardCheckpointer().restore((path / "params").resolve())
    return cfg, params


def _write_cache(path: pathlib.Path, cfg: EncoderConfig, params: Any) -> None:
    import orbax.checkpoint as ocp

    path.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save((path / "params").resolve(), params, force=True)
    # Written last: its presence marks a complete cache entry.
    (path / "encoder_config.json").write_text(json.dumps(cfg.to_dict(), indent=1))


def _convert_hf(model_dir: pathlib.Path, weights: pathlib.Path) -> tuple[EncoderConfig, Any]:
    """Config and numpy params of a transformers save_pretrained directory."""
    config_file = model_dir / "config.json"
    try:
        cfg = EncoderConfig.from_hf(json.loads(config_file.read_text()))
    except ValueError as e:
        raise ValueError(f"{config_file}: {e}") from e
    try:
        return cfg, convert.state_dict_to_params(cfg, _read_state_dict(weights))
    except ValueError as e:
        raise ValueError(f"{weights}: {e}") from e


def load(
    name_or_path: str,
    *,
    revision: str | None = None,
    use_cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[EncoderConfig, Any]:
    """Loads a HuBERT/WavLM/wav2vec2 teacher as (EncoderConfig, float32 params of jax arrays).

    `name_or_path` is a transformers `save_pretrained` directory (config.json and
    model.safetensors or pytorch_model.bin), a hub id such as 'facebook/hubert-base-ls960', or
    a DPHuBERT/DPWavLM final checkpoint file (their save_final_ckpt.py format, read zero-padded
    by `pruning.checkpoint`), or an ARMHuBERT-repository `.ckpt` (its student's encoder).
    The converted params are kept in `cache_dir` (default `paths.teachers_dir()`).
    """
    source = pathlib.Path(str(name_or_path)).expanduser()
    if dp_checkpoint.is_dp_checkpoint(source):  # a DPHuBERT .pth or an ARMHuBERT .ckpt file
        model_dir, files = source, [source]
        if source.suffix == ".ckpt" and source.with_suffix(".yaml").is_file():
            files.append(source.with_suffix(".yaml"))
    else:
        model_dir = _resolve(str(name_or_path), revision)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir} has no config.json")
        weights = _weights_file(model_dir)
        files = _source_files(model_dir, weights)
    cache = pathlib.Path(cache_dir).expanduser() if cache_dir else paths.teachers_dir()
    # Orbax refuses to save host-local arrays in a multi-process job, so there every
    # process converts the checkpoint itself and the cache is left alone.
    use_cache = use_cache and jax.process_count() == 1
    entry = cache / _cache_key(files, cache) if use_cache else None
    if use_cache and (cached := _read_cache(entry)) is not None:
        _note_source(entry, model_dir)
        log.info("teacher %s: converted params from cache %s", name_or_path, entry)
        return cached

    if model_dir.is_file() and model_dir.suffix == ".ckpt":
        from stackdistill.export import armhubert_read  # export imports the teacher's users

        cfg, params = armhubert_read.read(model_dir)
        params = params["encoder"]
    elif model_dir.is_file():
        cfg, params = dp_checkpoint.read(model_dir)
    else:
        cfg, params = _convert_hf(model_dir, weights)
    params = jax.tree_util.tree_map(jax.numpy.asarray, params)
    if use_cache:
        _write_cache(entry, cfg, params)
        _note_source(entry, model_dir)
        _prune(cache, keep=entry)
        log.info("teacher %s: converted and cached at %s", name_or_path, entry)
    return cfg, params


def default_config() -> Any:
    """Which teacher to distil: a hub id or directory, or a random one written for offline runs."""
    import ml_collections

    c = ml_collections.ConfigDict()
    c.name = "facebook/hubert-base-ls960"  # hub id or save_pretrained directory
    # Offline runs: when `random_arch` is set (EncoderConfig fields) and `name` is not an
    # existing directory, a randomly initialised teacher of that architecture is written there
    # in transformers format first (relative names go under the workdir).
    c.random_arch = ml_collections.FieldReference(None, field_type=dict)
    c.random_seed = 0
    return c


def save(path: str | os.PathLike, cfg: EncoderConfig, params: Any) -> pathlib.Path:
    """Writes encoder params as a transformers save_pretrained directory (no torch needed)."""
    from safetensors.numpy import save_file

    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # safetensors writes raw buffers whatever the strides: transposed views must be copied.
    state = {
        k: np.ascontiguousarray(v) for k, v in convert.params_to_state_dict(cfg, params).items()
    }
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    hf = {**cfg.to_hf(), "architectures": [cfg.hf_architecture], "torch_dtype": "float32"}
    (path / "config.json").write_text(json.dumps(hf, indent=1))
    return path


def write_random(path: str | os.PathLike, cfg: EncoderConfig, seed: int = 0) -> pathlib.Path:
    """Writes a random teacher as a transformers save_pretrained directory (no torch needed).

    With a mask embedding (`masked_spec_embed`), as a pre-trained checkpoint has: masking
    distillation runs the teacher on masked input. The other tensors do not depend on it.
    """
    from stackdistill import models

    params = models.init_params(cfg.replace(mask_emb=True), jax.random.key(seed))
    return save(path, cfg, params)


def prepare(c: Any, workdir: str | os.PathLike) -> str:
    """The teacher to load for config section `c`, writing the random one first if asked."""
    if not c.random_arch:
        return c.name
    path = pathlib.Path(c.name).expanduser()
    if not path.is_absolute():
        path = pathlib.Path(workdir) / path

    def make():
        write_random(path, EncoderConfig(**dict(c.random_arch)), c.random_seed)
        log.info("wrote a random %s teacher to %s", c.random_arch.get("model_type"), path)

    distributed.make_once(lambda: (path / "config.json").is_file(), make, f"random teacher {path}")
    return str(path)


def for_run(config: Any, workdir: str | os.PathLike) -> tuple[EncoderConfig, Any]:
    """The run's teacher (config.teacher), in the run's dtype and encoder options; host params.

    Refuses `config.distill.teacher_layers` beyond the teacher's depth.
    """
    t_cfg, t_params = load(prepare(config.teacher, workdir))
    t_cfg = t_cfg.replace(dtype=config.dtype, **fastpath.encoder_options(config))
    if max(config.distill.teacher_layers) > t_cfg.num_layers:
        raise ValueError(
            f"config.distill.teacher_layers={tuple(config.distill.teacher_layers)} asks for "
            f"layers beyond the teacher's {t_cfg.num_layers}"
        )
    return t_cfg, t_params
