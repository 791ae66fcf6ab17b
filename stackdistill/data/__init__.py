"""Audio data: LibriSpeech folders, manifests, TFDS, packed ArrayRecord and synthetic speech,
read through one grain pipeline into fixed-shape padded batches.

    from stackdistill import data
    cfg = data.default_config(); cfg.source = "synthetic"; cfg.path = "/tmp/synth"
    it = data.make_loader(cfg)            # batches: {"audio": (B, S), "lengths": (B,), ...}
    batch = data.to_global(next(it), sharding)
    state = it.get_state()                # later: it.set_state(state)

Names are imported on first use, so worker processes that need one module (the synthesiser,
the packer) do not pay for grain or JAX.
"""

import importlib
from typing import Any

_EXPORTS = {
    "SAMPLE_RATE": "audio",
    "BadAudio": "audio",
    "default_config": "config",
    "librispeech_records": "manifest",
    "read_manifest": "manifest",
    "write_manifest": "manifest",
    "PackedSource": "pack",
    "pack": "pack",
    "audio_seconds": "pipeline",
    "make_dataset": "pipeline",
    "make_loader": "pipeline",
    "to_global": "pipeline",
    "open_source": "sources",
    "generate_synthetic": "synth",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Imports an exported name from its module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    return getattr(module, "generate" if name == "generate_synthetic" else name)
