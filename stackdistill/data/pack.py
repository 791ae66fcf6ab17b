"""Pack a corpus into ArrayRecord shards: 16 kHz int16 audio + labels, read with random access.

    python -m stackdistill.data.pack SRC OUT --shards N [--subsets train-clean-100 ...]

SRC is a manifest (.tsv/.jsonl), a folder holding manifest.jsonl or manifest.tsv, or a
LibriSpeech folder (with --subsets). OUT may be a gs:// URL: shards are written locally and
copied there through etils.epath. Millions of small files on a bucket become a few large
files that grain reads in any order. A record (codec in data/recordio.py) is b"SDA1", a JSON
header (labels, sample_rate, num_samples) and one int16 array, "audio".
"""

import argparse
import concurrent.futures
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

from stackdistill.data import audio, manifest, recordio

MAGIC = b"SDA1"


def encode_record(samples: np.ndarray, labels: dict[str, Any]) -> bytes:
    """float [-1, 1] or int16 samples at 16 kHz + JSON-able labels -> one record."""
    if samples.dtype != np.int16:
        samples = np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)
    header = dict(labels, sample_rate=audio.SAMPLE_RATE, num_samples=len(samples))
    return recordio.encode(MAGIC, header, {"audio": samples})


def decode_record(data: bytes) -> dict[str, Any]:
    """One record -> {"audio": int16 samples, "sample_rate", labels...}."""
    return recordio.decode(data, MAGIC)


class PackedSource(recordio.RecordSource):
    """The records of all ArrayRecord shards in a folder (or one shard file)."""

    def __init__(self, path: str):
        super().__init__(path, MAGIC)


def _pack_shard(records: Sequence[dict[str, Any]], shard_path: str) -> tuple[int, list[str]]:
    """Worker: decodes records (whole, 16 kHz) into one shard; returns (written, skipped)."""
    remote = "://" in shard_path
    local_path = os.path.join(tempfile.mkdtemp(), "shard") if remote else shard_path
    writer = recordio.writer(local_path)
    written, skipped = 0, []
    rng = np.random.default_rng(0)  # unused: nothing is cropped
    for record in records:
        try:
            samples = audio.load(record, rng, max_samples=sys.maxsize)
        except audio.BadAudio as e:
            skipped.append(f"{record.get('name', record.get('path'))}: {e}")
            continue
        labels = {k: v for k, v in record.items() if k not in ("path", "audio", "sample_rate")}
        writer.write(encode_record(samples, labels))
        written += 1
    writer.close()
    if remote:
        epath.Path(local_path).copy(epath.Path(shard_path), overwrite=True)
        os.remove(local_path)
    return written, skipped


def pack(
    records: Sequence[dict[str, Any]], out_dir: str, num_shards: int, workers: int | None = None
) -> tuple[list[str], int, list[str]]:
    """Writes records into num_shards shards; returns (shard paths, records written, skipped)."""
    epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(records), num_shards + 1).astype(int)
    shard_paths = [
        str(epath.Path(out_dir) / f"data-{k:05d}-of-{num_shards:05d}{recordio.SUFFIX}")
        for k in range(num_shards)
    ]
    parts = [list(records[bounds[k] : bounds[k + 1]]) for k in range(num_shards)]
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=workers or min(num_shards, os.cpu_count() or 1),
        mp_context=multiprocessing.get_context("spawn"),
    ) as pool:
        results = list(pool.map(_pack_shard, parts, shard_paths))
    written = sum(n for n, _ in results)
    skipped = [name for _, names in results for name in names]
    return shard_paths, written, skipped


def records_from(src: str, subsets: Sequence[str]) -> list[dict[str, Any]]:
    """Records of a manifest file, a folder with a manifest, or a LibriSpeech folder."""
    location = epath.Path(src)
    if location.is_file():
        return manifest.read_manifest(src)
    for name in ("manifest.jsonl", "manifest.tsv"):
        if (location / name).exists():
            return manifest.read_manifest(str(location / name))
    if subsets:
        return manifest.librispeech_records(src, subsets)
    raise FileNotFoundError(
        f"{src} has no manifest.jsonl/.tsv: pass --subsets for a LibriSpeech folder or write one"
        " with `python -m stackdistill.data.manifest`"
    )


def main(argv: list[str] | None = None) -> None:
    """Command line: pack a corpus into ArrayRecord shards."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="manifest file, folder with a manifest, or LibriSpeech root")
    parser.add_argument("out", help="output folder (local or gs://)")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--subsets", nargs="*", default=(), help="LibriSpeech subsets to pack")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    records = records_from(args.src, args.subsets)
    shard_paths, written, skipped = pack(records, args.out, args.shards, args.workers)
    for name in skipped[:10]:
        print(f"skipped {name}", file=sys.stderr)
    print(f"{written} records in {len(shard_paths)} shards in {args.out}; {len(skipped)} skipped")


if __name__ == "__main__":
    main()
