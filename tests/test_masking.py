"""Masking distillation: fairseq's span sampler, masked input, their loss, layer-wise heads."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F

from stackdistill import distill, models, stacking
from stackdistill.models import student
from stackdistill.models.config import EncoderConfig
from stackdistill.recipes import masking

# ------------------------------------------------------------------ fairseq's sampler in NumPy


def fairseq_compute_mask_indices(
    rng, shape, padding_mask, mask_prob, mask_length, mask_type, mask_other, min_masks,
    no_overlap, min_space, require_same_masks=True,
):  # fmt: skip
    """fairseq/data/data_utils.py compute_mask_indices (commit f862ff51) line by line.

    Only changes: np.random.* -> a seeded Generator (integers for randint), np.int -> int,
    and no mask_dropout (0 in HuBERT).
    """
    bsz, all_sz = shape
    mask = np.full((bsz, all_sz), False)
    all_num_mask = int(mask_prob * all_sz / float(mask_length) + rng.random())
    all_num_mask = max(min_masks, all_num_mask)
    mask_idcs = []
    for i in range(bsz):
        if padding_mask is not None:
            sz = all_sz - padding_mask[i].astype(int).sum()
            num_mask = int(mask_prob * sz / float(mask_length) + rng.random())
            num_mask = max(min_masks, num_mask)
        else:
            sz = all_sz
            num_mask = all_num_mask
        if mask_type == "static":
            lengths = np.full(num_mask, mask_length)
        elif mask_type == "uniform":
            lengths = rng.integers(mask_other, mask_length * 2 + 1, size=num_mask)
        else:
            raise NotImplementedError(mask_type)
        if sum(lengths) == 0:
            lengths[0] = min(mask_length, sz - 1)
        if no_overlap:
            mask_idc = []

            def arrange(s, e, length, keep_length):
                span_start = rng.integers(s, e - length)
                mask_idc.extend(span_start + i for i in range(length))  # noqa: B023
                new_parts = []
                if span_start - s - min_space >= keep_length:
                    new_parts.append((s, span_start - min_space + 1))
                if e - span_start - length - min_space > keep_length:
                    new_parts.append((span_start + length + min_space, e))
                return new_parts

            parts = [(0, sz)]
            min_length = min(lengths)
            for length in sorted(lengths, reverse=True):
                lens = np.fromiter(
                    (e - s if e - s >= length + min_space else 0 for s, e in parts), int
                )
                l_sum = np.sum(lens)
                if l_sum == 0:
                    break
                probs = lens / np.sum(lens)
                c = rng.choice(len(parts), p=probs)
                s, e = parts.pop(c)
                parts.extend(arrange(s, e, length, min_length))
            mask_idc = np.asarray(mask_idc, dtype=int)
        else:
            min_len = min(lengths)
            if sz - min_len <= num_mask:
                min_len = sz - num_mask - 1
            mask_idc = rng.choice(sz - min_len, num_mask, replace=False)
            mask_idc = np.asarray(
                [
                    mask_idc[j] + offset
                    for j in range(len(mask_idc))
                    for offset in range(lengths[j])
                ],
                dtype=int,
            )
        mask_idcs.append(np.unique(mask_idc[mask_idc < sz]))
    min_len = min([len(m) for m in mask_idcs])
    for i, mask_idc in enumerate(mask_idcs):
        if len(mask_idc) > min_len and require_same_masks:
            mask_idc = rng.choice(mask_idc, min_len, replace=False)
        mask[i, mask_idc] = True
    return mask


def _ref_masks(m, lengths, num_frames, n, seed=0):
    rng = np.random.default_rng(seed)
    padding = np.arange(num_frames)[None, :] >= np.asarray(lengths)[:, None]
    return np.stack([
        fairseq_compute_mask_indices(
            rng, (len(lengths), num_frames), padding, m.prob, m.length, m.selection, m.other,
            masking.MIN_MASKS, m.no_overlap, m.min_space,
        )
        for _ in range(n)
    ])  # fmt: skip


def _jax_masks(m, lengths, num_frames, n, seed=0):
    sample = jax.jit(
        jax.vmap(lambda k: masking.sample_mask(k, jnp.asarray(lengths), num_frames, m))
    )
    return np.asarray(sample(jax.random.split(jax.random.key(seed), n)))


def _runs(row):
    """(start, length) of each run of True."""
    padded = np.concatenate([[False], row, [False]]).astype(int)
    d = np.diff(padded)
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return starts, ends - starts


def _config(**kw):
    m = masking.default_config()
    m.update(kw)
    return m


@pytest.mark.parametrize("min_space", [1, 3])
def test_sampler_rules_no_overlap(min_space):
    m = _config(min_space=min_space)
    lengths = [200, 137, 90]
    masks = _jax_masks(m, lengths, 200, 200)
    counts = masks.sum(-1)
    assert (counts == counts[:, :1]).all()  # require_same_masks: one count per batch
    for sample in masks:
        for row, sz in zip(sample, lengths):
            assert not row[sz:].any()  # nothing on padded frames
            assert not row[sz - 1]  # randint(s, e - length) never reaches a part's last frame
    # Spans as drawn (one utterance: no require_same_masks thinning, which picks frames
    # at random and so breaks spans in both implementations): gaps >= min_space, <= 2L long.
    for row in _jax_masks(m, [90], 90, 100)[:, 0]:
        starts, lens = _runs(row)
        gaps = starts[1:] - (starts[:-1] + lens[:-1])
        assert (gaps >= min_space).all() and (lens <= 2 * m.length).all()
        assert row.any() and not row[89]


def test_sampler_matches_fairseq_statistics_on_one_utterance():
    # One row: no require_same_masks thinning, so spans are fairseq's spans as drawn.
    m = masking.default_config()
    n = 400
    ours, ref = _jax_masks(m, [250], 250, n, seed=1), _ref_masks(m, [250], 250, n, seed=1)
    frac_ours, frac_ref = ours.mean(), ref.mean()
    assert abs(frac_ours - frac_ref) < 0.015, (frac_ours, frac_ref)
    run_ours = np.concatenate([_runs(r)[1] for r in ours[:, 0]])
    run_ref = np.concatenate([_runs(r)[1] for r in ref[:, 0]])
    assert abs(len(run_ours) / n - len(run_ref) / n) < 0.5  # spans per utterance (~17)
    hist_ours = np.bincount(run_ours, minlength=21)[:21] / len(run_ours)
    hist_ref = np.bincount(run_ref, minlength=21)[:21] / len(run_ref)
    assert np.abs(hist_ours - hist_ref).max() < 0.02, (hist_ours, hist_ref)
    # Where the masked frames fall (the per-frame rate profile over the utterance).
    prof_ours, prof_ref = (
        ours[:, 0].reshape(n, 10, 25).mean((0, 2)),
        ref[:, 0].reshape(n, 10, 25).mean((0, 2)),
    )
    assert np.abs(prof_ours - prof_ref).max() < 0.05, (prof_ours, prof_ref)


def test_sampler_matches_fairseq_with_padding_and_same_masks():
    m = masking.default_config()
    lengths = [120, 80, 50]
    ours, ref = _jax_masks(m, lengths, 120, 300, seed=2), _ref_masks(m, lengths, 120, 300, seed=2)
    assert abs(ours.sum(-1)[:, 0].mean() - ref.sum(-1)[:, 0].mean()) < 1.5
    for b, sz in enumerate(lengths):
        assert abs(ours[:, b, :sz].mean() - ref[:, b, :sz].mean()) < 0.03
        assert not ours[:, b, sz:].any() and not ref[:, b, sz:].any()


def test_sampler_overlapping_and_static_match_fairseq():
    m = _config(no_overlap=False, selection="static", min_space=0)
    ours, ref = _jax_masks(m, [150], 150, 300, seed=3), _ref_masks(m, [150], 150, 300, seed=3)
    assert abs(ours.mean() - ref.mean()) < 0.02
    assert abs(ours[..., :10].mean() - ref[..., :10].mean()) < 0.05


def test_sampler_validation_names_the_field():
    with pytest.raises(ValueError, match="config.distill.masking.selection"):
        masking.validate(_config(selection="gaussian"))


# ------------------------------------------------------------------ masked input

TINY = EncoderConfig(
    hidden_size=16,
    num_layers=3,
    num_heads=2,
    intermediate_size=32,
    conv_dim=(8,) * 7,
    num_conv_pos_embeddings=4,
    num_conv_pos_embedding_groups=2,
)


def _wav(b=2, s=4000, seed=0):
    wav = np.random.default_rng(seed).normal(size=(b, s)).astype(np.float32)
    lengths = np.array([s, s - 1000][:b], np.int32)
    wav[1, lengths[1] :] = 0.0
    return jnp.asarray(wav), jnp.asarray(lengths)


def test_masked_input_replaces_frames_before_the_positional_conv():
    cfg = TINY.replace(mask_emb=True)
    params = models.init_params(cfg, jax.random.key(0))
    emb = np.asarray(params["masked_spec_embed"])
    assert emb.shape == (16,) and (emb >= 0).all() and (emb < 1).all()  # uniform_() on [0, 1)
    wav, lengths = _wav()
    captured = {}

    def grab(next_fun, args, kwargs, context):
        if context.module.name == "pos_conv_embed" and context.method_name == "__call__":
            captured["x"] = args[0]
        return next_fun(*args, **kwargs)

    t = cfg.num_frames(wav.shape[1])
    time_mask = np.zeros((2, t), bool)
    time_mask[0, 2:5] = time_mask[1, 1] = True
    enc = models.Encoder(cfg)
    with nn.intercept_methods(grab):
        enc.apply({"params": params}, wav, lengths, jnp.asarray(time_mask))
    masked_in = np.asarray(captured["x"])
    with nn.intercept_methods(grab):
        base = enc.apply({"params": params}, wav, lengths)
    plain_in = np.asarray(captured["x"])
    frames = np.asarray(base.mask)
    np.testing.assert_array_equal(masked_in[time_mask], np.broadcast_to(emb, (4, 16)))
    keep = ~time_mask & frames
    np.testing.assert_array_equal(masked_in[keep], plain_in[keep])


def test_all_false_mask_and_mask_emb_leave_hidden_states_unchanged():
    params = models.init_params(TINY, jax.random.key(0))
    with_emb = models.init_params(TINY.replace(mask_emb=True), jax.random.key(0))
    # The embedding is an extra leaf: every other tensor is the same draw.
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(
            lambda a, b: bool(jnp.array_equal(a, b)),
            params,
            {k: v for k, v in with_emb.items() if k != "masked_spec_embed"},
        )
    )
    wav, lengths = _wav()
    today = models.encode(TINY, params, wav, lengths).hidden_states
    t = today.shape[2]
    out = models.encode(
        TINY.replace(mask_emb=True), with_emb, wav, lengths, time_mask_bt=jnp.zeros((2, t), bool)
    )
    np.testing.assert_array_equal(np.asarray(out.hidden_states), np.asarray(today))
    with pytest.raises(ValueError, match="config.student.mask_emb"):
        models.encode(TINY, params, wav, lengths, time_mask_bt=jnp.zeros((2, t), bool))


# ------------------------------------------------------------------ the loss


def their_calculate_loss(pred, target, m_target, mask_indices, rec_loss_type, hint_w, rec_w):
    """ARMHuBERT train.py calculate_loss L270-295 on torch tensors (B, N, T, D), last = rec."""
    pred, target, m_target = (torch.from_numpy(np.asarray(x)) for x in (pred, target, m_target))
    mask_indices = torch.from_numpy(np.asarray(mask_indices))
    target = target.narrow(2, 0, pred.shape[2])
    m_target = m_target.narrow(2, 0, pred.shape[2])
    B, N, T, D = target.shape
    mask_indices_ = mask_indices.unsqueeze(1).repeat_interleave(N - 1, dim=1)
    loss = F.l1_loss if rec_loss_type == "l1" else F.mse_loss
    hint_pred, hint_t, hint_mt = pred[:, : N - 1], target[:, : N - 1], m_target[:, : N - 1]
    mask_hint_loss = loss(hint_pred[mask_indices_], hint_t[mask_indices_], reduction="none")
    mask_rec_loss = loss(pred[:, -1][mask_indices], target[:, -1][mask_indices], reduction="none")
    unmask_hint_loss = loss(hint_pred[~mask_indices_], hint_mt[~mask_indices_], reduction="none")
    unmask_rec_loss = loss(
        pred[:, -1][~mask_indices], m_target[:, -1][~mask_indices], reduction="none"
    )  # noqa: E501
    mask_hint_loss = mask_hint_loss.mean(-1).sum() / B / T
    unmask_hint_loss = unmask_hint_loss.mean(-1).sum() / B / T
    hint_loss = (mask_hint_loss + unmask_hint_loss) * hint_w
    mask_rec_loss = mask_rec_loss.mean(-1).sum() / B / T
    unmask_rec_loss = unmask_rec_loss.mean(-1).sum() / B / T
    rec_loss = (mask_rec_loss + unmask_rec_loss) * rec_w
    parts = dict(mask_hint=mask_hint_loss, unmask_hint=unmask_hint_loss, mask_rec=mask_rec_loss)
    parts.update(unmask_rec=unmask_rec_loss, hint=hint_loss, rec=rec_loss)
    return float(hint_loss + rec_loss), {k: float(v) for k, v in parts.items()}


def _loss_inputs(b=3, t=7, d=5, teacher_layers=(2, 4, 6), seed=0):
    rng = np.random.default_rng(seed)
    n_layers = max(teacher_layers) + 1
    unmasked = rng.normal(size=(n_layers, b, t, d)).astype(np.float32)
    masked = rng.normal(size=(n_layers, b, t, d)).astype(np.float32)
    preds = {k: rng.normal(size=(b, t, d)).astype(np.float32) for k in teacher_layers}
    time_mask = rng.random((b, t)) < 0.5
    return preds, unmasked, masked, time_mask


def _stack(preds, hidden, layers):
    return np.stack([preds[k] if hidden is None else hidden[k] for k in layers], axis=1)


@pytest.mark.parametrize("rec_loss", ["mse", "l1"])
def test_masked_loss_equals_their_calculate_loss(rec_loss):
    layers = (2, 4, 6)
    preds, unmasked, masked, time_mask = _loss_inputs(teacher_layers=layers)
    frames = np.ones(time_mask.shape, bool)
    loss, metrics = masking.masked_loss(
        {k: jnp.asarray(v) for k, v in preds.items()},
        jnp.asarray(unmasked),
        jnp.asarray(masked),
        jnp.asarray(frames),
        jnp.asarray(time_mask),
        output_layer=6,
        hint_weight=0.1,
        rec_weight=1.0,
        rec_loss=rec_loss,
    )
    ref, parts = their_calculate_loss(
        _stack(preds, None, layers),
        _stack(None, unmasked, layers),
        _stack(None, masked, layers),
        time_mask,
        rec_loss,
        0.1,
        1.0,
    )
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    for name, value in parts.items():
        np.testing.assert_allclose(float(metrics[f"loss/{name}"]), value, rtol=1e-5)


def test_masked_loss_with_padding_counts_valid_frames_only():
    # Reference: their code on the valid frames alone, laid end to end as one utterance of
    # N_valid frames -- the same sums over frames, divided by the valid count.
    layers = (3, 6)
    preds, unmasked, masked, time_mask = _loss_inputs(b=2, t=6, teacher_layers=layers, seed=1)
    frames = np.array([[1] * 6, [1] * 4 + [0] * 2], bool)
    # What is on padded frames must not matter.
    garbage = {k: np.where(frames[..., None], v, 1e3) for k, v in preds.items()}
    loss, metrics = masking.masked_loss(
        {k: jnp.asarray(v) for k, v in garbage.items()},
        jnp.asarray(unmasked),
        jnp.asarray(masked),
        jnp.asarray(frames),
        jnp.asarray(time_mask),
        output_layer=6,
        rec_loss="mse",
    )

    def flat(x_btd):
        return x_btd[frames][None]  # (1, N_valid, D)

    ref, _ = their_calculate_loss(
        np.stack([flat(preds[k]) for k in layers], axis=1),
        np.stack([flat(unmasked[k]) for k in layers], axis=1),
        np.stack([flat(masked[k]) for k in layers], axis=1),
        time_mask[frames][None],
        "mse",
        0.1,
        1.0,
    )
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    assert float(metrics["masked_fraction"]) == pytest.approx(time_mask[frames].mean())


# ------------------------------------------------------------------ heads and targets


def test_every_layer_targets_at_depths_3_6_12():
    assert distill.every_layer_sources(3, 12) == {4: 1, 8: 2, 12: 3}
    assert distill.every_layer_sources(6, 12) == {2 * i: i for i in range(1, 7)}
    # Full depth: their student layer i <-> teacher layer i + 1 (hidden state i + 1 both).
    assert distill.every_layer_sources(12, 12) == {i: i for i in range(1, 13)}
    nine = {1: 1, 3: 2, 4: 3, 5: 4, 7: 5, 8: 6, 9: 7, 11: 8, 12: 9}  # round(4 (i + 1) / 3)
    assert distill.every_layer_sources(9, 12) == nine
    with pytest.raises(ValueError, match="config.distill.targets"):
        distill.every_layer_sources(0, 12)


def test_every_layer_targets_of_a_stack_deeper_than_the_teacher():
    """More student layers than teacher layers: each teacher layer once, at its relative depth
    (by hand: k * d / L rounded half up), the output on the last layer."""
    assert distill.every_layer_sources(12, 6) == {1: 2, 2: 4, 3: 6, 4: 8, 5: 10, 6: 12}
    assert distill.every_layer_sources(9, 6) == {1: 2, 2: 3, 3: 5, 4: 6, 5: 8, 6: 9}  # 1.5 -> 2
    assert distill.every_layer_sources(13, 12)[12] == 13
    sources = distill.every_layer_sources(13, 12)
    assert len(set(sources.values())) == 12 and sorted(sources) == list(range(1, 13))


def _follows_lineage(method: str) -> bool:
    """Whether, at every growth 3 -> 6 -> 12, each target stays on its layer's block end."""
    c = distill.default_config()
    c.targets = "every_layer"
    depth = 3
    before = distill.target_sources(c, np.arange(depth), (0, 1, 2), "last")
    ok = True
    for _ in range(2):
        indices = stacking.grow_indices(depth, method)  # new layer -> the layer it copies
        depth = len(indices)
        after = distill.target_sources(c, np.arange(depth), (0, 1, 2), "last")
        for k, s in before.items():
            block_end = int(np.flatnonzero(indices == s - 1).max())
            ok &= after[k] == block_end + 1
        before = after
    return ok


def test_every_layer_targets_follow_lineage_under_interleaved_growth():
    assert _follows_lineage("interleaved")
    assert not _follows_lineage("top")  # top growth moves relative depths: re-spread


@functools.lru_cache  # built once per depth: the arrays are never modified in place
def _student_setup(depth=3, head="layerwise"):
    t_cfg = TINY.replace(num_layers=6)
    t_params = models.init_params(t_cfg.replace(mask_emb=True), jax.random.key(1))
    sc = student.default_config()
    sc.update(num_layers=depth, hidden_size=8, intermediate_size=16, num_heads=2, head=head)
    sc.update(mask_emb=True, dropout_input=0.05)
    s_cfg = student.student_encoder_config(sc, t_cfg)
    params = student.init_student(
        s_cfg, jax.random.key(2), t_cfg, t_params, (2, 4, 6), True, head=head
    )
    return t_cfg, t_params, s_cfg, params


def test_layerwise_heads_predict_every_layer_and_grow_with_their_layers():
    t_cfg, _, s_cfg, params = _student_setup()
    stack = params["heads"]["layers"]
    assert stack["kernel"].shape == (3, 8, 16) and stack["bias"].shape == (3, 16)
    emb = np.asarray(params["encoder"]["masked_spec_embed"])
    assert emb.shape == (8,) and (emb >= 0).all() and (emb < 1).all()
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)
    opt_state = jax.tree_util.tree_map(lambda x: x + 1.0 if x.ndim else x, opt_state)
    for depth in (3, 6, 12):
        hidden = np.random.default_rng(depth).normal(size=(depth + 1, 2, 5, 8)).astype(np.float32)
        sources = distill.every_layer_sources(depth, 6 * 2)
        preds = student.predict(params["heads"], jnp.asarray(hidden), sources)
        k_np, b_np = (
            np.asarray(params["heads"]["layers"]["kernel"]),
            np.asarray(params["heads"]["layers"]["bias"]),
        )
        for k, s in sources.items():
            np.testing.assert_allclose(
                np.asarray(preds[k]), hidden[s] @ k_np[s - 1] + b_np[s - 1], rtol=1e-5, atol=1e-6
            )
        if depth == 12:
            break
        indices = stacking.grow_indices(depth, "interleaved")
        grown = stacking.grow(params, "interleaved")
        grown_opt = stacking.grow_opt_state(opt_state, "interleaved")
        np.testing.assert_array_equal(grown["heads"]["layers"]["kernel"], k_np[indices])
        # The mask embedding is not a layer: it neither grows nor changes.
        np.testing.assert_array_equal(grown["encoder"]["masked_spec_embed"], emb)
        mu, mu_grown = opt_state[0].mu, grown_opt[0].mu
        np.testing.assert_array_equal(
            mu_grown["heads"]["layers"]["bias"], np.asarray(mu["heads"]["layers"]["bias"])[indices]
        )
        np.testing.assert_array_equal(
            mu_grown["encoder"]["masked_spec_embed"], mu["encoder"]["masked_spec_embed"]
        )
        params, opt_state = grown, grown_opt


def _masked_distill_config():
    c = distill.default_config()
    c.update(teacher_layers=(2, 4, 6), loss="masked", targets="every_layer")
    c.masking.update(prob=0.5, length=2)  # a few frames only in this tiny batch
    return c


def test_one_jitted_masked_step_is_finite_and_trains_the_mask_embedding():
    t_cfg, t_params, s_cfg, params = _student_setup(depth=3)
    c = _masked_distill_config()
    distill.validate(c)
    sources = distill.every_layer_sources(3, 6)
    tx = optax.adam(1e-2)
    step = distill.make_train_step(
        c, t_cfg, s_cfg, sources, tx, optax.constant_schedule(1e-2), False
    )
    state = distill.init_state(params, tx, 0)
    wav, lengths = _wav(s=6000)
    batch = {"audio": wav, "lengths": lengths}
    new_state, metrics = jax.jit(step)(state, t_params, batch)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0
    assert 0 < float(metrics["masked_fraction"]) < 1
    assert set(metrics) >= {"loss/mask_hint", "loss/unmask_rec", "loss/layer_2", "grad_norm"}
    moved = np.abs(
        np.asarray(new_state["params"]["encoder"]["masked_spec_embed"])
        - np.asarray(params["encoder"]["masked_spec_embed"])
    )
    assert (moved > 1e-4).all()  # Adam moves every coordinate with a nonzero gradient
    # The teacher's embedding is its own: a teacher without one is refused by name.
    bare = {k: v for k, v in t_params.items() if k != "masked_spec_embed"}
    with pytest.raises(ValueError, match="masked_spec_embed"):
        jax.jit(step)(distill.init_state(params, tx, 0), bare, batch)


def test_masked_loss_refuses_stored_targets_and_bad_fields():
    t_cfg, _, s_cfg, _ = _student_setup()
    c = _masked_distill_config()
    with pytest.raises(ValueError, match="config.targets.dir"):
        distill.make_train_step(c, t_cfg, s_cfg, {}, optax.adam(1e-3), None, False, cached=True)
    from helpers import DEMO, load_config

    from stackdistill import stage

    run = load_config(DEMO)
    run.distill.loss = "masked"
    with pytest.raises(ValueError, match="config.student.mask_emb"):
        stage.validate_config(run, 1)
    run.student.mask_emb, run.targets.dir = True, "/somewhere"
    with pytest.raises(ValueError, match="config.targets.dir"):
        stage.validate_config(run, 1)
    for field, value, message in [
        ("rec_loss", "huber", "config.distill.rec_loss"),
        ("targets", "all", "config.distill.targets"),
    ]:
        bad = _masked_distill_config()
        bad[field] = value
        with pytest.raises(ValueError, match=message):
            distill.validate(bad)


@pytest.mark.slow  # ~135 s on 2 CPU cores: four stages, each compiling a two-teacher step
def test_demo_run_with_masking_distillation_and_interleaved_stacking(tmp_path):
    import json

    from helpers import demo_config

    from stackdistill import checkpoint, train

    overrides = {
        "total_steps": 24,
        "distill.loss": "masked",
        "distill.targets": "every_layer",
        "student.head": "layerwise",
        "student.mask_emb": True,
        "student.dropout_input": 0.05,
    }
    run = tmp_path / "run"
    summary = train.train_and_evaluate(demo_config(tmp_path / "shared", **overrides), run)
    assert summary["status"] == "completed" and summary["final_depth"] == 12
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss/rec" in r]
    assert np.isfinite([r["loss"] for r in rows]).all()
    # Their hint loss is a sum over the hint layers, so the total grows with each stage's
    # depth; the output term and the hint loss per supervised layer must fall.
    rec = [r["loss/rec"] for r in rows]
    assert np.mean(rec[-4:]) < 0.5 * np.mean(rec[:4])
    per_layer = [r["loss/hint"] / (r["depth"] - 1) for r in rows]
    assert np.mean(per_layer[-4:]) < 0.8 * np.mean(per_layer[:4])
    cfg, params, meta = checkpoint.load_student(run)
    assert meta["target_sources"] == {str(i): i for i in range(1, 13)}
    assert params["heads"]["layers"]["kernel"].shape[0] == 12
    assert cfg.mask_emb and params["encoder"]["masked_spec_embed"].shape == (cfg.hidden_size,)


@pytest.mark.parametrize("model_type", ["hubert", "wavlm"])
def test_converted_teacher_runs_masked_as_transformers(model_type, tmp_path):
    # transformers' _mask_hidden_states with given mask_time_indices: the same frames get the
    # checkpoint's masked_spec_embed after the feature projection.
    from hf_fixtures import make_hf_model, padded_batch, save_hf_model

    from stackdistill import teacher

    model = make_hf_model(model_type, False)
    cfg, params = teacher.load(str(save_hf_model(model, tmp_path / "m")), use_cache=False)
    np.testing.assert_array_equal(params["masked_spec_embed"], model.masked_spec_embed.detach())
    wav, lengths = padded_batch(8000)
    t = cfg.num_frames(wav.shape[1])
    frames = np.asarray(models.frame_mask(cfg, jnp.asarray(lengths), t))
    time_mask = np.asarray(masking.sample_mask(jax.random.key(0), frames.sum(1), t, _config()))
    assert time_mask.any()
    ours = models.encode(
        cfg.replace(mask_emb=True), params, wav, lengths, time_mask_bt=jnp.asarray(time_mask)
    )
    attention = (np.arange(wav.shape[1])[None] < lengths[:, None]).astype(np.int64)
    with torch.no_grad():
        ref = model(
            torch.from_numpy(wav),
            attention_mask=torch.from_numpy(attention),
            mask_time_indices=torch.from_numpy(time_mask.copy()),
            output_hidden_states=True,
        ).hidden_states
    for k in (0, len(ref) - 1):
        got = np.asarray(ours.hidden_states[k])[frames]
        np.testing.assert_allclose(got, ref[k].numpy()[frames], atol=2e-4, rtol=1e-4)
