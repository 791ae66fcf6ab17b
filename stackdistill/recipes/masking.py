"""Masking distillation (MaskHuBERT, ARMHuBERT): span masks and the masked/unmasked loss.

Follows sungnyun/ARMHuBERT (arXiv 2305.11685). Their train.py `forward` (L128-165) runs the
frozen teacher twice on the same waveform, with `mask=True` and `mask=False`, and hands the
masked run's `mask_indices` to the student, which replaces those frames by its own learned
`mask_emb` (models/maskhubert/model.py L329-336, L428-432). `calculate_loss` (L239-312) pulls
the student's masked frames towards the *unmasked* teacher and its unmasked frames towards the
*masked* teacher, with hint losses on the intermediate layers and the reconstruction loss on the
last.

The mask is fairseq's `compute_mask_indices` (fairseq/data/data_utils.py, at commit f862ff51
of April 2022, the version fairseq 0.12 ships and their teacher_utils/hubert.py L16 imports),
called by HuBERT's `apply_mask` (teacher_utils/hubert.py L338-355) with `min_masks=2` and the
yaml's `teacher:` block (conf/maskhubert/maskhubert-960.yaml: mask_prob 0.8, mask_length 10,
mask_selection uniform, mask_other 0, no_mask_overlap True, mask_min_space 1). Their collate
always passes a padding mask (utils/dataset.py L68-74), so fairseq takes its per-utterance
branch (L441-448): each row draws its own number of spans from its own valid length.

`sample_mask` is that algorithm written as a pure JAX function with static shapes (it runs in
the jitted step): a `fori_loop` over span slots keeps fairseq's list of free intervals
("parts") in a fixed array. The random draws differ from NumPy's, the rules and distributions
are the same (tests/test_masking.py runs a NumPy transcription of fairseq beside it).

transformers' `_compute_mask_indices` (models/wav2vec2/modeling_wav2vec2.py) is a different
rule set: fixed span length only (no uniform/normal/poisson), spans may overlap (no
`no_overlap`/`min_space`), a span that would run past the end is moved back inside, the span
count uses one shared random number, and there is no `require_same_masks` equalisation.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections

Array = jax.Array
MIN_MASKS = 2  # HuBERT's apply_mask passes min_masks=2 (teacher_utils/hubert.py L348)
SELECTIONS = ("static", "uniform", "normal", "poisson")
REC_LOSSES = ("mse", "l1")


def default_config() -> ml_collections.ConfigDict:
    """Their yaml's `teacher:` masking block (conf/maskhubert/maskhubert-960.yaml L3-8)."""
    return ml_collections.ConfigDict(
        dict(prob=0.8, length=10, selection="uniform", other=0.0, no_overlap=True, min_space=1)
    )


def validate(m: ml_collections.ConfigDict) -> None:
    """Refuses masking settings (`config.distill.masking`) that cannot work."""
    if m.selection not in SELECTIONS:
        raise ValueError(
            f"config.distill.masking.selection must be one of {SELECTIONS}, got {m.selection!r}"
        )
    if not 0.0 < m.prob <= 1.0:
        raise ValueError(f"config.distill.masking.prob must be in (0, 1], got {m.prob}")
    if m.length < 1 or m.min_space < 0 or m.other < 0:
        raise ValueError(
            "config.distill.masking: length must be >= 1, min_space and other >= 0 "
            f"(got length={m.length}, min_space={m.min_space}, other={m.other})"
        )


def max_spans(num_frames: int, prob: float, length: int) -> int:
    """Static bound on a row's span count: int(p * sz / L + u) <= floor(p * T / L) + 1."""
    return max(MIN_MASKS, int(prob * num_frames / float(length)) + 1)


def _span_lengths(key: Array, n: int, m: ml_collections.ConfigDict) -> Array:
    """`n` span lengths by `mask_selection` (data_utils.py L453-464)."""
    length = int(m.length)
    if m.selection == "static":
        return jnp.full((n,), length, jnp.int32)
    if m.selection == "uniform":  # np.random.randint(mask_other, mask_length * 2 + 1)
        return jax.random.randint(key, (n,), int(m.other), 2 * length + 1, jnp.int32)
    if m.selection == "normal":  # max(1, round(N(mask_length, mask_other)))
        x = length + float(m.other) * jax.random.normal(key, (n,))
        return jnp.maximum(1, jnp.round(x)).astype(jnp.int32)
    return jax.random.poisson(key, float(length), (n,)).astype(jnp.int32)


def _row_mask(key: Array, sz: Array, num_frames: int, m: ml_collections.ConfigDict) -> Array:
    """One utterance's spans before `require_same_masks` (data_utils.py L441-513)."""
    n_max = max_spans(num_frames, float(m.prob), int(m.length))
    k_num, k_len, k_loop = jax.random.split(key, 3)
    t = jnp.arange(num_frames)
    # L443-448: probabilistic rounding of the span count, at least min_masks.
    u = jax.random.uniform(k_num, ())
    num_mask = jnp.floor(m.prob * sz.astype(jnp.float32) / float(m.length) + u).astype(jnp.int32)
    num_mask = jnp.maximum(MIN_MASKS, num_mask)
    slot_valid = jnp.arange(n_max) < num_mask
    lengths = _span_lengths(k_len, n_max, m)
    # L466-467: all lengths zero -> the first becomes min(mask_length, sz - 1).
    total = jnp.sum(jnp.where(slot_valid, lengths, 0))
    lengths = lengths.at[0].set(
        jnp.where(total == 0, jnp.minimum(int(m.length), sz - 1), lengths[0])
    )
    big = jnp.iinfo(jnp.int32).max
    min_length = jnp.min(jnp.where(slot_valid, lengths, big))
    if m.no_overlap:
        return _no_overlap(k_loop, sz, t, lengths, slot_valid, min_length, int(m.min_space))
    return _overlapping(k_loop, sz, t, lengths, slot_valid, num_mask, min_length)


def _no_overlap(key, sz, t, lengths, slot_valid, min_length, min_space) -> Array:
    """fairseq's `no_overlap` branch (L469-497): longest span first, into a free part.

    Each span picks a part with probability proportional to its length among the parts that
    can hold it (length + min_space frames), starts uniformly in [s, e - length), and splits
    the part into what is left on either side (keeping min_space free frames, and only parts
    longer than the shortest span). A span that fits nowhere stops the loop (`break`, L491-492).
    """
    n_max = lengths.shape[0]
    order = jnp.argsort(jnp.where(slot_valid, -lengths, 1), stable=True)
    sorted_lengths, sorted_valid = lengths[order], slot_valid[order]
    # parts[i] = (start, end); slot j + 1 receives the right remainder of span j.
    starts = jnp.zeros((n_max + 1,), jnp.int32)
    ends = jnp.zeros((n_max + 1,), jnp.int32).at[0].set(sz)
    mask = jnp.zeros(t.shape, bool)

    def body(j, carry):
        starts, ends, mask, stopped = carry
        length = sorted_lengths[j]
        active = sorted_valid[j] & ~stopped
        size = ends - starts
        lens = jnp.where(size >= length + min_space, size, 0)
        l_sum = jnp.sum(lens)
        stopped = stopped | (active & (l_sum == 0))
        place = active & (l_sum > 0)
        k_part, k_start = jax.random.split(jax.random.fold_in(key, j))
        probs = lens / jnp.maximum(l_sum, 1)
        c = jax.random.choice(k_part, n_max + 1, p=jnp.where(l_sum > 0, probs, 1.0 / (n_max + 1)))
        s, e = starts[c], ends[c]
        start = jax.random.randint(k_start, (), s, jnp.maximum(e - length, s + 1))
        mask = mask | (place & (t >= start) & (t < start + length))
        keep_left = start - s - min_space >= min_length
        keep_right = e - start - length - min_space > min_length
        new_starts = starts.at[c].set(jnp.where(keep_left, s, 0))
        new_ends = ends.at[c].set(jnp.where(keep_left, start - min_space + 1, 0))
        new_starts = new_starts.at[j + 1].set(jnp.where(keep_right, start + length + min_space, 0))
        new_ends = new_ends.at[j + 1].set(jnp.where(keep_right, e, 0))
        starts = jnp.where(place, new_starts, starts)
        ends = jnp.where(place, new_ends, ends)
        return starts, ends, mask, stopped

    carry = (starts, ends, mask, jnp.zeros((), bool))
    return jax.lax.fori_loop(0, n_max, body, carry)[2]


def _overlapping(key, sz, t, lengths, slot_valid, num_mask, min_length) -> Array:
    """fairseq's overlapping branch (L498-511): distinct starts in [0, sz - min_len)."""
    min_len = jnp.where(sz - min_length <= num_mask, sz - num_mask - 1, min_length)
    u = jnp.where(t < sz - min_len, jax.random.uniform(key, t.shape), 2.0)
    span_starts = jnp.argsort(u)[: lengths.shape[0]]  # a uniform draw without replacement
    in_span = (t[None, :] >= span_starts[:, None]) & (t[None, :] < (span_starts + lengths)[:, None])
    return jnp.any(in_span & slot_valid[:, None], axis=0) & (t < sz)


def sample_mask(
    key: Array, frame_lengths_b: Array, num_frames: int, m: ml_collections.ConfigDict
) -> Array:
    """fairseq `compute_mask_indices` for valid lengths (B,) -> (B, T) bool, jit-able.

    `require_same_masks` (default True, L515-518): every row keeps the batch's smallest count
    of masked frames, a uniform random subset of its own. Padded frames are never masked.
    """
    b = frame_lengths_b.shape[0]
    k_rows, k_same = jax.random.split(key)
    sz_b = jnp.minimum(frame_lengths_b.astype(jnp.int32), num_frames)
    rows = jax.vmap(lambda k, sz: _row_mask(k, sz, num_frames, m))(
        jax.random.split(k_rows, b), sz_b
    )
    count_b = jnp.sum(rows, axis=1)
    target = jnp.min(count_b)
    u_bt = jnp.where(rows, jax.random.uniform(k_same, rows.shape), 2.0)
    rank_bt = jnp.argsort(jnp.argsort(u_bt, axis=1), axis=1)
    return rows & (rank_bt < target)


def _frame_error(pred_btd: Array, target_btd: Array, rec_loss: str) -> Array:
    """F.mse_loss / F.l1_loss (reduction="none") then `.mean(-1)`: per frame (B, T), float32."""
    diff = pred_btd.astype(jnp.float32) - jax.lax.stop_gradient(target_btd).astype(jnp.float32)
    return jnp.mean(jnp.square(diff) if rec_loss == "mse" else jnp.abs(diff), axis=-1)


def masked_loss(
    preds: Mapping[int, Array],
    unmasked_hidden: Array,
    masked_hidden: Array,
    frames_mask_bt: Array,
    time_mask_bt: Array,
    output_layer: int,
    hint_weight: float = 0.1,
    rec_weight: float = 1.0,
    rec_loss: str = "mse",
) -> tuple[Array, dict[str, Array]]:
    """Their `calculate_loss` (train.py L239-312) on valid frames.

    `preds[k]`: the student's prediction of teacher layer k (its head's output); every k but
    `output_layer` is a hint target. `unmasked_hidden[k]` / `masked_hidden[k]`: teacher layer k
    run without / with the mask. Per layer, masked frames are compared with the unmasked
    teacher and unmasked frames with the masked teacher (L275-284); each error is averaged
    over the feature dim and summed over frames and hint layers (`.mean(-1).sum()`, L289-295),
    then divided by the frame count: hint = w_h (mask_hint + unmask_hint), rec = w_r
    (mask_rec + unmask_rec), loss = hint + rec (L310). One deviation: they divide by B * T,
    padded frames included, and their unmasked set contains the padded frames; here padded
    frames never count and the divisor is the number of valid frames (equal without padding).
    """
    if output_layer not in preds:
        raise ValueError(
            f"output_layer {output_layer} is not among the predictions {sorted(preds)}"
        )
    valid_bt = frames_mask_bt.astype(bool)
    masked_bt = time_mask_bt.astype(bool) & valid_bt
    unmasked_bt = ~time_mask_bt.astype(bool) & valid_bt
    count = jnp.maximum(jnp.sum(valid_bt.astype(jnp.float32)), 1.0)
    metrics = {}
    parts = {"mask_hint": 0.0, "unmask_hint": 0.0, "mask_rec": 0.0, "unmask_rec": 0.0}
    for k in sorted(preds):
        to_unmasked = _frame_error(preds[k], unmasked_hidden[k], rec_loss)
        to_masked = _frame_error(preds[k], masked_hidden[k], rec_loss)
        mask_part = jnp.sum(jnp.where(masked_bt, to_unmasked, 0.0)) / count
        unmask_part = jnp.sum(jnp.where(unmasked_bt, to_masked, 0.0)) / count
        kind = "rec" if k == output_layer else "hint"
        parts[f"mask_{kind}"] = parts[f"mask_{kind}"] + mask_part
        parts[f"unmask_{kind}"] = parts[f"unmask_{kind}"] + unmask_part
        metrics[f"loss/layer_{k}"] = mask_part + unmask_part
    hint = (parts["mask_hint"] + parts["unmask_hint"]) * hint_weight
    rec = (parts["mask_rec"] + parts["unmask_rec"]) * rec_weight
    loss = hint + rec
    metrics.update({f"loss/{name}": jnp.asarray(v, jnp.float32) for name, v in parts.items()})
    metrics.update({"loss": loss, "loss/hint": jnp.asarray(hint), "loss/rec": rec})
    metrics["masked_fraction"] = jnp.sum(masked_bt.astype(jnp.float32)) / count
    return loss, metrics
