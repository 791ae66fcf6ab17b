"""Training and scoring of SUPERB heads: batches, Adam, dev selection, resumable checkpoints.

Adam (AdamW where the recipe says so: ASV) with global-norm clipping, as s3prl's runner; the
best dev step is kept when a dev split exists, otherwise the last step. Batches are a
function of (seed, step) alone (`IndexStream`), so a head checkpointed with orbax
(`HeadCheckpoint`: params, optimizer state, the best dev params, history) continues after an
interruption exactly as if it had not stopped. A resume whose head config changed is refused
by stackdistill/resume.py's check (only the step count and the logging/checkpoint cadence may
change).
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from stackdistill import resume
from stackdistill.superb import asv, metrics, sd, sf_metrics
from stackdistill.superb.features import StoredFrames
from stackdistill.superb.heads import TaskHead

# Head-config fields a resumed head may change: it continues to a new total, logs differently,
# or other ER folds are run beside its own.
RESUMABLE_CHANGES = ("hp.total_steps", "hp.log_every", "hp.checkpoint_every", "hp.folds")


def size(data: Any) -> int:
    """Utterances in pooled (features, labels) data or in frame data."""
    return len(data[1]) if isinstance(data, tuple) else len(data)


class IndexStream:
    """Training batches of indices, each a function of (seed, step) alone (resumable).

    Uniform: shuffled epochs back to back; with `lengths`, each window of 16 batches is sorted
    by length before it is cut (less padding) and the epoch's batches are shuffled again. With
    `weights`: every batch drawn with replacement in proportion to them, as torch's
    WeightedRandomSampler that s3prl's KS uses.
    """

    def __init__(self, n: int, batch_size: int, seed: int, lengths=None, weights=None):
        self.n, self.batch_size, self.seed, self.lengths = n, batch_size, seed, lengths
        self.p = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
        self._epochs: dict[int, np.ndarray] = {}

    def _epoch(self, e: int) -> np.ndarray:
        if e not in self._epochs:
            rng = np.random.default_rng([self.seed, e])
            epoch = rng.permutation(self.n)
            if self.lengths is not None:
                b, window = self.batch_size, 16 * self.batch_size
                chunks = [epoch[i : i + window] for i in range(0, self.n, window)]
                order = [c[np.argsort(self.lengths[c], kind="stable")] for c in chunks]
                epoch = np.concatenate(order)
                batches = [epoch[i : i + b] for i in range(0, self.n, b)]
                epoch = np.concatenate([batches[i] for i in rng.permutation(len(batches))])
            self._epochs = {k: v for k, v in self._epochs.items() if k >= e - 1}
            self._epochs[e] = epoch
        return self._epochs[e]

    def batch(self, step: int) -> np.ndarray:
        """The indices of training step `step` (1-based)."""
        if self.p is not None:
            rng = np.random.default_rng([self.seed, 1 << 20, step])
            return rng.choice(self.n, self.batch_size, p=self.p)
        start = (step - 1) * self.batch_size
        out = []
        while len(out) < self.batch_size:
            epoch, offset = divmod(start + len(out), self.n)
            take = min(self.n - offset, self.batch_size - len(out))
            out.extend(self._epoch(epoch)[offset : offset + take])
        return np.array(out)


# ------------------------------------------------------------------------------- scoring


def _cut(ids: Sequence[int], eos: int | None) -> list[int]:
    ids = list(ids)
    return ids[: ids.index(eos)] if eos is not None and eos in ids else ids


def predict_all(head: TaskHead, params: Any, data: Any, batch_size: int) -> tuple[list, list]:
    """(references, hypotheses) of every utterance: class ids, or decoded token ids."""
    n = size(data)
    if head.task.kind == "ctc" and isinstance(data, StoredFrames):
        order = np.argsort([s.shape[1] for s in data.sequences])  # less padding per batch
    else:
        order = np.arange(n)
    hyps: list[Any] = [None] * n
    refs: list[Any] = [None] * n
    eos = head.task.eos
    for start in range(0, n, batch_size):
        chunk = order[start : start + batch_size]
        padded = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - len(chunk))])
        batch = head.batch(data, padded)
        ids = np.asarray(head.predict_jit(params, batch))[: len(chunk)]
        if head.task.kind == "ctc":
            decoded = metrics.ctc_greedy_decode(ids, batch["frames"][: len(chunk)])
            labels = metrics.unpad(batch["labels"], batch["label_paddings"])[: len(chunk)]
            decoded, labels = [_cut(d, eos) for d in decoded], [_cut(r, eos) for r in labels]
        else:
            decoded, labels = list(ids), list(batch["labels"][: len(chunk)])
        for i, d, r in zip(chunk, decoded, labels):
            hyps[i], refs[i] = d, r
    return refs, hyps


def scores(
    head: TaskHead, params: Any, data: Any, batch_size: int, weights=None
) -> dict[str, float]:
    """Every metric SUPERB reports for the task on a split (fractions)."""
    if head.task.kind in ("asv", "sd"):
        return (asv if head.task.kind == "asv" else sd).scores(head, params, data, batch_size)
    refs, hyps = predict_all(head, params, data, batch_size)
    metric, vocab = head.task.metric, head.task.classes[0]
    if metric == "accuracy":
        if weights is None:
            return {"accuracy": metrics.accuracy(np.stack(refs), np.stack(hyps))}
        correct = (np.stack(refs) == np.stack(hyps)).all(axis=1)
        return {"accuracy": float(np.sum(np.asarray(weights) * correct) / np.sum(weights))}
    if metric == "per":
        return {"per": metrics.error_rate(refs, hyps)}
    if metric == "wer":
        text = lambda ids: "".join(vocab[i] for i in ids).replace("|", " ")
        return {"wer": metrics.word_error_rate([text(r) for r in refs], [text(h) for h in hyps])}
    text = lambda ids: sf_metrics.tokens_to_text([vocab[i] for i in ids])
    ref_text, hyp_text = [text(r) for r in refs], [text(h) for h in hyps]
    return {
        "slot_type_f1": sf_metrics.slot_type_f1(hyp_text, ref_text),
        "slot_value_cer": sf_metrics.slot_value_cer(hyp_text, ref_text),
    }


def evaluate(head: TaskHead, params: Any, data: Any, batch_size: int, weights=None) -> float:
    """The task's primary metric on a split (accuracy, PER, WER or slot-type F1)."""
    return scores(head, params, data, batch_size, weights)[head.task.metric]


# --------------------------------------------------------------------------- checkpoints


class HeadCheckpoint:
    """One head's orbax checkpoints (the newest kept), tagged with the head's config."""

    def __init__(self, directory: str | pathlib.Path, head_config: dict[str, Any]):
        import orbax.checkpoint as ocp

        self.ocp, self.directory, self.head_config = ocp, pathlib.Path(directory), head_config
        options = ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, enable_async_checkpointing=False
        )
        self.manager = ocp.CheckpointManager(
            self.directory.absolute(), options=options, item_names=("state", "meta")
        )

    def restore(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
        """(state, meta) of the newest checkpoint, None if there is none; refuses a changed head."""
        step = self.manager.latest_step()
        if step is None:
            return None
        meta = self.manager.restore(
            step, args=self.ocp.args.Composite(meta=self.ocp.args.JsonRestore())
        )["meta"]
        resume.check(
            meta["head"],
            self.head_config,
            refuse=tuple(resume.flatten(meta["head"]) | resume.flatten(self.head_config)),
            allow=RESUMABLE_CHANGES,
            what=f"the head in {self.directory}",
            way_out=f"delete {self.directory} to train this head from the start",
        )
        abstract = jax.tree_util.tree_map(self.ocp.utils.to_shape_dtype_struct, abstract_state)
        state = self.manager.restore(
            step, args=self.ocp.args.Composite(state=self.ocp.args.StandardRestore(abstract))
        )["state"]
        return state, meta

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Writes the state and meta of `step` (synchronously)."""
        args = self.ocp.args.Composite(
            state=self.ocp.args.StandardSave(state),
            meta=self.ocp.args.JsonSave({**meta, "step": step, "head": self.head_config}),
        )
        self.manager.save(step, args=args, force=True)

    def close(self) -> None:
        """Releases the manager."""
        self.manager.close()


# ------------------------------------------------------------------------------ training


def _better(score: float, best: float | None, higher: bool) -> bool:
    return best is None or (score > best if higher else score < best)


def train(
    head: TaskHead,
    train_data: Any,
    dev_data: Any | None,
    hp: ml_collections.ConfigDict,
    seed: int,
    log: Callable[[str], None] = print,
    *,
    weights: Sequence[float] | None = None,
    dev_weights: Sequence[float] | None = None,
    checkpoint: HeadCheckpoint | None = None,
    progress: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Trains the featurizer and head; returns (params kept, history).

    `weights`: class-balanced sampling of the training data; `dev_weights`: the dev metric
    weighted likewise; `checkpoint`: resume from and save to it; `progress`: a bar's title.
    """
    lengths = train_data.lengths() if isinstance(train_data, StoredFrames) else None
    stream = IndexStream(size(train_data), hp.batch_size, seed, lengths, weights)
    first = head.batch(train_data, stream.batch(1))
    key = jax.random.key(seed)
    if hasattr(head, "init"):  # a head with training-only layers (ASV)
        params = head.init(key, first)
    else:
        params = head.model.init(key, first["hidden"], first.get("frames"))["params"]
    if hp.get("optimizer", "adam") == "adamw":  # torch.optim.AdamW's default decay
        optimizer = optax.adamw(hp.lr, weight_decay=hp.weight_decay)
    else:
        optimizer = optax.adam(hp.lr)
    tx = optax.chain(optax.clip_by_global_norm(hp.clip_norm), optimizer)
    state = {"params": params, "opt_state": tx.init(params), "best_params": params}
    history: dict[str, Any] = {"loss": [], "dev": [], "best_step": hp.total_steps}
    history.update(dev_score=None, seconds=0.0, resumed_from=None)
    done = 0
    if checkpoint is not None and (restored := checkpoint.restore(state)) is not None:
        state, meta = restored
        history.update(meta["history"])
        done = history["resumed_from"] = int(meta["step"])
        log(f"{head.task.name}: resumed its head at step {done}")

    @jax.jit
    def step(params, opt_state, batch, rng):
        loss, grads = jax.value_and_grad(head.loss)(params, batch, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    bar = None
    if progress is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=hp.total_steps, initial=done, desc=progress, mininterval=2.0)
    start_time, losses = time.perf_counter() - history["seconds"], []
    params, opt_state = state["params"], state["opt_state"]
    for i in range(done + 1, hp.total_steps + 1):
        batch = first if i == 1 else head.batch(train_data, stream.batch(i))
        params, opt_state, loss = step(params, opt_state, batch, jax.random.fold_in(key, i))
        losses.append(loss)
        if bar is not None:
            bar.update(1)
        if i % hp.log_every == 0 or i == hp.total_steps:
            mean_loss = float(np.mean(jax.device_get(losses)))
            if not np.isfinite(mean_loss):
                raise FloatingPointError(f"{head.task.name}: loss {mean_loss} at step {i}")
            history["loss"].append((i, mean_loss))
            log(f"{head.task.name} step {i}/{hp.total_steps} loss {mean_loss:.4f}")
            losses = []
        if dev_data is not None and (i % hp.eval_every == 0 or i == hp.total_steps):
            score = evaluate(head, params, dev_data, hp.batch_size, dev_weights)
            history["dev"].append((i, score))
            log(f"{head.task.name} step {i} dev {head.task.metric} {score:.4f}")
            if _better(score, history["dev_score"], head.task.higher_better):
                history.update(dev_score=score, best_step=i)
                state["best_params"] = jax.tree_util.tree_map(np.array, jax.device_get(params))
        if checkpoint is not None and (i % hp.checkpoint_every == 0 or i == hp.total_steps):
            history["seconds"] = time.perf_counter() - start_time
            state.update(params=params, opt_state=opt_state)
            checkpoint.save(i, state, {"history": history})
    if bar is not None:
        bar.close()
    history["seconds"] = time.perf_counter() - start_time
    best = params if dev_data is None else state["best_params"]
    return best, history
