"""Attention-map reuse (ARMHuBERT): reuse layers, reuse blocks, their growth, grad scale.

References are NumPy re-implementations of sungnyun/ARMHuBERT's code as read
(models/armhubert/reusing_module.py, models/armhubert/module.py, fairseq's
MultiheadAttention), never our own output.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special

from stackdistill import stacking
from stackdistill.models import encode, init_params
from stackdistill.models import student as student_lib
from stackdistill.models.config import EncoderConfig
from stackdistill.models.reuse import ReuseAttention, layer_grad_scales

TINY = dict(
    hidden_size=16,
    num_heads=4,
    intermediate_size=24,
    conv_dim=(16,) * 3,
    conv_kernel=(10, 3, 3),
    conv_stride=(5, 2, 2),
    num_conv_pos_embeddings=8,
    num_conv_pos_embedding_groups=4,
)
WAV_LEN = 1600


def tiny_cfg(num_layers: int, block: int = 1, **kw) -> EncoderConfig:
    return EncoderConfig(num_layers=num_layers, layers_per_block=block, **{**TINY, **kw})


def batch():
    wav = jax.random.normal(jax.random.key(1), (2, WAV_LEN))
    return wav, jnp.array([WAV_LEN, 1100])


# ------------------------------------------------------------------ NumPy references


def np_softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def np_gelu(x):
    return 0.5 * x * (1.0 + scipy.special.erf(x / np.sqrt(2.0)))


def np_ln(x, p, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_dense(x, p):
    return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def heads(x, n):  # (B, T, D) -> (B, N, T, H)
    b, t, d = x.shape
    return x.reshape(b, t, n, d // n).transpose(0, 2, 1, 3)


def np_reuse_attention(x, probs, mask, p, n):
    """reusing_module.py L634 (v only), L769-806 (map masked -inf, softmax), L831-839."""
    v = heads(np_dense(x, p["v_proj"]), n)
    w = np_softmax(np.where(mask[:, None, None, :], probs, -np.inf))
    out = (w @ v).transpose(0, 2, 1, 3).reshape(x.shape)
    return np_dense(out, p["out_proj"])


def np_full_attention(x, mask, p, n):
    """fairseq MultiheadAttention: q scaled, -inf on padded keys, softmax; returns the probs."""
    q, k, v = (heads(np_dense(x, p[name]), n) for name in ("q_proj", "k_proj", "v_proj"))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    probs = np_softmax(np.where(mask[:, None, None, :], scores, -np.inf))
    out = (probs @ v).transpose(0, 2, 1, 3).reshape(x.shape)
    return np_dense(out, p["out_proj"]), probs


def np_post_ln_layer(x, attn_out, p):
    """module.py L563-587: post-LN residual attention, then FFN (GELU)."""
    x = np_ln(x + attn_out, p["layer_norm"])
    ff = np_dense(
        np_gelu(np_dense(x, p["feed_forward"]["intermediate_dense"])),
        p["feed_forward"]["output_dense"],
    )
    return np_ln(x + ff, p["final_layer_norm"])


def take(tree, *index):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64)[index], tree)


# ------------------------------------------------------------------ tests


def test_reuse_attention_matches_numpy_with_padded_keys():
    b, t, d, n = 2, 7, 16, 4
    x = np.asarray(jax.random.normal(jax.random.key(0), (b, t, d)))
    probs = np_softmax(np.asarray(jax.random.normal(jax.random.key(1), (b, n, t, t))))
    mask = np.arange(t)[None, :] < np.array([[7], [4]])
    probs = np.where(mask[:, None, None, :], probs, 0.0)  # what a full layer hands on
    module = ReuseAttention(tiny_cfg(2, 2))
    params = module.init(jax.random.key(2), x, probs, mask)["params"]
    assert set(params) == {"v_proj", "out_proj"}
    got = module.apply({"params": params}, x, probs, mask)
    want = np_reuse_attention(x, probs, mask, take(params), n)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-4)


def test_reuse_layers_have_no_query_key_params():
    params = init_params(tiny_cfg(4, 2), jax.random.key(0), WAV_LEN)
    layers = params["encoder"]["layers"]
    assert set(layers) == {"attend", "reuse"}
    assert set(layers["attend"]["attention"]) == {"q_proj", "k_proj", "v_proj", "out_proj"}
    assert set(layers["reuse"]["attention"]) == {"v_proj", "out_proj"}
    assert layers["attend"]["attention"]["q_proj"]["kernel"].shape == (2, 16, 16)
    assert layers["reuse"]["attention"]["v_proj"]["kernel"].shape == (2, 1, 16, 16)
    assert stacking.stack_depth(params) == 2


@pytest.mark.parametrize("block", [2, 3])
def test_reuse_encoder_matches_unrolled_numpy(block):
    """Pattern [T, F] * 2 (or [T, F, F] * 2) against the layers unrolled by hand."""
    cfg = tiny_cfg(2 * block, block)
    params = init_params(cfg, jax.random.key(0), WAV_LEN)
    wav, lengths = batch()
    out = jax.jit(lambda p: encode(cfg, p, wav, lengths))(params)
    mask = np.asarray(out.mask)
    x = np.asarray(out.hidden_states[0], np.float64)
    layers = params["encoder"]["layers"]
    hidden = []
    for blk in range(2):
        p = take(layers["attend"], blk)
        attn, probs = np_full_attention(x, mask, p["attention"], cfg.num_heads)
        x = np_post_ln_layer(x, attn, p)
        hidden.append(x)
        for r in range(block - 1):
            p = take(layers["reuse"], blk, r)
            attn = np_reuse_attention(x, probs, mask, p["attention"], cfg.num_heads)
            x = np_post_ln_layer(x, attn, p)
            hidden.append(x)
    assert out.hidden_states.shape[0] == 2 * block + 1
    np.testing.assert_allclose(np.asarray(out.hidden_states[1:]), np.stack(hidden), atol=1e-4)


def test_bad_reuse_patterns_are_refused():
    s = student_lib.default_config()
    s.num_layers = 6
    s.reuse_pattern = (True, False) * 3
    assert student_lib.layers_per_block(s) == 2
    s.reuse_pattern = (True, False, False) * 2
    assert student_lib.layers_per_block(s) == 3
    for bad in [(False, True) * 3, (True, False, True, False, False, True), (True, False) * 2]:
        s.reuse_pattern = bad
        with pytest.raises(ValueError, match="config.student.reuse_pattern"):
            student_lib.layers_per_block(s)


def adam_state(params):
    """An adamw state after one step, so that mu and nu are not zero."""
    tx = optax.adamw(1e-3)
    state = tx.init(params)
    grads = jax.tree_util.tree_map(lambda p: jnp.cos(p) + 0.1, params)
    return tx.update(grads, state, params)[1]


def test_grow_reuse_blocks_params_and_adam_moments():
    cfg = tiny_cfg(4, 2)
    params = init_params(cfg, jax.random.key(0), WAV_LEN)
    opt = adam_state(params)
    grown = stacking.grow(params, "interleaved", 4, block=2)
    grown_opt = stacking.grow_opt_state(opt, "interleaved", 4, block=2)
    src = [0, 0, 1, 1]  # blocks [B0, B1] -> [B0, B0, B1, B1]
    for before, after in [
        (params, grown),
        (opt[0].mu, grown_opt[0].mu),
        (opt[0].nu, grown_opt[0].nu),
    ]:
        leaves = jax.tree_util.tree_leaves(before["encoder"]["layers"])
        grown_leaves = jax.tree_util.tree_leaves(after["encoder"]["layers"])
        assert len(leaves) == len(grown_leaves) > 0
        for a, g in zip(leaves, grown_leaves, strict=True):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(a)[src])
        np.testing.assert_array_equal(  # non-layer leaves untouched
            after["encoder"]["pos_conv_embed"]["conv"]["kernel"],
            before["encoder"]["pos_conv_embed"]["conv"]["kernel"],
        )
    assert cfg.at_depth_of(grown).num_layers == 8
    out = jax.jit(lambda p: encode(cfg, p, *batch()))(grown)  # the grown stack runs at 8 layers
    assert out.hidden_states.shape[0] == 9
    with pytest.raises(ValueError, match="reuse block of 2 layers"):
        stacking.grow(params, "interleaved", 3, block=2)


@pytest.mark.parametrize(
    "method,start,num_new",
    [("interleaved", 4, 4), ("top", 4, 4), ("middle", 4, 4), ("interleaved", 2, 2)],
)
def test_growth_keeps_each_reuse_source_right_before_it(method, start, num_new):
    """At every stage the layer pattern is [T, F] * n and each F's source is the layer before."""
    c = stacking.default_config()
    c.update(method=method, start_depth=start, num_new=num_new)
    stages = stacking.plan_stages(c, 100, 12, block=2)
    assert [s.depth for s in stages][-1] == 12 and all(s.depth % 2 == 0 for s in stages)
    pattern = np.array([True, False] * (start // 2))
    layer_ids = np.arange(start)  # which initial layer each layer's params come from
    for s in stages[1:]:
        lineage = stacking.lineage_after(layer_ids, method, s.num_new, block=2)
        src = stacking.layer_grow_indices(len(layer_ids), method, s.num_new, block=2)
        pattern, layer_ids = pattern[src], layer_ids[src]
        np.testing.assert_array_equal(lineage, layer_ids)
        assert list(pattern) == [True, False] * (s.depth // 2)
        for j in np.flatnonzero(~pattern):  # reuse layer j reads layer j-1's map ...
            assert layer_ids[j - 1] == layer_ids[j] - 1  # ... which is its own block's attend


def test_stage_plan_refuses_depths_that_split_blocks():
    c = stacking.default_config()  # 3 -> 6 -> 9 -> 12
    with pytest.raises(
        ValueError, match=r"config\.stacking\.start_depth=3.*config\.student\.reuse_pattern"
    ):
        stacking.plan_stages(c, 100, 12, block=2)
    c.update(start_depth=4, num_new=4)
    assert [s.depth for s in stacking.plan_stages(c, 100, 12, block=2)] == [4, 8, 12]
    lineage = stacking.lineage_after(np.arange(4), "interleaved", 4, block=2)
    np.testing.assert_array_equal(lineage, [0, 1, 0, 1, 2, 3, 2, 3])


def test_layer_grad_scale_gradients_match_hand_computation():
    """reusing_module.py L1347-1353 by hand: term j's gradient reaching layer i is scaled by
    (1 - m_j) * prod_{l=i..j} m_l; the layers before the stack see prod_{l=0..j} m_l."""
    n = 3
    cfg = tiny_cfg(n)
    params = init_params(cfg, jax.random.key(0), WAV_LEN)
    wav, lengths = batch()
    shape = (n, 2, cfg.num_frames(WAV_LEN), cfg.hidden_size)
    targets = jax.random.normal(jax.random.key(5), shape)

    def terms(c):
        def f(p):
            hidden = encode(c, p, wav, lengths).hidden_states[1:]
            return jnp.sum(hidden * targets, axis=(1, 2, 3))  # one term per layer

        return f

    scaled = jax.jit(jax.grad(lambda p: terms(cfg.replace(layer_grad_scale=True))(p).sum()))(params)
    per_term = jax.jit(jax.jacrev(terms(cfg)))(params)  # leaves (n terms, ...)
    plain = [jax.tree_util.tree_map(lambda g, j=j: g[j], per_term) for j in range(n)]
    m = layer_grad_scales(n)
    np.testing.assert_allclose(m, [3 / 4, 2 / 3, 1 / 2])
    want_layers = []
    for i in range(n):
        w = [(1 - m[j]) * np.prod(m[i : j + 1]) if j >= i else 0.0 for j in range(n)]
        want_layers.append(
            jax.tree_util.tree_map(
                lambda *g, w=w, i=i: sum(wj * gj[i] for wj, gj in zip(w, g)),
                *[p["encoder"]["layers"] for p in plain],
            )
        )
    got = scaled["encoder"]["layers"]
    for i in range(n):
        jax.tree_util.tree_map(
            lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=2e-4, atol=2e-5),
            got,
            want_layers[i],
        )
    w0 = [(1 - m[j]) * np.prod(m[: j + 1]) for j in range(n)]
    want_conv = sum(w * p["encoder"]["pos_conv_embed"]["conv"]["kernel"] for w, p in zip(w0, plain))
    np.testing.assert_allclose(
        scaled["encoder"]["pos_conv_embed"]["conv"]["kernel"], want_conv, rtol=2e-4, atol=2e-5
    )
    # The forward is unchanged by the scale.
    a = jax.jit(terms(cfg))(params)
    b = jax.jit(terms(cfg.replace(layer_grad_scale=True)))(params)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return tmp_path_factory.mktemp("shared")


@pytest.mark.slow  # ~2 min on 2 cores: three stages compiled
def test_reuse_student_demo_run_grows_blocks(shared, tmp_path):
    """A demo run of an ARMHuBERT-shaped student: blocks grow 4 -> 8 -> 12 layers, loss falls."""
    from helpers import demo_config

    from stackdistill import checkpoint, train

    small_cnn = ((16, 10, 5), (32, 1, 1), *((32, 3, 2),) * 4, (32, 1, 1), (32, 2, 2), (32, 2, 2))
    c = demo_config(
        shared,
        total_steps=24,
        **{
            "student.reuse_pattern": (True, False) * 6,
            "student.layer_grad_scale": True,
            "student.conv_layers": small_cnn,
            "student.feat_proj": False,
            "stacking.start_depth": 4,
            "stacking.num_new": 4,
        },
    )
    summary = train.train_and_evaluate(c, str(tmp_path))
    assert summary["status"] == "completed" and summary["final_depth"] == 12
    losses = [loss for _, loss in summary["loss_history"]]
    assert np.all(np.isfinite(losses)) and np.mean(losses[-4:]) < np.mean(losses[:4])
    cfg, params, meta = checkpoint.load_student(tmp_path)
    # Blocks [b0, b1] -> [b0, b0, b1, b1] -> (every 2nd block copied) [b0, b0, b0, b1, b1, b1]
    assert meta["lineage"] == [0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3]
    layers = params["encoder"]["encoder"]["layers"]
    assert layers["reuse"]["attention"]["v_proj"]["kernel"].shape[:2] == (6, 1)
    assert "q_proj" not in layers["reuse"]["attention"]
    out = encode(cfg, params["encoder"], np.zeros((1, 8000), np.float32), np.array([8000]))
    assert out.hidden_states.shape[:2] == (13, 1)
