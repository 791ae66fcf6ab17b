"""stackdistill.recipes.star (STaR's temporal Gram matrix losses) and loss="star" in the step.

References: a NumPy re-implementation written with per-utterance loops over the valid frames
only (so padding handling is checked independently), and properties of Gram matrices.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from stackdistill import distill, models, optim, stacking
from stackdistill.models import EncoderConfig, student
from stackdistill.models.encoder import Encoder
from stackdistill.recipes import star

RNG = np.random.default_rng(0)
LENGTHS = (5, 3)  # valid frames of two utterances padded to T = 5


def _mask(lengths=LENGTHS, t=5):
    return np.arange(t)[None, :] < np.asarray(lengths)[:, None]


def _hidden(b, t, d, junk=True):
    x = RNG.normal(size=(b, t, d)).astype(np.float32)
    if junk:  # padded frames hold large junk that must never count
        x[~_mask(t=t)] = 1e3
    return x


# --------------------------------------------------------------- NumPy reference


def np_gram(x, y=None):
    y = x if y is None else y
    return x @ y.T / x.shape[-1]


def np_distance(pairs_s, pairs_t, lengths):
    """Pooled mean over utterances of the squared TGM differences on the valid frames only."""
    total, count = 0.0, 0
    for b, n in enumerate(lengths):
        gs = np_gram(*[a[b, :n] for a in pairs_s])
        gt = np_gram(*[a[b, :n] for a in pairs_t])
        total += np.sum((gs.astype(np.float64) - gt) ** 2)
        count += n * n
    return total / max(count, 1)


def np_star(student_l, teacher_l, lengths, sources, w_layer=1.0, w_intra=1.0):
    layer = [np_distance([student_l[s]], [teacher_l[k]], lengths) for k, s in sources.items()]
    intra = [
        np_distance([student_l[s - 1], student_l[s]], [teacher_l[k - 1], teacher_l[k]], lengths)
        for k, s in sources.items()
    ]
    return w_layer * np.mean(layer) + w_intra * np.mean(intra)


# --------------------------------------------------------------- the losses


def test_layerwise_and_intra_match_numpy_with_padding():
    s_in, s_out = _hidden(2, 5, 6), _hidden(2, 5, 6)
    t_in, t_out = _hidden(2, 5, 10), _hidden(2, 5, 10)  # teacher wider than student
    mask = _mask()
    got = star.layerwise_tgm_loss(s_out, t_out, mask)
    assert float(got) == pytest.approx(np_distance([s_out], [t_out], LENGTHS), rel=1e-5)
    got = star.intralayer_tgm_loss(s_in, s_out, t_in, t_out, mask)
    want = np_distance([s_in, s_out], [t_in, t_out], LENGTHS)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_star_loss_matches_numpy_and_weights():
    student_l = np.stack([_hidden(2, 5, 6) for _ in range(3)])  # hidden 0..2
    teacher_l = np.stack([_hidden(2, 5, 10) for _ in range(5)])  # hidden 0..4
    sources = {2: 1, 4: 2}
    loss, metrics = star.star_loss(student_l, teacher_l, _mask(), sources, 0.3, 2.0)
    want = np_star(student_l, teacher_l, LENGTHS, sources, 0.3, 2.0)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    intra_4 = np_distance([student_l[1], student_l[2]], [teacher_l[3], teacher_l[4]], LENGTHS)
    assert float(metrics["loss/tgm_intra_4"]) == pytest.approx(intra_4, rel=1e-5)
    assert float(metrics["loss"]) == float(loss)


def test_tgm_is_symmetric_and_intra_is_not():
    x, y = _hidden(2, 5, 6, junk=False), _hidden(2, 5, 6, junk=False)
    g = np.asarray(star.temporal_gram(x))
    np.testing.assert_allclose(g, np.swapaxes(g, 1, 2), rtol=1e-6)
    gxy = np.asarray(star.temporal_gram(x, y))
    assert not np.allclose(gxy, np.swapaxes(gxy, 1, 2))
    np.testing.assert_allclose(gxy, np.swapaxes(star.temporal_gram(y, x), 1, 2), rtol=1e-6)


def test_zero_when_student_is_the_teacher_up_to_width_and_rotation():
    teacher_l = np.stack([_hidden(2, 5, 8) for _ in range(3)])
    # A wider student (12) holding the teacher's frames in a rotated basis: its rows of
    # `q` are orthonormal and scaled by sqrt(12 / 8), so <x q, y q> / 12 = <x, y> / 8.
    q, _ = np.linalg.qr(RNG.normal(size=(12, 12)))
    q = q[:8] * np.sqrt(12 / 8)
    student_l = (teacher_l @ q).astype(np.float32)
    student_l[:, ~_mask()] = -7.0  # different junk on the padded frames
    loss, _ = star.star_loss(student_l, teacher_l, _mask(), {1: 1, 2: 2})
    assert float(loss) == pytest.approx(0.0, abs=1e-9)
    dup = np.concatenate([teacher_l, teacher_l], axis=-1)  # channels duplicated: width 16
    assert float(star.star_loss(dup, teacher_l, _mask(), {1: 1, 2: 2})[0]) < 1e-9
    # ... and not zero once the student differs on a valid frame.
    student_l[1, 0, 0] += 1.0
    assert float(star.star_loss(student_l, teacher_l, _mask(), {1: 1, 2: 2})[0]) > 1e-4


def test_gradients_finite_and_padding_free():
    teacher_l = np.stack([_hidden(2, 5, 10) for _ in range(3)])
    student_l = np.stack([_hidden(2, 5, 6) for _ in range(3)])

    def f(s, mask):
        return star.star_loss(s, teacher_l, mask, {1: 1, 2: 2})[0]

    grads = jax.grad(f)(jnp.asarray(student_l), _mask())
    assert np.all(np.isfinite(grads))
    np.testing.assert_array_equal(np.asarray(grads)[:, ~_mask()], 0.0)  # padding: no gradient
    empty = np.zeros((2, 5), bool)  # an all-padded batch: loss 0, finite gradient
    assert float(f(student_l, empty)) == 0.0
    assert np.all(np.isfinite(jax.grad(f)(jnp.asarray(student_l), empty)))


def test_validate_refuses_bad_star_configs():
    c = distill.default_config()
    c.loss = "star"
    distill.validate(c)
    assert distill.head_layers(c) == ()
    for field, value, message in [
        ("star.intra_weight", -1.0, "config.distill.star.intra_weight"),
        ("teacher_layers", (0, 12), "config.distill.teacher_layers"),
        ("heads_on", "last", "config.distill.heads_on"),
    ]:
        bad = ml_collections.ConfigDict(c.to_dict())
        node, *keys = field.split(".")
        (bad[node] if keys else bad)[keys[0] if keys else node] = value
        with pytest.raises(ValueError, match=message.replace(".", r"\.")):
            distill.validate(bad)


# --------------------------------------------------------------- the train step

TEACHER = EncoderConfig(
    hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64, conv_dim=(16,) * 7
)
STUDENT = TEACHER.replace(hidden_size=16, intermediate_size=32, num_layers=2)


@pytest.fixture(scope="module")
def setup():
    """Distill config, teacher params, a 2-layer student, optimizer and a padded batch."""
    d = distill.default_config()
    d.loss, d.teacher_layers = "star", (2, 4)
    t_params = models.init_params(TEACHER, jax.random.key(0))
    params = student.init_student(
        STUDENT, jax.random.key(1), TEACHER, t_params, distill.head_layers(d), False
    )
    stacking_cfg = stacking.default_config()
    stacking_cfg.method = "none"
    o = optim.default_config()
    o.learning_rate, o.warmup_fraction, o.decay = 2e-3, 0.0, "constant"
    schedule = optim.make_schedule(o, stacking.plan_stages(stacking_cfg, 8, 1))
    tx = optim.make_optimizer(o, schedule, False)
    wav = RNG.normal(size=(2, 4000)).astype(np.float32)
    wav[1, 2500:] = 0.0
    batch = {"audio": jnp.asarray(wav), "lengths": jnp.array([4000, 2500], jnp.int32)}
    return d, t_params, params, tx, schedule, batch


def test_star_step_is_finite_and_loss_falls(setup):
    d, t_params, params, tx, schedule, batch = setup
    assert params["heads"] == {}  # STaR adds no parameters to the student
    sources = distill.target_sources(d, np.arange(2), (0, 1), "last")
    step = jax.jit(distill.make_train_step(d, TEACHER, STUDENT, sources, tx, schedule, False))
    state = distill.init_state(params, tx, 0)
    history = []
    for _ in range(8):
        state, metrics = step(state, t_params, batch)
        assert all(np.isfinite(float(v)) for v in jax.tree_util.tree_leaves(metrics))
        history.append(float(metrics["loss"]))
    assert history[-1] < 0.7 * history[0], history


@pytest.mark.parametrize(
    "method, lineage, want",
    [
        ("interleaved", [0, 0, 1, 1], {2: 2, 4: 4}),  # blocks keep their positions
        ("top", [0, 1, 0, 1], {2: 3, 4: 4}),  # layer 0's last descendant is the copy on top
        ("middle", [0, 1, 0, 1], {2: 3, 4: 4}),  # the middle block of 2 is the whole stack
    ],
)
def test_targets_follow_lineage_after_growth(method, lineage, want):
    d = distill.default_config()
    d.loss, d.teacher_layers = "star", (2, 4)
    grown_lineage = stacking.lineage_after(np.arange(2), method, 2)
    np.testing.assert_array_equal(grown_lineage, lineage)
    assert distill.target_sources(d, grown_lineage, (0, 1), "last") == want


def test_step_reads_the_pairs_of_the_grown_stack(setup):
    """After top growth 2 -> 4 the step's STaR loss is on pairs {2: 3, 4: 4}, by NumPy."""
    d, t_params, params, tx, schedule, batch = setup
    want = {2: 3, 4: 4}
    sources = distill.target_sources(
        d, stacking.lineage_after(np.arange(2), "top", 2), (0, 1), "last"
    )
    assert sources == want
    grown = {**params, "encoder": stacking.grow(params["encoder"], "top", 2)}
    step = distill.make_train_step(d, TEACHER, STUDENT, sources, tx, schedule, False)
    _, metrics = jax.jit(step)(distill.init_state(grown, tx, 0), t_params, batch)
    # The step's loss is STaR on exactly those pairs, recomputed here in NumPy.
    s_out = student.apply_encoder(STUDENT, grown["encoder"], batch["audio"], batch["lengths"])
    t_out = Encoder(TEACHER).apply({"params": t_params}, batch["audio"], batch["lengths"])
    lengths = np.asarray(t_out.mask).sum(-1)
    want_loss = np_star(
        np.asarray(s_out.hidden_states), np.asarray(t_out.hidden_states), lengths, want
    )
    assert float(metrics["loss"]) == pytest.approx(want_loss, rel=1e-4)


def test_star_refuses_stored_targets():
    d = distill.default_config()
    d.loss = "star"
    tx, schedule = optax.adam(1e-3), optax.constant_schedule(1e-3)
    with pytest.raises(ValueError, match="config.distill.loss='star'"):
        distill.make_train_step(d, TEACHER, STUDENT, {2: 1, 4: 2}, tx, schedule, False, True)


# --------------------------------------------------------------- configs/starhubert.py


def _by_hand_layer(d, ffn):
    """One fairseq post-LN layer (their module.py L336-356): q, k, v, out, 2 LayerNorms, FFN."""
    return 4 * (d * d + d) + 2 * 2 * d + (d * ffn + ffn) + (ffn * d + d)


@pytest.mark.parametrize(
    "arg, method, teacher_layers, depths",
    [
        (None, "none", tuple(range(1, 13)), [12]),
        ("stacking=interleaved", "interleaved", (4, 8, 12), [3, 6, 9, 12]),
        ("stacking=top,runlocal", "top", (6, 12), [2, 4]),  # demo-size: 4 layers, 2 -> 4
        ("runlocal", "none", (3, 6, 9, 12), [4]),
        ("stacking=middle", "middle", (4, 8, 12), [3, 6, 9, 12]),
    ],
)
def test_starhubert_config_variants(arg, method, teacher_layers, depths):
    from helpers import load_config

    c = load_config("configs/starhubert.py", arg)
    distill.validate(c.distill)
    assert (c.distill.loss, c.stacking.method) == ("star", method)
    assert tuple(c.distill.teacher_layers) == teacher_layers
    stages = stacking.plan_stages(c.stacking, c.total_steps, c.student.num_layers)
    assert [s.depth for s in stages] == depths
    first = distill.initial_student_layers(c.distill, depths[0])
    assert first == tuple(range(depths[0]))
    assert distill.head_layers(c.distill) == ()


def test_starhubert_transformer_size_by_hand():
    """Our encoder at the config's shape against a hand count of their modules.

    The CNN front-end (their 1 x 1-conv one) is the attention-reuse branch's field, so it is
    counted by hand here: conv weights without bias (yaml conv_bias False) and the first
    block's GroupNorm(128, 128); then LayerNorm(480) after it (model.py L195).
    """
    from helpers import load_config

    c = load_config("configs/starhubert.py")
    cfg = student.student_encoder_config(c.student, EncoderConfig())
    wav = jnp.zeros((1, 16000))
    shapes = jax.eval_shape(
        lambda: Encoder(cfg).init(jax.random.key(0), wav, jnp.array([16000]))["params"]
    )
    ours = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["encoder"]))
    d, ffn = 480, 1024
    pos_conv = d * (d // 16) * 128 + d  # module.py L176-186 (torch adds weight_g's 128)
    assert ours == pos_conv + 2 * d + 12 * _by_hand_layer(d, ffn)
    in_dims = (1,) + tuple(o for o, _, _ in c.student.conv_layers[:-1])
    conv = sum(i * o * k for i, (o, k, _) in zip(in_dims, c.student.conv_layers)) + 2 * 128
    total = ours + 128 + conv + 2 * d  # + weight_g, the CNN and its LayerNorm, as torch counts
    assert total == 26_630_752
    assert abs(total / 26.63e6 - 1) < 0.005  # STaRHuBERT-L (README L191: 26.6M; issue: 26.63M)


def test_headless_student_exports_and_loads_back(setup, tmp_path):
    from stackdistill import export, teacher

    *_, params, _, _, batch = setup
    export.export_student(STUDENT, params, tmp_path, {2: 1, 4: 2})
    cfg_back, encoder_back = teacher.load(str(tmp_path), use_cache=False)
    assert cfg_back.num_layers == 2 and cfg_back.hidden_size == STUDENT.hidden_size
    heads, info = export.load_heads(tmp_path)
    assert heads == {} and info["head"] == "none" and info["target_sources"] == {"2": 1, "4": 2}
    want = models.encode(STUDENT, params["encoder"], batch["audio"], batch["lengths"])
    got = models.encode(cfg_back, encoder_back, batch["audio"], batch["lengths"])
    np.testing.assert_allclose(got.hidden_states, want.hidden_states, atol=1e-4)
