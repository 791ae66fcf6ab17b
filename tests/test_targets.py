"""Teacher targets: stored targets against the live teacher, crops, step, resume, refusals."""

import copy
import pathlib
import shutil

import jax
import numpy as np
import optax
import pytest
from helpers import demo_config as _demo
from helpers import final_params as _final_params

from stackdistill import distill, models, optim, targets, teacher, train
from stackdistill.data import audio, recordio, sources
from stackdistill.data import targets as stored
from stackdistill.models import student

BF16_REL = 2.0**-8  # bfloat16 keeps 8 significant bits: rounding moves a value by <= 2^-9 of it
LAYER_NORM_FRONTEND = {"feat_extract_norm": "layer", "conv_bias": True}


def _config(shared: pathlib.Path, dir_name: str, **overrides):
    return _demo(
        shared, **{"data.synth_num": 12, "targets.dir": str(shared / dir_name), **overrides}
    )


def _live_teacher(c, workdir):
    t_cfg, t_params = teacher.load(teacher.prepare(c.teacher, workdir))
    return t_cfg, t_params


def _records(c):
    return sources.open_source(c.data)[0]


def _all(source):
    return [source[i] for i in range(len(source))]


def _assert_bf16_close(stored_values, live_values):
    """Stored bf16 values are the live float32 values rounded (up to float32 noise)."""
    live = np.asarray(live_values, np.float32)
    got = np.asarray(stored_values, np.float32)
    assert got.shape == live.shape
    # atol: float32 noise between the build's batched forward and this one (values are O(1)).
    np.testing.assert_allclose(got, live, rtol=BF16_REL, atol=1e-5)
    exact = np.mean(got == live.astype(recordio.BFLOAT16).astype(np.float32))
    assert exact > 0.99, f"only {exact:.1%} of the values are the bf16 rounding of the live ones"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="module")
def fixed_targets(shared):
    c = _config(shared, "fixed", **{"targets.epochs": 2})
    return c, targets.build(c, shared)


def test_fixed_crop_targets_equal_the_live_teacher(shared, fixed_targets):
    c, meta = fixed_targets
    assert meta["records"] == 2 * 12 and meta["mode"] == "fixed_crop"
    t_cfg, t_params = _live_teacher(c, shared)
    records = _records(c)
    source = stored.TargetSource(targets.location(c, shared))
    by_name = {r["name"]: r for r in (source[i] for i in range(len(source)))}
    for epoch, index in [(0, 0), (0, 5), (1, 5), (1, 11)]:
        # The documented crop of (seed, epoch, utterance), run through the teacher as live.
        rng = np.random.default_rng([c.seed, epoch, index])
        crop = audio.load(records[index], rng, c.data.max_samples)
        record = by_name[f"{records[index]['name']}@{epoch}"]
        np.testing.assert_array_equal(audio.to_float(record["audio"]), crop)
        wav = np.zeros((1, c.data.max_samples), np.float32)
        wav[0, : len(crop)] = crop
        live = models.encode(t_cfg, t_params, wav, np.array([len(crop)]))
        frames = int(np.asarray(live.mask).sum())
        assert record["num_frames"] == frames == record["targets"].shape[1]
        for row, k in enumerate(meta["teacher_layers"]):
            _assert_bf16_close(record["targets"][row], live.hidden_states[k][0, :frames])
        _assert_bf16_close(record["features"], live.features[0, :frames])
    assert by_name[f"{records[5]['name']}@0"]["audio"].tobytes() != (
        by_name[f"{records[5]['name']}@1"]["audio"].tobytes()
    ), "each epoch seed draws its own crop"


def test_whole_utterance_crops_are_frame_aligned(shared):
    # A LayerNorm front-end sees each 400-sample window alone, so the CNN features of a crop
    # must equal those of the whole utterance at the matching frames, whatever the context.
    arch = {**dict(_config(shared, "x").teacher.random_arch), **LAYER_NORM_FRONTEND}
    c = _config(
        shared,
        "whole",
        **{
            "targets.mode": "whole",
            "teacher.random_arch": arch,
            "teacher.name": str(shared / "teacher_ln"),
        },
    )
    meta = targets.build(c, shared)
    t_cfg, t_params = _live_teacher(c, shared)
    assert (t_cfg.hop, t_cfg.receptive_field) == (320, 400)
    records = _records(c)
    source = stored.TargetSource(targets.location(c, shared))
    crop = stored.CropExample(meta, (4, 12), True, c.data.max_samples, False, c.seed, 0)
    starts, checked = set(), 0
    for i in range(len(source)):
        record = source[i]
        pcm = record["audio"]
        whole = audio.load(next(r for r in records if r["name"] == record["name"]), None, 10**9)
        np.testing.assert_array_equal(audio.to_float(pcm), whole)
        example = crop(i, record)
        if len(pcm) <= c.data.max_samples or checked == 4:  # a short one is kept whole
            assert int(example["lengths"]) == min(len(pcm), c.data.max_samples)
            continue
        checked += 1
        wav, n = example["audio"], int(example["lengths"])
        offsets = [s for s in range(0, len(pcm) - n + 1) if np.array_equal(wav, whole[s : s + n])]
        assert offsets and offsets[0] % 320 == 0
        k = offsets[0] // 320
        starts.add(k)
        live_crop = models.encode(t_cfg, t_params, wav[None], np.array([n]))
        frames = t_cfg.num_frames(n)
        _assert_bf16_close(example["features"][:frames], live_crop.features[0, :frames])
        assert not example["features"][frames:].any() and not example["targets"][:, frames:].any()
        # The targets are the whole-utterance run's frames k, k+1, ...
        padded = np.zeros((1, targets.padded_length(len(whole), "whole", n)), np.float32)
        padded[0, : len(whole)] = whole
        live_whole = models.encode(t_cfg, t_params, padded, np.array([len(whole)]))
        for row, layer in enumerate((4, 12)):
            _assert_bf16_close(
                example["targets"][row, :frames], live_whole.hidden_states[layer][0, k : k + frames]
            )
    assert checked == 4 and len(starts) > 1, "crop starts are drawn at random"


def _stored_setup(shared, fixed_targets, with_features: bool):
    """(teacher cfg and params, a stored batch of 4, student cfg, 3-layer student params)."""
    c, meta = fixed_targets
    t_cfg, t_params = _live_teacher(c, shared)
    source = stored.TargetSource(targets.location(c, shared))
    crop = stored.CropExample(meta, (4, 8, 12), with_features, c.data.max_samples, False, c.seed, 0)
    examples = [crop(i, source[i]) for i in range(4)]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    s_cfg = student.student_encoder_config(c.student, t_cfg)
    params = student.init_student(
        s_cfg.replace(num_layers=3), jax.random.key(0), t_cfg, t_params, (4, 8, 12)
    )
    return t_cfg, t_params, batch, s_cfg, params


def _step_fn(c, t_cfg, s_cfg, shared_frontend: bool, cached: bool):
    """(the step of a 3-layer student with targets on layers 1-3, its optimizer)."""
    schedule = optax.constant_schedule(1e-3)
    tx = optim.make_optimizer(c.optim, schedule, frozen_frontend=shared_frontend)
    sources_ = {4: 1, 8: 2, 12: 3}
    fn = distill.make_train_step(
        c.distill, t_cfg, s_cfg, sources_, tx, schedule, shared_frontend, cached=cached
    )
    return fn, tx


def test_step_from_stored_targets_equals_live_step(shared, fixed_targets):
    c = fixed_targets[0]
    # The student runs its own CNN here; the resume test below reads the stored features.
    t_cfg, t_params, batch, s_cfg, params = _stored_setup(shared, fixed_targets, False)
    results = {}
    for from_disk in (False, True):
        fn, tx = _step_fn(c, t_cfg, s_cfg, shared_frontend=False, cached=from_disk)
        inputs = batch if from_disk else {"audio": batch["audio"], "lengths": batch["lengths"]}
        results[from_disk] = jax.jit(fn)(distill.init_state(params, tx, 1), t_params, inputs)
    live, from_targets = results[False][1], results[True][1]
    for key in ("loss", "loss/layer_4", "loss/layer_12", "cos/layer_8", "grad_norm"):
        np.testing.assert_allclose(from_targets[key], live[key], rtol=1e-2, err_msg=key)


def test_stored_features_step_needs_no_audio_and_no_teacher(shared, fixed_targets):
    """With the CNN features stored, training ships neither the waveform nor teacher params."""
    c = fixed_targets[0]
    t_cfg, t_params, batch, s_cfg, params = _stored_setup(shared, fixed_targets, True)
    fn, tx = _step_fn(c, t_cfg, s_cfg, shared_frontend=True, cached=True)
    fn = jax.jit(fn)
    state = distill.init_state(params, tx, 1)
    _, full = fn(state, t_params, batch)
    _, lean = fn(state, {}, {k: v for k, v in batch.items() if k != "audio"})
    for key in ("loss", "grad_norm"):
        np.testing.assert_array_equal(lean[key], full[key], err_msg=key)


def test_loader_for_stored_features_skips_the_audio(shared, fixed_targets):
    """The loader of a student fed stored features decodes no audio; the rest is unchanged."""
    c, _ = fixed_targets
    c = copy.deepcopy(c)
    c.student.frozen_shared_frontend = True
    shard = dict(seed=c.seed, process_index=0, process_count=1)
    lean = next(targets.run_loader(c, c.data, targets.location(c, shared), **shard))
    full = next(
        stored.make_loader(
            targets.location(c, shared), c.data, c.distill.teacher_layers, True, **shard
        )
    )
    assert "audio" not in lean and full["audio"].shape == (c.data.batch_size, c.data.max_samples)
    assert sorted(lean) == ["features", "lengths", "targets"]
    for key in lean:
        np.testing.assert_array_equal(lean[key], full[key], err_msg=key)


def test_training_from_stored_targets_resumes_exactly(shared, fixed_targets, tmp_path):
    c = copy.deepcopy(fixed_targets[0])
    c.total_steps, c.student.num_layers = 6, 6  # stages of 3 steps at depths 3 and 6
    c.student.frozen_shared_frontend = True  # the stored CNN features feed the student
    summary = train.train_and_evaluate(c, str(tmp_path))
    assert summary["status"] == "completed" and summary["final_depth"] == 6
    _, params_a = _final_params(tmp_path)
    for ckpt in (tmp_path / "checkpoints").iterdir():
        if ckpt.name.isdigit() and int(ckpt.name) > 4:
            shutil.rmtree(ckpt)  # as if killed after step 4, past the growth at step 3
    train.train_and_evaluate(c, str(tmp_path))
    step_b, params_b = _final_params(tmp_path)
    assert step_b == 6
    jax.tree_util.tree_map(np.testing.assert_array_equal, params_a, params_b)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"distill.teacher_layers": (4, 8, 11)}, "config.distill.teacher_layers"),
        ({"data.max_samples": 16000}, "config.data.max_samples"),
        ({"targets.mode": "whole"}, "config.targets.mode"),
        ({"data.normalize": True}, "config.data.normalize"),
        ({"data.bucket_boundaries": (4000,)}, "config.data.bucket_boundaries"),
    ],
)
def test_incompatible_targets_are_refused(shared, fixed_targets, overrides, message):
    c, meta = fixed_targets
    _, t_params = _live_teacher(c, shared)
    targets.check(meta, c, c.targets.dir, t_params)
    bad = _config(shared, "fixed", **overrides)
    with pytest.raises(ValueError, match=message):
        targets.check(meta, bad, c.targets.dir, t_params)
    other = jax.tree_util.tree_map(lambda x: x + 1e-3, t_params)
    with pytest.raises(ValueError, match="another teacher"):
        targets.check(meta, c, c.targets.dir, other)
    shared_frontend = _config(shared, "fixed", **{"student.frozen_shared_frontend": True})
    targets.check(meta, shared_frontend, c.targets.dir, t_params)
    with pytest.raises(ValueError, match="frozen_shared_frontend"):
        targets.check({**meta, "features": False}, shared_frontend, c.targets.dir, t_params)


def test_records_round_trip():
    rng = np.random.default_rng(0)
    arrays = {
        "audio": rng.integers(-(2**15), 2**15, 1234).astype(np.int16),
        "targets": rng.normal(size=(3, 3, 5)).astype(recordio.BFLOAT16),
        "features": rng.normal(size=(3, 7)).astype(recordio.BFLOAT16),
    }
    back = stored.decode_record(stored.encode_record("utt", arrays, 3))
    assert back["name"] == "utt" and back["num_frames"] == 3 and back["num_samples"] == 1234
    for key, value in arrays.items():
        assert back[key].dtype == value.dtype
        np.testing.assert_array_equal(back[key], value)


@pytest.mark.parametrize("dtype", ["int8", "float8_e4m3fn"])
def test_8bit_records_round_trip_within_their_rounding(dtype):
    rng = np.random.default_rng(1)
    # Rows of very different magnitudes (each frame gets its own scale), one all zero.
    targets_ktd = rng.normal(size=(3, 6, 40)) * np.array([1e-3, 1.0, 30.0, 0, 5, 0.1])[:, None]
    features_tc = rng.standard_t(3, size=(6, 16)) * 100
    arrays = {"audio": rng.integers(-100, 100, 2000).astype(np.int16), "targets": targets_ktd,
              "features": features_tc}  # fmt: skip
    record = stored.encode_record("utt", arrays, 6, dtype)
    back = stored.decode_record(record)
    bf16 = stored.decode_record(stored.encode_record("utt", arrays, 6, "bfloat16"))
    payload = [k for k in back if k.startswith(("targets", "features"))]
    assert sorted(payload) == ["features", "features_scale", "targets", "targets_scale"]
    size = sum(back[k].nbytes for k in payload)
    assert size < 0.6 * (bf16["targets"].nbytes + bf16["features"].nbytes), "about half"
    for key, x in (("targets", targets_ktd), ("features", features_tc)):
        scale = back[f"{key}_scale"]
        # The scale by hand: the frame's largest |value| over the type's largest (127 / 448).
        largest = 127.0 if dtype == "int8" else 448.0
        np.testing.assert_allclose(scale, np.abs(x).max(-1) / largest, rtol=1e-6)
        got = stored.dequantize(back[key], scale, np.float32)
        err = np.abs(got - x)
        if dtype == "int8":  # round to the nearest step: at most half a step off
            assert back[key].dtype == np.int8
            assert np.all(err <= scale[..., None] / 2 * (1 + 1e-5) + 1e-30)
        else:  # 3 mantissa bits: within 2^-4 relatively, or half the smallest subnormal step
            assert back[key].dtype == recordio.FLOAT8
            bound = np.maximum(2.0**-4 * np.abs(x), scale[..., None] * 2.0**-10)
            assert np.all(err <= bound * (1 + 1e-5))
        assert np.all(got[scale == 0] == 0)
        as_loaded = stored.dequantize(back[key], scale)  # what the loader hands the step
        assert as_loaded.dtype == recordio.BFLOAT16
        np.testing.assert_allclose(as_loaded.astype(np.float32), got, rtol=2.0**-8)


def test_step_from_int8_targets_is_close_to_bf16(shared, fixed_targets):
    c, meta = fixed_targets
    c8 = _config(shared, "fixed_int8", **{"targets.epochs": 2, "targets.dtype": "int8"})
    meta8 = targets.build(c8, shared)
    assert meta8["dtype"] == "int8" and meta8["records"] == meta["records"]
    frames = sum(r["num_frames"] for r in _all(stored.TargetSource(targets.location(c8, shared))))
    k, d, ch = 3, c.teacher.random_arch["hidden_size"], c.teacher.random_arch["conv_dim"][-1]
    saved = frames * (k * d + ch - 4 * (k + 1))  # 1 byte less per value, 4 more per scale
    assert meta["bytes"] - saved < meta8["bytes"] < meta["bytes"] - 0.95 * saved  # + headers
    with pytest.raises(ValueError, match="config.targets.dtype"):
        targets.build(_config(shared, "fixed_int8", **{"targets.epochs": 2}), shared)
    t_cfg, t_params, batch, s_cfg, params = _stored_setup(shared, fixed_targets, True)
    source8 = stored.TargetSource(targets.location(c8, shared))
    crop8 = stored.CropExample(meta8, (4, 8, 12), True, c.data.max_samples, False, c.seed, 0)
    batch8 = [crop8(i, source8[i]) for i in range(4)]
    batch8 = {k: np.stack([e[k] for e in batch8]) for k in batch8[0]}
    for key in ("targets", "features"):
        assert batch8[key].dtype == batch[key].dtype == recordio.BFLOAT16
        x, y = batch[key].astype(np.float32), batch8[key].astype(np.float32)
        # Per-frame scale / 2 plus the bfloat16 rounding of both: 1% of the frame's largest |x|.
        assert np.all(np.abs(x - y) <= 0.01 * np.abs(x).max(-1, keepdims=True) + 1e-6), key
    for shared_frontend in (False, True):
        fn, tx = _step_fn(c, t_cfg, s_cfg, shared_frontend=shared_frontend, cached=True)
        fn = jax.jit(fn)
        state = distill.init_state(params, tx, 1)
        _, ref = fn(state, t_params, batch)
        _, got = fn(state, t_params, batch8)
        for key in ("loss", "loss/layer_4", "loss/layer_12", "grad_norm"):
            # int8 moves a target by <= 0.4% of its frame's peak, the loss by far less than 1%.
            np.testing.assert_allclose(got[key], ref[key], rtol=5e-3, err_msg=key)
        # The cosine of an untrained student is near 0: an absolute bound.
        np.testing.assert_allclose(got["cos/layer_8"], ref["cos/layer_8"], atol=1e-3)
