"""Random-access sources of audio records, one per `data.source` value.

A record is a dict with either `path` (an audio file, local or any etils.epath URL) or `audio`
(a sample array) with `sample_rate`, plus `name` (used in logs) and labels. Sources are
sequences (len + getitem) that pickle, so grain's worker processes can read them.
"""

from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from stackdistill.data import manifest, pack, synth
from stackdistill.data.manifest import librispeech_records


class ConcatSource:
    """Several random-access sources read as one."""

    def __init__(self, sources: Sequence[Any]):
        self._sources = list(sources)
        self._ends = np.cumsum([len(s) for s in self._sources])

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, index: int) -> Any:
        which = int(np.searchsorted(self._ends, index, side="right"))
        start = int(self._ends[which - 1]) if which else 0
        return self._sources[which][index - start]


class TfdsSource:
    """A prepared TFDS audio dataset (e.g. librispeech) read as records."""

    def __init__(self, name: str, split: str, data_dir: str | None):
        self._description = f"TFDS {name!r} split {split!r} in {data_dir or 'the default data_dir'}"
        try:
            import tensorflow_datasets as tfds

            parts = [
                tfds.data_source(name, split=s.strip(), data_dir=data_dir, download=False)
                for s in split.split("+")
            ]
        except ImportError as e:
            raise ImportError(
                f"{self._description} cannot be opened: {e}. TFDS audio builders need TensorFlow;"
                " install the extra with `pip install 'stackdistill[tfds]'`, prepare the data with"
                f" `tfds build {name} --file_format=array_record"
                + (f" --data_dir={data_dir}`" if data_dir else "`")
                + ", or use source='librispeech' on the openslr folders."
            ) from e
        except Exception as e:  # not prepared, wrong format or split: say how to prepare it
            raise FileNotFoundError(
                f"{self._description} cannot be opened ({type(e).__name__}: {e}). Prepare it with"
                f" `tfds build {name} --file_format=array_record"
                + (f" --data_dir={data_dir}`" if data_dir else "`")
                + " (needs `pip install 'stackdistill[tfds]'`)."
            ) from e
        features = parts[0].dataset_info.features
        self._audio_key = "speech" if "speech" in features else "audio"
        self._sample_rate = int(getattr(features[self._audio_key], "sample_rate", 16_000) or 16_000)
        self._source = ConcatSource(parts)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = dict(self._source[index])
        samples = np.asarray(example.pop(self._audio_key))
        if samples.dtype == np.int64:  # TFDS's Audio feature stores int16 values as int64
            samples = samples.astype(np.int16)
        labels = {k: v.decode() if isinstance(v, bytes) else v for k, v in example.items()}
        name = labels.get("id", str(index))
        return {"audio": samples, "sample_rate": self._sample_rate, "name": name, **labels}


def open_source(cfg: ml_collections.ConfigDict) -> tuple[Sequence[dict[str, Any]], str]:
    """(random-access records, a description naming where they come from) for a data config."""
    kind = cfg.source
    if kind == "tfds":
        source = TfdsSource(cfg.tfds_name, cfg.split, cfg.path or None)
        return source, source._description
    if not cfg.path:
        raise ValueError(f"data.path is empty: source {kind!r} needs a folder or file")
    if kind == "librispeech":
        return librispeech_records(cfg.path, cfg.subsets), f"LibriSpeech {cfg.path}"
    if kind == "manifest":
        return manifest.read_manifest(cfg.path), f"manifest {cfg.path}"
    if kind == "synthetic":
        manifest_path = synth.ensure_corpus(cfg.path, cfg.synth_num, cfg.synth_seed)
        return manifest.read_manifest(manifest_path), f"synthetic corpus {manifest_path}"
    if kind == "arrayrecord":
        return pack.PackedSource(cfg.path), f"ArrayRecord shards in {cfg.path}"
    raise ValueError(
        f"unknown data.source {kind!r}: librispeech | manifest | tfds | arrayrecord | synthetic"
    )
