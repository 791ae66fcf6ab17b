"""The grain input pipeline: records -> decode, resample, crop -> padded batches, per process.

    source -> this process's shard -> shuffle (per epoch) -> repeat -> decode (soundfile, mono,
    16 kHz polyphase, random crop to max_samples, optional normalisation) -> window batching
    (optional length buckets) -> worker processes -> skip report

A batch is a dict of numpy arrays: "audio" float32 (B, S) zero-padded, "lengths" int32 (B,)
valid samples, and the `label_keys` fields. S is max_samples, or one of bucket_boundaries, so a
jitted step compiles once per distinct S rather than once per batch. The result depends only on
(config, seed, process index/count, num_workers); the iterator's get_state/set_state resume it
exactly. With num_workers > 0 grain spawns processes, so scripts need `if __name__ == "__main__"`.
"""

from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from stackdistill.data import audio, batching, sources

PROBE_RECORDS = 64  # records decoded before training to prove that the source has usable audio


class Decode:
    """(stream index, record) -> {"audio", "labels", "index"}, or {"skip": "name: reason"}."""

    def __init__(self, cfg: ml_collections.ConfigDict, seed: int, process_index: int):
        self._max_samples = cfg.max_samples
        self._min_samples = cfg.min_samples
        self._normalize = cfg.normalize
        self._label_keys = tuple(cfg.label_keys)
        self._seed = (seed, process_index)

    def __call__(self, index: int, record: dict[str, Any]) -> dict[str, Any]:
        name = record.get("name", record.get("path", f"#{index}"))
        rng = np.random.default_rng([*self._seed, index])
        try:
            samples = audio.load(record, rng, self._max_samples)
        except audio.BadAudio as e:
            return {"skip": f"{name}: {e}"}
        if len(samples) < self._min_samples:
            return {"skip": f"{name}: too short ({len(samples)} < {self._min_samples} samples)"}
        if self._normalize:
            samples = audio.normalize(samples)
        labels = {key: record.get(key) for key in self._label_keys}
        return {"audio": samples, "labels": labels, "index": index}


def _check_usable(shard: grain.MapDataset, decode: Decode, description: str) -> None:
    """Raises, naming the source, if none of its first records can be used."""
    if len(shard) == 0:
        raise ValueError(f"no records for this process in {description}")
    reasons = []
    for index in range(min(len(shard), PROBE_RECORDS)):
        element = decode(index, shard[index])
        if "skip" not in element:
            return
        reasons.append(element["skip"])
    raise ValueError(
        f"no usable audio in the first {len(reasons)} records of {description}; e.g. "
        + "; ".join(reasons[:3])
    )


def make_dataset(
    data_cfg: ml_collections.ConfigDict,
    *,
    seed: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """The batched grain dataset of one process (index/count default to JAX's).

    Several processes must stack equal shapes into one global batch, so length buckets (chosen
    per process from its own data) are refused there; with finite epochs their shards may also
    differ by one batch, so multi-host training should repeat forever (num_epochs None).
    """
    if process_index is None or process_count is None:
        process_index, process_count = jax.process_index(), jax.process_count()
    if data_cfg.bucket_boundaries and process_count > 1:
        raise ValueError(
            "data.bucket_boundaries needs a single process: each process would pick its own"
            " padded length and the global batch could not be assembled; set it to ()"
        )
    seed = data_cfg.seed if seed is None else seed
    records, description = sources.open_source(data_cfg)
    # Strided shards: disjoint, jointly complete, sizes within one of each other.
    shard = grain.MapDataset.source(records)[process_index::process_count]
    decode = Decode(data_cfg, seed, process_index)
    _check_usable(shard, decode, description)
    ds = shard.shuffle(seed % 2**32) if data_cfg.shuffle else shard
    ds = ds.repeat(data_cfg.num_epochs).map_with_index(decode)
    window = max(data_cfg.bucket_window, 1) if data_cfg.bucket_boundaries else 1
    read_options = grain.ReadOptions(
        num_threads=data_cfg.read_threads,
        prefetch_buffer_size=max(data_cfg.batch_size * window, 4 * data_cfg.read_threads),
    )
    batches = batching.WindowBatch(
        ds.to_iter_dataset(read_options),
        batch_size=data_cfg.batch_size,
        window=window,
        boundaries=tuple(data_cfg.bucket_boundaries),
        max_samples=data_cfg.max_samples,
        label_keys=tuple(data_cfg.label_keys),
        drop_remainder=data_cfg.drop_remainder,
        seed=seed,
    )
    if data_cfg.num_workers > 0:
        _allow_grain_workers()
        batches = batches.mp_prefetch(
            grain.multiprocessing.MultiprocessingOptions(num_workers=data_cfg.num_workers)
        )
    return batching.ReportSkipped(batches)


def make_loader(
    data_cfg: ml_collections.ConfigDict,
    *,
    seed: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DatasetIterator:
    """Iterator of this process's batches, with get_state/set_state and skip counts
    (`num_skipped`, `skipped_examples`); seed None takes data_cfg.seed."""
    ds = make_dataset(data_cfg, seed=seed, process_index=process_index, process_count=process_count)
    return iter(ds)


def _allow_grain_workers() -> None:
    """grain's workers read absl flags; mark them parsed (defaults) when no app.run() did."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def to_global(batch: dict[str, np.ndarray], sharding: Any) -> dict[str, Any]:
    """This process's batch -> global jax.Arrays whose batch axis is split as `sharding` says.

    The first partition-spec entry of a NamedSharding is applied to each array's leading axis
    (other axes replicated), so one sharding serves "audio" (B, S) and "lengths" (B,). String
    labels stay local numpy arrays.
    """

    def convert(x: np.ndarray) -> Any:
        if x.dtype.kind in "USO":
            return x
        array_sharding = sharding
        if isinstance(sharding, NamedSharding):
            spec = (tuple(sharding.spec)[:1] + (None,) * x.ndim)[: x.ndim]
            array_sharding = NamedSharding(sharding.mesh, PartitionSpec(*spec))
        return jax.make_array_from_process_local_data(array_sharding, x)

    return {key: convert(np.asarray(value)) for key, value in batch.items()}


def audio_seconds(batch: dict[str, np.ndarray]) -> float:
    """Seconds of real (unpadded) audio in a batch."""
    return float(np.sum(batch["lengths"])) / audio.SAMPLE_RATE
