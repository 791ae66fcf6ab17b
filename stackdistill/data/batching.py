"""grain stages that batch decoded utterances and report the ones that had to be skipped.

`WindowBatch` reads a window of usable utterances (skipping bad ones), optionally sorts it by
length into buckets, and emits fixed-shape padded batches. Its checkpoint state is the parent's
state at the window start plus the number of batches already emitted, so a restore re-reads the
window and continues exactly. `ReportSkipped` (outermost) takes the skip notes off each batch,
counts them, logs the first few and keeps the count in its state.
"""

import logging
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

log = logging.getLogger(__name__)
SKIPPED_KEY = "_skipped"  # per-batch note of the utterances skipped while filling it


def pad_batch(
    examples: Sequence[dict[str, Any]], padded_length: int, label_keys: Sequence[str]
) -> dict[str, np.ndarray]:
    """Utterances -> {"audio": (B, padded_length) zero-padded, "lengths": (B,), labels...}."""
    audio = np.zeros((len(examples), padded_length), np.float32)
    lengths = np.zeros(len(examples), np.int32)
    for row, example in enumerate(examples):
        samples = example["audio"][:padded_length]
        audio[row, : len(samples)] = samples
        lengths[row] = len(samples)
    batch = {"audio": audio, "lengths": lengths}
    for key in label_keys:
        batch[key] = label_array([e["labels"].get(key) for e in examples])
    return batch


def label_array(values: Sequence[Any]) -> np.ndarray:
    """Labels of a batch -> int32 (missing: -1), float32 (missing: NaN) or str (missing: "")."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int | np.integer | bool) for v in present):
        return np.array([-1 if v is None else int(v) for v in values], np.int32)
    if present and all(isinstance(v, float | int | np.number) for v in present):
        return np.array([np.nan if v is None else float(v) for v in values], np.float32)
    return np.array(["" if v is None else str(v) for v in values])


def split_window(
    examples: list[dict[str, Any]],
    batch_size: int,
    boundaries: Sequence[int],
    max_samples: int,
    drop_remainder: bool,
    rng: np.random.Generator,
) -> list[tuple[list[dict[str, Any]], int]]:
    """A window of utterances -> [(batch examples, padded length)], bucketed by length if
    boundaries are given (then batch order is shuffled), else in reading order at max_samples."""
    if boundaries:
        examples = sorted(examples, key=lambda e: len(e["audio"]))
    groups = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    if groups and drop_remainder and len(groups[-1]) < batch_size:
        groups.pop()
    if not boundaries:
        return [(group, max_samples) for group in groups]
    sizes = sorted({*(b for b in boundaries if b < max_samples), max_samples})
    batches = []
    for group in groups:
        longest = max(len(e["audio"]) for e in group)
        batches.append((group, next(s for s in sizes if s >= longest)))
    return [batches[i] for i in rng.permutation(len(batches))]


class _WindowBatchIterator(grain.DatasetIterator):
    """Iterator of WindowBatch; see the module docstring for its state."""

    def __init__(self, parent: grain.DatasetIterator, options: dict[str, Any]):
        super().__init__(parent)
        self._options = options
        self._window_start_state: dict[str, Any] | None = None
        self._batches: list[dict[str, np.ndarray]] = []
        self._emitted = 0

    def _read_window(self) -> None:
        """Reads the next window of utterances and turns it into batches."""
        opts = self._options
        self._window_start_state = self._parent.get_state()
        examples, skipped = [], []
        while len(examples) < opts["batch_size"] * opts["window"]:
            try:
                element = next(self._parent)
            except StopIteration:
                break
            if "skip" in element:
                skipped.append(element["skip"])
            else:
                examples.append(element)
        window_id = examples[0]["index"] if examples else 0
        rng = np.random.default_rng([opts["seed"], window_id])
        groups = split_window(
            examples,
            opts["batch_size"],
            opts["boundaries"],
            opts["max_samples"],
            opts["drop_remainder"],
            rng,
        )
        self._batches = [pad_batch(g, length, opts["label_keys"]) for g, length in groups]
        if self._batches:
            self._batches[0][SKIPPED_KEY] = skipped
        elif skipped:  # the data ended: a batch without audio carries the last notes
            self._batches = [{SKIPPED_KEY: skipped}]
        self._emitted = 0

    def __next__(self) -> dict[str, Any]:
        if self._emitted >= len(self._batches):
            self._read_window()
            if not self._batches:
                raise StopIteration
        batch = self._batches[self._emitted]
        self._batches[self._emitted] = {}  # emitted batches are not kept in memory
        self._emitted += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        if self._emitted >= len(self._batches):
            return {"parent": self._parent.get_state(), "emitted": 0}
        return {"parent": self._window_start_state, "emitted": self._emitted}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._batches, self._emitted = [], 0
        if state["emitted"]:
            self._read_window()
            self._emitted = state["emitted"]


class WindowBatch(grain.IterDataset):
    """Decoded utterances -> padded batches of a fixed set of shapes (see the module doc)."""

    def __init__(self, parent: grain.IterDataset, **options: Any):
        super().__init__(parent)
        self._options = options

    def __iter__(self) -> grain.DatasetIterator:
        return _WindowBatchIterator(self._parent.__iter__(), self._options)


def _is_array_view(value: Any) -> bool:
    """True for ndarray subclasses such as grain's SharedMemoryArray."""
    return isinstance(value, np.ndarray) and type(value) is not np.ndarray


class _ReportSkippedIterator(grain.DatasetIterator):
    """Iterator of ReportSkipped: `num_skipped` and `skipped_examples` hold the totals so far."""

    MAX_EXAMPLES = 5

    def __init__(self, parent: grain.DatasetIterator):
        super().__init__(parent)
        self.num_skipped = 0
        self.skipped_examples: list[str] = []

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._parent)
        while "audio" not in batch:  # only skip notes, at the end of the data
            self._count(batch.pop(SKIPPED_KEY))
            batch = next(self._parent)
        # Arrays from worker processes live in shared memory: copy them out so it can be freed.
        batch = {k: np.array(v) if _is_array_view(v) else v for k, v in batch.items()}
        self._count(batch.pop(SKIPPED_KEY, ()))
        return batch

    def _count(self, notes: Sequence[str]) -> None:
        """Adds skip notes to the totals; logs the first few, then now and then a count."""
        for note in notes:
            self.num_skipped += 1
            if len(self.skipped_examples) < self.MAX_EXAMPLES:
                self.skipped_examples.append(note)
                log.warning("skipped utterance %s", note)
            elif self.num_skipped in (10, 100, 1000) or self.num_skipped % 10_000 == 0:
                log.warning("%d utterances skipped so far", self.num_skipped)

    def get_state(self) -> dict[str, Any]:
        return {
            "parent": self._parent.get_state(),
            "num_skipped": self.num_skipped,
            "skipped_examples": list(self.skipped_examples),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self.num_skipped = state["num_skipped"]
        self.skipped_examples = list(state["skipped_examples"])


class ReportSkipped(grain.IterDataset):
    """Outermost stage: removes the skip notes from batches and keeps their count."""

    def __iter__(self) -> grain.DatasetIterator:
        return _ReportSkippedIterator(self._parent.__iter__())
