"""Audio data: LibriSpeech folders, manifests, TFDS, packed ArrayRecord and synthetic speech,
read through one grain pipeline into fixed-shape padded batches.

    from stackdistill import data
    cfg = data.default_config(); cfg.source = "synthetic"; cfg.path = "/tmp/synth"
    it = data.make_loader(cfg)            # batches: {"audio": (B, S), "lengths": (B,), ...}
    batch = data.to_global(next(it), sharding)
    state = it.get_state()                # later: it.set_state(state)
"""

from stackdistill.data.audio import SAMPLE_RATE, BadAudio
from stackdistill.data.config import default_config
from stackdistill.data.manifest import read_manifest, write_manifest
from stackdistill.data.pack import PackedSource, pack
from stackdistill.data.pipeline import audio_seconds, make_dataset, make_loader, to_global
from stackdistill.data.sources import librispeech_records, open_source
from stackdistill.data.synth import generate as generate_synthetic

__all__ = [
    "SAMPLE_RATE",
    "BadAudio",
    "PackedSource",
    "audio_seconds",
    "default_config",
    "generate_synthetic",
    "librispeech_records",
    "make_dataset",
    "make_loader",
    "open_source",
    "pack",
    "read_manifest",
    "to_global",
    "write_manifest",
]
