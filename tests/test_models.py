"""The shared encoder: HuBERT Base shapes and size, frame arithmetic, bf16, input errors."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_fixtures import hf_hidden_states, make_hf_model, padded_batch, save_hf_model

from stackdistill import models, teacher
from stackdistill.models import EncoderConfig


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny converted HuBERT (post-LN) and its transformers original."""
    model = make_hf_model("hubert", False)
    path = save_hf_model(model, tmp_path_factory.mktemp("tiny"))
    cfg, params = teacher.load(str(path), use_cache=False)
    return model, cfg, params


def test_hubert_base_converts_runs_and_has_the_published_size(tmp_path):
    import transformers

    torch_model = transformers.HubertModel(transformers.HubertConfig()).eval()
    cfg, params = teacher.load(str(save_hf_model(torch_model, tmp_path / "base")), use_cache=False)
    n = models.param_count(params)
    # torch counts weight_g (128, folded here); masked_spec_embed (768) is kept, for masking
    # distillation (stackdistill/recipes/masking.py), as params["masked_spec_embed"].
    assert n == sum(p.numel() for p in torch_model.parameters()) - 128
    assert abs(n - 94.4e6) <= 0.1e6
    np.testing.assert_array_equal(
        params["masked_spec_embed"], torch_model.masked_spec_embed.detach().numpy()
    )
    assert (
        models.param_count(models.init_params(cfg.replace(mask_emb=True), jax.random.key(0))) == n
    )
    assert jax.tree_util.tree_leaves(params["encoder"]["layers"])[0].shape[0] == 12

    wav, lengths = padded_batch(16000)
    out = models.encode(cfg, params, wav, lengths)
    assert out.hidden_states.shape == (13, 2, 49, 768)
    assert out.features.shape == (2, 49, 512)
    ref = hf_hidden_states(torch_model, wav, lengths)
    mask = np.asarray(out.mask)
    np.testing.assert_allclose(np.asarray(out.hidden_states[12])[mask], ref[12][mask], atol=1e-4)


def test_frame_lengths_follow_transformers(tiny):
    import torch

    model, cfg, _ = tiny
    samples = np.array([400, 401, 999, 1000, 4000, 16000, 250_000])
    ref = model._get_feat_extract_output_lengths(torch.from_numpy(samples)).numpy()
    np.testing.assert_array_equal(models.frame_lengths(cfg, samples), ref)
    assert [cfg.num_frames(int(s)) for s in samples] == ref.tolist()
    base = EncoderConfig()
    assert (base.receptive_field, base.hop, base.num_frames(16000)) == (400, 320, 49)


def test_bfloat16_compute_stays_close_to_float32(tiny):
    model, cfg, params = tiny
    wav, lengths = padded_batch(4000)
    f32 = models.encode(cfg, params, wav, lengths)
    bf16 = models.encode(cfg.replace(dtype="bfloat16"), params, wav, lengths)
    assert bf16.hidden_states.dtype == jnp.bfloat16
    assert jax.tree_util.tree_leaves(params)[0].dtype == jnp.float32
    mask = np.asarray(f32.mask)
    for a, b in zip(np.asarray(bf16.hidden_states, np.float32), np.asarray(f32.hidden_states)):
        diff = (a - b)[mask]
        # bf16 keeps 8 mantissa bits (2^-8 = 0.4% per op): documented bound, relative RMS < 2%.
        assert np.sqrt((diff**2).mean() / (b[mask] ** 2).mean()) < 2e-2
        assert (np.abs(diff) / np.maximum(1, np.abs(b[mask]))).max() < 0.15


def test_encode_under_jit_and_grad(tiny):
    _, cfg, params = tiny
    wav, lengths = padded_batch(4000)
    eager = models.encode(cfg, params, wav, lengths).hidden_states
    jitted = jax.jit(lambda p, w, n: models.encode(cfg, p, w, n).hidden_states)(
        params, wav, lengths
    )
    np.testing.assert_allclose(jitted, eager, atol=1e-5)

    def loss(p, remat):
        return jnp.mean(models.encode(cfg.replace(remat=remat), p, wav, lengths).hidden_states ** 2)

    g_plain = jax.grad(loss)(params, "none")
    g_remat = jax.grad(loss)(params, "dots_saveable")
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g_plain, g_remat
    )


def test_depth_is_read_from_params(tiny):
    _, cfg, params = tiny
    two = jax.tree_util.tree_map(lambda x: x[:2], params["encoder"]["layers"])
    shallow = {**params, "encoder": {**params["encoder"], "layers": two}}
    wav, lengths = padded_batch(4000)
    out = models.encode(cfg, shallow, wav, lengths)
    full = models.encode(cfg, params, wav, lengths)
    assert out.hidden_states.shape[0] == 3
    np.testing.assert_allclose(out.hidden_states, full.hidden_states[:3], atol=1e-6)


@pytest.mark.parametrize(
    "wav,lengths,message",
    [
        (np.zeros((4000,), np.float32), np.array([4000]), "must be \\(batch, samples\\)"),
        (np.zeros((1, 4000), np.int16), np.array([4000]), "must be float"),
        (np.zeros((2, 4000), np.float32), np.array([4000, 4001]), "exceed the 4000 samples"),
        (np.zeros((2, 4000), np.float32), np.array([4000]), "lengths must be \\(2,\\)"),
        (np.zeros((1, 4000), np.float32), np.array([4000.0]), "integer sample counts"),
        (np.zeros((1, 4000), np.float32), np.array([10]), "at least 40 samples"),
    ],
)
def test_bad_inputs_are_named(tiny, wav, lengths, message):
    _, cfg, params = tiny
    with pytest.raises(ValueError, match=message):
        models.encode(cfg, params, wav, lengths)


def test_config_round_trips_through_transformers_fields(tiny):
    model, cfg, _ = tiny
    assert EncoderConfig.from_hf(cfg.to_hf()) == cfg
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        cfg.replace(num_heads=5)


@pytest.mark.parametrize("kernel, groups", [(128, 16), (5, 4), (8, 1)])
def test_positional_conv_gradients_match_torch(kernel, groups):
    """The positional conv's own VJP (fast kernel gradient on CPU) against torch's conv1d."""
    import torch

    from stackdistill.models import frontend

    rng = np.random.default_rng(kernel)
    b, t, d = 3, 57, 32
    x = rng.standard_normal((b, t, d)).astype(np.float32)
    w = rng.standard_normal((kernel, d // groups, d)).astype(np.float32)
    pad = (kernel // 2, kernel // 2)
    y, vjp = jax.vjp(lambda x, w: frontend._grouped_conv(x, w, pad, groups), x, w)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw = vjp(dy)

    x_t = torch.tensor(x.transpose(0, 2, 1), requires_grad=True)
    w_t = torch.tensor(w.transpose(2, 1, 0), requires_grad=True)
    y_t = torch.nn.functional.conv1d(x_t, w_t, padding=kernel // 2, groups=groups)
    y_t.backward(torch.tensor(dy.transpose(0, 2, 1)))
    for ours, ref in [
        (y, y_t.detach().numpy().transpose(0, 2, 1)),
        (dx, x_t.grad.numpy().transpose(0, 2, 1)),
        (dw, w_t.grad.numpy().transpose(2, 1, 0)),
    ]:
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_positional_conv_keeps_xla_gradient_off_cpu():
    """GPU/TPU lower XLA's own kernel gradient (a batch-grouped conv); CPU lowers ours."""
    from stackdistill.models import frontend

    x, w = np.ones((2, 9, 8), np.float32), np.ones((4, 2, 8), np.float32)
    grad = jax.jit(
        jax.grad(lambda x, w: jnp.sum(frontend._grouped_conv(x, w, (2, 2), 4) ** 2), (0, 1))
    )
    for platform, xla_own in [("cpu", False), ("cuda", True), ("tpu", True)]:
        module = jax.export.export(grad, platforms=[platform])(x, w).mlir_module()
        assert ("batch_group_count = 4" in module) == xla_own, platform


def test_attention_dropout_is_unbiased_and_off_in_eval():
    """Eval: softmax(q k^T / sqrt(h)) v by hand; training: the mean over dropout draws."""
    from stackdistill.models.layers import Attention

    cfg = EncoderConfig(hidden_size=8, num_heads=2, attention_dropout=0.3)
    x_btd = jax.random.normal(jax.random.key(0), (1, 5, 8))
    mask_bt = jnp.array([[True, True, True, True, False]])
    attention = Attention(cfg)
    variables = attention.init(jax.random.key(1), x_btd, mask_bt, None, True)
    p = jax.tree_util.tree_map(np.asarray, variables["params"])

    def proj(name, x):
        return x @ p[name]["kernel"] + p[name]["bias"]

    x = np.asarray(x_btd[0], np.float64)
    q, k, v = (
        proj(n, x).reshape(5, 2, 4).transpose(1, 0, 2) for n in ("q_proj", "k_proj", "v_proj")
    )
    logits = q @ k.transpose(0, 2, 1) / 2.0
    logits[:, :, 4] = -np.inf  # the padded key
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = proj("out_proj", (weights @ v).transpose(1, 0, 2).reshape(5, 8))

    eval_out = attention.apply(variables, x_btd, mask_bt, None, True)
    np.testing.assert_allclose(eval_out[0], expected, atol=1e-5)

    def draw(key):
        return attention.apply(variables, x_btd, mask_bt, None, False, rngs={"dropout": key})

    draws = jax.vmap(draw)(jax.random.split(jax.random.key(2), 4000))[:, 0]
    assert not np.allclose(draws[0], draws[1])
    # Inverted dropout keeps the expectation: the mean of the draws sits within 4 standard
    # errors of it, element by element.
    standard_error = np.asarray(draws.std(0)) / np.sqrt(len(draws))
    assert (np.abs(draws.mean(0) - expected) <= 4 * standard_error).all()


def _attention_reference(q, k, v, lengths, bias=None):
    """Softmax attention over the first `lengths` keys, in float64 numpy."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + np.asarray(bias, np.float64)
    keys = np.arange(k.shape[1])[None, None, None, :] < np.asarray(lengths)[:, None, None, None]
    scores = np.where(keys, scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", weights, v)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("impl", ["xla", "cudnn"])
def test_attention_by_key_lengths_equals_the_key_mask(impl, with_bias):
    """Both options attend over the valid keys only; padded queries too (as transformers)."""
    from stackdistill.models.layers import attention

    rng = np.random.default_rng(0)
    b, t, n, h = 3, 11, 2, 8
    q, k, v = (rng.standard_normal((b, t, n, h)).astype(np.float32) for _ in range(3))
    lengths = np.array([11, 7, 1])
    bias = rng.standard_normal((b, n, t, t)).astype(np.float32) if with_bias else None
    mask = jnp.arange(t)[None] < jnp.asarray(lengths)[:, None]
    got = attention(EncoderConfig(attention=impl), q, k, v, bias, mask)
    np.testing.assert_allclose(got, _attention_reference(q, k, v, lengths, bias), atol=1e-5)


@pytest.mark.parametrize(
    "model_type,stable", [("hubert", False), ("wavlm", False), ("wav2vec2", True)]
)
def test_fast_path_options_follow_transformers(tmp_path, model_type, stable):
    """attention="cudnn" (by key lengths; XLA here) and frontend_norm="compute" in float32
    agree with transformers as the default path does, and with the default path to 1e-5."""
    model = make_hf_model(model_type, stable)
    cfg, params = teacher.load(str(save_hf_model(model, tmp_path / "m")), use_cache=False)
    wav, lengths = padded_batch(4000)
    fast_cfg = cfg.replace(attention="cudnn", frontend_norm="compute")
    fast = models.encode(fast_cfg, params, wav, lengths)
    default = models.encode(cfg, params, wav, lengths)
    ref = hf_hidden_states(model, wav, lengths)
    mask = np.asarray(default.mask)
    # transformers: every hidden state, then the last one (after the final LN if pre-LN).
    ours = [*fast.hidden_states, fast.last_hidden_state]
    theirs = [*default.hidden_states, default.last_hidden_state]
    for i, r in enumerate(ref):
        np.testing.assert_allclose(np.asarray(ours[i])[mask], r[mask], atol=1e-4)
        np.testing.assert_allclose(ours[i][mask], theirs[i][mask], atol=1e-5)
    np.testing.assert_allclose(fast.features, default.features, rtol=1e-5, atol=1e-6)

    def loss(p, c):
        return jnp.sum(models.encode(c, p, wav, lengths).last_hidden_state[mask] ** 2)

    g_fast, g_default = (jax.grad(loss)(params, c) for c in (fast_cfg, cfg))
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_fast, g_default
    )


@pytest.mark.parametrize("feat_extract_norm", ["group", "layer"])
def test_bf16_frontend_norm_keeps_the_bf16_error(tmp_path, feat_extract_norm):
    """Normalising in bf16 (float32 statistics), and conv 0 as a matmul with its GroupNorm
    folded in, stay within the error bf16 already has."""
    model = make_hf_model("hubert", feat_extract_norm == "layer")
    cfg, params = teacher.load(str(save_hf_model(model, tmp_path / "m")), use_cache=False)
    wav, lengths = padded_batch(4000)
    f32 = models.encode(cfg, params, wav, lengths)
    errors = {}
    for norm in ("float32", "compute", "matmul"):
        fast = {"first_conv": "matmul"} if norm == "matmul" else {"frontend_norm": norm}
        out = models.encode(cfg.replace(dtype="bfloat16", **fast), params, wav, lengths)
        mask = np.asarray(f32.mask)
        for name, a, b in (("features", out.features, f32.features),
                           ("last", out.last_hidden_state, f32.last_hidden_state)):  # fmt: skip
            diff = np.asarray(a, np.float32)[mask] - np.asarray(b)[mask]
            errors[norm, name] = np.sqrt((diff**2).mean() / (np.asarray(b)[mask] ** 2).mean())
    for name in ("features", "last"):
        # bf16 rounding (2^-9 relative) of one more tensor per norm: same order as bf16's own.
        for fast in ("compute", "matmul"):
            assert errors[fast, name] < max(2 * errors["float32", name], 4e-3), errors
            assert errors[fast, name] < 2e-2, errors


@pytest.mark.parametrize("kernel,stride", [(10, 5), (7, 3), (4, 4)])
def test_strided_windows_are_the_conv_windows(kernel, stride):
    """strided_windows(wav)[b, t] is wav[b, t*stride : t*stride + kernel] for every frame."""
    from stackdistill.models.first_conv import strided_windows

    wav = np.random.default_rng(0).standard_normal((2, 103)).astype(np.float32)
    got = np.asarray(strided_windows(jnp.asarray(wav), kernel, stride))
    frames = (103 - kernel) // stride + 1
    ref = np.stack([wav[:, t * stride : t * stride + kernel] for t in range(frames)], axis=1)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("strided", ["conv", "matmul"])
@pytest.mark.parametrize("stable", [False, True])
def test_first_conv_matmul_follows_transformers(tmp_path, stable, strided):
    """first_conv="matmul" (GroupNorm folded in; or LayerNorm after it), alone and with
    strided_conv="matmul" (the TPU's defaults), with conv biases and a DC offset:
    transformers' hidden states to 1e-4, the default path's features to 1e-5 and its
    front-end gradients to 1e-4 (float32), and the same params."""
    model = make_hf_model("hubert", stable, conv_bias=True)
    cfg, params = teacher.load(str(save_hf_model(model, tmp_path / "m")), use_cache=False)
    assert cfg.conv_bias and cfg.feat_extract_norm == ("layer" if stable else "group")
    matmul_cfg = cfg.replace(first_conv="matmul", strided_conv=strided)
    init = [models.init_params(c, jax.random.key(1)) for c in (cfg, matmul_cfg)]
    jax.tree_util.tree_map(np.testing.assert_array_equal, *init)
    wav, lengths = padded_batch(4000)
    wav = wav + 0.5  # a DC offset: the folded norm must not lose it to cancellation
    out = models.encode(matmul_cfg, params, wav, lengths)
    mask = np.asarray(out.mask)
    for ours, theirs in zip(out.hidden_states, hf_hidden_states(model, wav, lengths)):
        np.testing.assert_allclose(np.asarray(ours)[mask], theirs[mask], atol=1e-4)

    def features(p, c):
        return models.encode(c, p, wav, lengths).features

    np.testing.assert_allclose(
        features(params, matmul_cfg), features(params, cfg), rtol=1e-5, atol=1e-5
    )
    grads = [
        jax.grad(lambda p, c=c: jnp.sum(features(p, c) ** 3))(params)["feature_extractor"]
        for c in (matmul_cfg, cfg)
    ]
    if not stable:  # the GroupNorm cancels a per-channel shift: the bias's gradient is 0,
        # exactly when folded, float32 noise by the default path
        ours, theirs = (g["conv_layers_0"]["conv"].pop("bias") for g in grads)
        np.testing.assert_array_equal(ours, 0.0)
        scale = np.abs(grads[1]["conv_layers_0"]["conv"]["kernel"]).max()
        assert np.abs(theirs).max() < 1e-4 * scale
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), *grads
    )


@pytest.mark.parametrize("t", [130, 1030])  # one block; 512-frame blocks (3 x 3)
def test_flash_attention_kernel_in_interpret_mode(t):
    """attention="flash"'s Pallas TPU kernel, interpreted on the CPU: softmax over the valid
    keys (padded queries too; frames padded to whole blocks, one up to 1024 frames, 512-frame
    ones above), forward against numpy in float64 and gradients against the default path."""
    import jax.experimental.pallas.tpu as pltpu

    from stackdistill.models import flash_attention
    from stackdistill.models.layers import attention

    rng = np.random.default_rng(0)
    b, n, h = 2, 2, 16
    q, k, v = (rng.standard_normal((b, t, n, h)).astype(np.float32) for _ in range(3))
    lengths = np.array([t, 37])
    mask = jnp.arange(t)[None] < jnp.asarray(lengths)[:, None]
    cotangent = rng.standard_normal((b, t, n, h)).astype(np.float32)

    def loss(fn, *qkv):
        return jnp.sum(fn(*qkv) * cotangent)

    default = functools.partial(attention, EncoderConfig(), bias_bntt=None, mask_bt=mask)
    with pltpu.force_tpu_interpret_mode():
        flash = functools.partial(flash_attention.attention_local, mask_bt=mask)
        got = flash(q, k, v)
        grads = jax.grad(functools.partial(loss, flash), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(got, _attention_reference(q, k, v, lengths), atol=1e-5)
    expected = jax.grad(functools.partial(loss, default), argnums=(0, 1, 2))(q, k, v)
    for a, e in zip(grads, expected):
        np.testing.assert_allclose(a, e, atol=1e-4)


@pytest.mark.parametrize("kernel,stride,length", [(3, 2, 41), (3, 2, 40), (2, 2, 41), (7, 3, 50)])
def test_strided_conv_matmul_is_the_conv(kernel, stride, length):
    """strided_conv_matmul against lax's VALID conv (float64 numpy by hand as the reference):
    odd and even lengths (a group completed with zeros), kernels over one and several groups."""
    from stackdistill.models.first_conv import strided_conv_matmul

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, length, 5))
    w = rng.standard_normal((kernel, 5, 4))
    bias = rng.standard_normal(4)
    frames = (length - kernel) // stride + 1
    ref = np.stack(
        [np.einsum("kc,kco->o", x[b, t * stride : t * stride + kernel], w)
         for b in range(2) for t in range(frames)]
    ).reshape(2, frames, 4) + bias  # fmt: skip
    got = strided_conv_matmul(
        jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), jnp.asarray(bias, jnp.float32),
        stride, "float32",
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5)


def _layer_norm_reference(x, scale, g, eps=1e-5):
    """A LayerNorm's gradients (x, scale, bias) over the last axis for cotangent g, by hand in
    float64."""
    x, g = x.astype(np.float64), g.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)
    x_hat = (x - mean) * rstd
    g_hat = g * scale
    dx = rstd * (
        g_hat - g_hat.mean(-1, keepdims=True) - x_hat * (g_hat * x_hat).mean(-1, keepdims=True)
    )
    axes = tuple(range(x.ndim - 1))
    return dx, (g * x_hat).sum(axes), g.sum(axes)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_layer_norm_recompute_is_flax_layer_norm(dtype, capsys):
    """layer_norm="recompute" (the TPU's default): flax's LayerNorm's params and forward, bit
    for bit; gradients against float64 by hand (float32: 1e-5; bf16: dx within one bf16
    rounding, closer than flax's own); and its backward keeps the input and two float32
    numbers per frame, where autodiff of flax's keeps three float32 copies of the input."""
    import flax.linen as nn
    from jax.ad_checkpoint import print_saved_residuals

    from stackdistill.models.frontend import LayerNorm

    rng = np.random.default_rng(0)
    b, t, d = 3, 50, 384
    x = jnp.asarray(rng.standard_normal((b, t, d)) * 3 + 1, dtype)
    g = rng.standard_normal((b, t, d)).astype(np.float32)
    flax_ln = nn.LayerNorm(epsilon=1e-5, dtype=dtype, use_fast_variance=False)
    ours = LayerNorm(epsilon=1e-5, dtype=dtype)
    params = flax_ln.init(jax.random.key(0), x)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, ours.init(jax.random.key(0), x))
    scale, bias = (rng.standard_normal(d).astype(np.float32) for _ in range(2))
    params = {"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}}
    np.testing.assert_array_equal(ours.apply(params, x), flax_ln.apply(params, x))

    def loss(module, p, x):
        return jnp.sum(module.apply(p, x).astype(jnp.float32) * g)

    g_in = np.asarray(jnp.asarray(g).astype(dtype), np.float32)  # the cotangent the norm gets
    dx_ref, dscale_ref, dbias_ref = _layer_norm_reference(np.asarray(x, np.float32), scale, g_in)
    dx_tol = 1e-5 if dtype == "float32" else 2**-8  # bf16: one rounding, relative
    errors = []
    for module in (ours, flax_ln):
        dp, dx = jax.grad(functools.partial(loss, module), argnums=(0, 1))(params, x)
        np.testing.assert_allclose(dp["params"]["scale"], dscale_ref, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(dp["params"]["bias"], dbias_ref, rtol=1e-5, atol=1e-4)
        errors.append(np.abs(np.asarray(dx, np.float64) - dx_ref).max())
        if module is ours or dtype == "float32":
            np.testing.assert_allclose(np.asarray(dx, np.float64), dx_ref, rtol=dx_tol, atol=1e-6)
    # flax's bf16 dx sums its two paths into x (statistics, normalisation) in bf16: ours is
    # computed in float32 and rounded once
    assert errors[0] <= errors[1]

    def saved(module):  # bytes of the residuals that are not the arguments themselves
        capsys.readouterr()
        print_saved_residuals(functools.partial(loss, module), params, x)
        lines = capsys.readouterr().out.splitlines()
        total = 0
        for line in lines:
            kind, dims = re.match(r"(\w+)\[([\d,]*)\]", line).groups()
            if "from the argument" not in line and "from a constant" not in line:
                total += {"f32": 4, "bf16": 2}[kind] * math.prod(
                    int(n) for n in dims.split(",") if n
                )
        return total

    assert saved(ours) == 2 * b * t * 4  # the mean and 1/std per frame (x is an argument)
    assert saved(flax_ln) >= 3 * b * t * d * 4


def test_encoder_with_layer_norm_recompute(tiny):
    """The whole encoder with layer_norm="recompute" (every LayerNorm: projection, encoder,
    layers): the same hidden states as flax's norms, bit for bit, and the same gradients to
    float32 rounding (1e-6), scanned and with remat."""
    _, cfg, params = tiny
    wav, lengths = padded_batch(4000)
    ours = cfg.replace(layer_norm="recompute")
    np.testing.assert_array_equal(
        models.encode(ours, params, wav, lengths).hidden_states,
        models.encode(cfg, params, wav, lengths).hidden_states,
    )

    def loss(p, c):
        return jnp.mean(models.encode(c, p, wav, lengths).hidden_states ** 3)

    for remat in ("none", "nothing_saveable"):
        grads = [jax.grad(loss)(params, c.replace(remat=remat)) for c in (ours, cfg)]
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *grads
        )
