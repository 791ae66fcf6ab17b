"""Students: published sizes, teacher initialisation, shared front-end, heads."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_fixtures import make_hf_model, padded_batch, save_hf_model

from stackdistill import models, teacher
from stackdistill.models import EncoderConfig, student


def _abstract_student(student_cfg):
    teacher_cfg = EncoderConfig()  # HuBERT Base
    cfg = student.student_encoder_config(student_cfg, teacher_cfg)
    shapes = jax.eval_shape(
        lambda r: student.init_student(cfg, r, teacher_cfg, None, (4, 8, 12), False),
        jax.random.key(0),
    )
    return cfg, shapes


def test_paper_student_size():
    _, shapes = _abstract_student(student.default_config())
    n = student.encoder_param_count(shapes)
    assert abs(n - 26.9e6) <= 0.3e6, n
    assert models.param_count(shapes["heads"]) == 3 * (384 * 768 + 768)


def test_distilhubert_size():
    _, shapes = _abstract_student(student.distilhubert_config())
    assert abs(student.encoder_param_count(shapes) - 23.5e6) <= 0.3e6


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    path = save_hf_model(make_hf_model("wavlm", False), tmp_path_factory.mktemp("t"))
    return teacher.load(str(path), use_cache=False)


def _tiny_student_config(**kw):
    c = student.default_config()
    c.update({**dict(num_layers=2, hidden_size=16, intermediate_size=32, num_heads=2), **kw})
    return c


def test_init_from_teacher_copies_what_fits(tiny_teacher):
    t_cfg, t_params = tiny_teacher
    # Same width as the teacher: front-end, projection, positions and first layers copied.
    wide = student.student_encoder_config(
        _tiny_student_config(hidden_size=32, intermediate_size=64, num_heads=4), t_cfg
    )
    p = student.init_student(wide, jax.random.key(1), t_cfg, t_params, (1, 3))
    enc = p["encoder"]
    np.testing.assert_array_equal(
        enc["feature_extractor"]["conv_layers_0"]["conv"]["kernel"],
        t_params["feature_extractor"]["conv_layers_0"]["conv"]["kernel"],
    )
    np.testing.assert_array_equal(
        enc["encoder"]["layers"]["attention"]["q_proj"]["kernel"],
        t_params["encoder"]["layers"]["attention"]["q_proj"]["kernel"][:2],
    )
    assert "rel_attn_embed" not in enc["encoder"]  # students are HuBERT-type
    assert set(p["heads"]) == {"layer_1", "layer_3"}
    # Thinner than the teacher: front-end copied, transformer random.
    thin = student.student_encoder_config(_tiny_student_config(), t_cfg)
    q = student.init_student(thin, jax.random.key(1), t_cfg, t_params, (3,))
    np.testing.assert_array_equal(
        q["encoder"]["feature_projection"]["layer_norm"]["scale"],
        t_params["feature_projection"]["layer_norm"]["scale"],
    )
    assert q["encoder"]["feature_projection"]["projection"]["kernel"].shape == (16, 16)
    r = student.init_student(thin, jax.random.key(1), t_cfg, t_params, (3,), False)
    assert not np.allclose(
        r["encoder"]["feature_extractor"]["conv_layers_0"]["conv"]["kernel"],
        t_params["feature_extractor"]["conv_layers_0"]["conv"]["kernel"],
    )


def test_shared_frontend_gives_the_same_outputs(tiny_teacher):
    t_cfg, t_params = tiny_teacher
    cfg = student.student_encoder_config(_tiny_student_config(), t_cfg)
    p = student.init_student(cfg, jax.random.key(2), t_cfg, t_params, (3,))
    wav, lengths = padded_batch(4000)
    own = student.apply_encoder(cfg, p["encoder"], wav, lengths)
    t_out = models.encode(t_cfg, t_params, wav, lengths)
    shared = student.apply_encoder(cfg, p["encoder"], wav, lengths, features=t_out.features)
    np.testing.assert_allclose(shared.hidden_states, own.hidden_states, atol=1e-5)
    preds = student.predict(p["heads"], shared.hidden_states, {3: 2})
    head = p["heads"]["layer_3"]
    np.testing.assert_allclose(
        preds[3], shared.hidden_states[2] @ head["kernel"] + head["bias"], atol=1e-5
    )
    assert preds[3].shape == (2, t_out.hidden_states.shape[2], 32)


def test_dropout_needs_rng_and_changes_outputs(tiny_teacher):
    t_cfg, t_params = tiny_teacher
    cfg = student.student_encoder_config(_tiny_student_config(dropout=0.5), t_cfg)
    p = student.init_student(cfg, jax.random.key(2), t_cfg, t_params, (3,))
    wav, lengths = padded_batch(4000)
    a = student.apply_encoder(cfg, p["encoder"], wav, lengths).hidden_states
    b = student.apply_encoder(cfg, p["encoder"], wav, lengths, dropout_rng=jax.random.key(0))
    assert not jnp.allclose(a[-1], b.hidden_states[-1])


def test_shared_frontend_requires_teacher_init():
    c = _tiny_student_config(frozen_shared_frontend=True, init_from_teacher=False)
    with pytest.raises(ValueError, match="frozen_shared_frontend"):
        student.student_encoder_config(c, EncoderConfig())


def _distilhubert_tiny(t_cfg, t_params, **kw):
    c = student.distilhubert_config()
    c.update(num_layers=2, hidden_size=32, intermediate_size=64, num_heads=4, **kw)
    cfg = student.student_encoder_config(c, t_cfg)
    p = student.init_student(
        cfg,
        jax.random.key(3),
        t_cfg,
        t_params,
        (1, 3),
        head=c.head,
        copy_teacher_encoder_norm=c.copy_teacher_encoder_norm,
    )
    return cfg, p


def test_distilhubert_mlp_heads_and_no_frontend_layer_norm(tiny_teacher):
    t_cfg, t_params = tiny_teacher
    cfg, p = _distilhubert_tiny(t_cfg, t_params)
    assert not cfg.feat_proj_layer_norm
    assert "layer_norm" not in p["encoder"]["feature_projection"]
    # s3prl copies the teacher's projection, pos_conv and layers, not the encoder LayerNorm.
    np.testing.assert_array_equal(
        p["encoder"]["feature_projection"]["projection"]["kernel"],
        t_params["feature_projection"]["projection"]["kernel"],
    )
    np.testing.assert_array_equal(p["encoder"]["encoder"]["layer_norm"]["scale"], np.ones(32))
    # Linear(D, D) -> GELU -> Linear(D, teacher D) per target (s3prl's expand-last).
    shapes = jax.tree_util.tree_map(lambda x: x.shape, p["heads"])
    head = {"fc1": {"kernel": (32, 32), "bias": (32,)}, "fc2": {"kernel": (32, 32), "bias": (32,)}}
    assert shapes == {"layer_1": head, "layer_3": head}
    x = jax.random.normal(jax.random.key(0), (2, 5, 32))
    h = p["heads"]["layer_3"]
    manual = jax.nn.gelu(x @ h["fc1"]["kernel"] + h["fc1"]["bias"], approximate=False)
    manual = manual @ h["fc2"]["kernel"] + h["fc2"]["bias"]
    np.testing.assert_allclose(student.predict(p["heads"], x[None], {3: 0})[3], manual, atol=1e-5)


def test_distilhubert_dropouts_reach_the_encoder(tiny_teacher):
    t_cfg, _ = tiny_teacher
    cfg = student.student_encoder_config(student.distilhubert_config(), t_cfg)
    assert (cfg.dropout, cfg.attention_dropout, cfg.activation_dropout) == (0.1, 0.1, 0.1)
    assert cfg.feature_grad_mult == 0.1 and cfg.has_dropout


def test_feature_grad_mult_scales_the_frontend_gradient(tiny_teacher):
    t_cfg, t_params = tiny_teacher
    cfg, p = _distilhubert_tiny(t_cfg, t_params, dropout=0.0, attention_dropout=0.0)
    cfg = cfg.replace(activation_dropout=0.0)
    wav, lengths = padded_batch(4000)

    def loss(params, mult):
        out = student.apply_encoder(cfg.replace(feature_grad_mult=mult), params, wav, lengths)
        return jnp.sum(out.hidden_states[-1] ** 2 * out.mask[..., None])

    g1 = jax.grad(loss)(p["encoder"], 1.0)
    g01 = jax.grad(loss)(p["encoder"], 0.1)
    assert loss(p["encoder"], 0.1) == loss(p["encoder"], 1.0)  # the forward is unchanged
    conv = ("feature_extractor", "conv_layers_0", "conv", "kernel")
    get = lambda g, path: functools.reduce(lambda t, k: t[k], path, g)  # noqa: E731
    # float32 rounding through the CNN backward: the same gradient to ~1e-5 relative
    np.testing.assert_allclose(get(g01, conv), 0.1 * get(g1, conv), rtol=1e-4, atol=1e-6)
    assert float(jnp.abs(get(g1, conv)).max()) > 0
    proj = ("feature_projection", "projection", "kernel")  # after the scale: untouched
    np.testing.assert_array_equal(get(g01, proj), get(g1, proj))
