"""The record codec and ArrayRecord shards that packed audio and teacher targets share.

A record is a 4-byte magic naming its kind (b"SDA1" packed audio, b"SDT1" teacher targets),
a little-endian uint32 header size, a JSON header, then the arrays back to back. The header
holds the record's own fields and `arrays`: for each array its dtype (int16, int8, float32,
bfloat16 and float8_e4m3fn as their raw bits; little-endian), shape and byte offset after the
header.
Shards are ArrayRecord files written with group_size 1 (the cheapest random access).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np
from etils import epath

SUFFIX = ".array_record"
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT8 = np.dtype(ml_dtypes.float8_e4m3fn)
_VIEWS = {"bfloat16": BFLOAT16, "float8_e4m3fn": FLOAT8}  # stored as their raw bits
_STORED = {"int16": "<i2", "int8": "i1", "float32": "<f4", "bfloat16": "<u2", "float8_e4m3fn": "u1"}


def encode(magic: bytes, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    """JSON-able header fields + named arrays -> one record of kind `magic`."""
    blobs, entries, offset = [], {}, 0
    for key, value in arrays.items():
        kind = value.dtype.name
        if kind not in _STORED:
            raise ValueError(f"record array {key!r} has unsupported dtype {value.dtype}")
        raw = np.uint16 if kind == "bfloat16" else np.uint8
        stored = np.ascontiguousarray(value).view(raw) if kind in _VIEWS else value
        blob = np.ascontiguousarray(stored, _STORED[kind]).tobytes()
        entries[key] = {"dtype": kind, "shape": list(value.shape), "offset": offset}
        blobs.append(blob)
        offset += len(blob)
    header_bytes = json.dumps({**header, "arrays": entries}, default=lambda v: v.item()).encode()
    return magic + struct.pack("<I", len(header_bytes)) + header_bytes + b"".join(blobs)


def decode(data: bytes, magic: bytes) -> dict[str, Any]:
    """One record of kind `magic` -> its header fields and its arrays in one dict."""
    if data[:4] != magic:
        raise ValueError(f"not a stackdistill {magic.decode()} record (starts {data[:4]!r})")
    (header_size,) = struct.unpack("<I", data[4:8])
    header = json.loads(data[8 : 8 + header_size])
    start = 8 + header_size
    # Packed audio written before the header had an array table: the int16 samples follow it.
    default = {"audio": {"dtype": "int16", "shape": [header.get("num_samples")], "offset": 0}}
    entries = header.pop("arrays", default)
    for key, entry in entries.items():
        shape = tuple(entry["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        raw = np.frombuffer(
            data, _STORED[entry["dtype"]], count=count, offset=start + entry["offset"]
        )
        view = _VIEWS.get(entry["dtype"])
        header[key] = (raw if view is None else raw.view(view)).reshape(shape)
    return header


def shard_paths(path: str | os.PathLike) -> list[str]:
    """The shards of a folder in name order, or `path` itself when it is one shard."""
    location = epath.Path(path)
    if str(path).endswith(SUFFIX):
        return [str(location)]
    shards = sorted(str(p) for p in location.glob("*" + SUFFIX))
    if not shards:
        raise FileNotFoundError(f"no {SUFFIX} shards in {path}")
    return shards


def writer(path: str | os.PathLike) -> Any:
    """An ArrayRecordWriter for one shard file."""
    from array_record.python.array_record_module import ArrayRecordWriter

    return ArrayRecordWriter(str(path), "group_size:1")  # 1: cheapest random access


class RecordSource:
    """Random access to the decoded records of the shards at `path` (grain reads it).

    A record that does not read (a damaged shard) raises RunError naming the shard, the
    record in it and `what_to_do`.
    """

    def __init__(self, path: str | os.PathLike, magic: bytes, what_to_do: str = ""):
        import grain  # heavy import, deferred so that writing shards does not pay for it

        self._paths = shard_paths(path)
        self._magic = magic
        self._what_to_do = what_to_do or "Write that shard again."
        try:
            self._records = grain.sources.ArrayRecordDataSource(self._paths)
        except Exception as e:  # noqa: BLE001 - a shard whose index does not read
            raise self._unreadable(e) from None

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return decode(self._records[index], self._magic)
        except Exception as e:  # noqa: BLE001 - riegeli, JSON or struct: the bytes are bad
            raise self._damaged(index, e) from None

    def _unreadable(self, error: Exception) -> Exception:
        """The first shard that does not open, named (or `error` when each opens alone)."""
        from array_record.python.array_record_module import ArrayRecordReader

        from stackdistill import errors

        for path in self._paths:
            try:
                ArrayRecordReader(path).close()
            except Exception as e:  # noqa: BLE001
                return errors.RunError(
                    f"damaged shard {path} (its index does not read): {_first_line(e)}\n"
                    f"{self._what_to_do}"
                )
        return error

    def _damaged(self, index: int, error: Exception) -> Exception:
        from stackdistill import errors

        try:  # array_record's own map from a global index to (shard, position)
            shard, position = self._records._reader_idx_and_position(index)
            where = f"{self._paths[shard]} (record {position})"
        except Exception:  # noqa: BLE001
            where = f"one of {len(self._paths)} shards, e.g. {self._paths[0]} (record {index})"
        return errors.RunError(f"damaged shard {where}: {_first_line(error)}\n{self._what_to_do}")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]
