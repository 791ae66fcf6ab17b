"""pruning/: hard concrete gates, expected params, Lagrangian, and DPHuBERT's checkpoint.

References: hand computations (the hard concrete closed forms), and the fixture made with
pyf98/DPHuBERT's own code (tests/data/dphubert_tiny/README.md): their gated model's
`get_num_params()`, their pruned configs and checkpoints, their hidden states.
"""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stackdistill import models, teacher
from stackdistill.models.config import EncoderConfig
from stackdistill.pruning import checkpoint, hardconcrete, lagrangian, params

DATA = pathlib.Path(__file__).parent / "data" / "dphubert_tiny"
META = json.loads((DATA / "meta.json").read_text())
MODELS = ("hubert", "wavlm", "hubert_ln")  # hubert_ln: LayerNorm extractor, conv bias, pre-LN
BETA, L, R = 2 / 3, -0.1, 1.1


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("STACKDISTILL_CACHE", str(tmp_path / "cache"))


def _outputs(model):
    return np.load(DATA / f"dp{model}_tiny_outputs.npz")


def _unpruned_cfg(model) -> EncoderConfig:
    return checkpoint.encoder_config(META[model]["unpruned_config"], np.ones(1))


def _their_gates(model):
    """The fixture's log_alphas as our gate dict (layer gates stacked on a leading axis)."""
    o = _outputs(model)
    layers = range(3)
    return {
        "conv": [jnp.asarray(o[f"log_alpha_conv{i}"]) for i in range(3)],
        **{
            unit: jnp.stack([o[f"log_alpha_{name}{i}"] for i in layers])
            for unit, name in (
                ("head", "heads"),
                ("attlayer", "attlayer"),
                ("interm", "interm"),
                ("ffnlayer", "ffnlayer"),
            )
        },
    }


# ---- hard concrete -------------------------------------------------------------------------


def test_prob_nonzero_and_sampler_match_the_closed_forms():
    # s = sigmoid((logit u + a) / beta) (r - l) + l > 0  <=>  u > sigmoid(beta log(-l/r) - a),
    # so P(z != 0) = sigmoid(a - beta log(-l/r)); likewise
    # P(z = 1) = sigmoid(a - beta log((1-l)/(r-1))).
    log_alpha = jnp.array([-3.0, -1.0, 0.0, 0.7, 2.5])
    p_nonzero = [1 / (1 + math.exp(-(a - BETA * math.log(-L / R)))) for a in log_alpha.tolist()]
    p_one = [
        1 / (1 + math.exp(-(a - BETA * math.log((1 - L) / (R - 1))))) for a in log_alpha.tolist()
    ]
    np.testing.assert_allclose(hardconcrete.prob_nonzero(log_alpha), p_nonzero, rtol=1e-6)
    np.testing.assert_allclose(hardconcrete.l0_norm(log_alpha), sum(p_nonzero), rtol=1e-6)

    n = 200_000
    keys = jax.random.split(jax.random.key(0), n)
    z = jax.vmap(hardconcrete.sample, in_axes=(0, None))(keys, log_alpha)
    assert float(z.min()) == 0.0 and float(z.max()) == 1.0
    tol = 4 * np.sqrt(0.25 / n)  # 4 sigma of a Bernoulli frequency
    np.testing.assert_allclose((z != 0).mean(0), p_nonzero, atol=tol)
    np.testing.assert_allclose((z == 1).mean(0), p_one, atol=tol)
    # The expected L0 of a sampled mask is its mean count of non-zeros.
    assert abs(float((z != 0).sum(1).mean()) - sum(p_nonzero)) < 5 * np.sqrt(1.25 / n)


def test_init_follows_their_init_mean():
    gates = hardconcrete.init_gates(jax.random.key(0), (8, 8), 2, 4, 16, units=hardconcrete.UNITS)
    mean_interm = math.log(1 - 0.5) - math.log(0.5)
    mean_head = math.log(0.99) - math.log(0.01)
    assert abs(float(gates["interm"].mean()) - mean_interm) < 0.01
    assert abs(float(gates["head"].mean()) - mean_head) < 0.01
    assert gates["attlayer"].shape == (2, 1) and [c.shape for c in gates["conv"]] == [(8,), (8,)]
    with pytest.raises(ValueError, match="pruning units"):
        hardconcrete.init_gates(jax.random.key(0), (8,), 1, 2, 4, units=("heads",))


def test_deterministic_gate_by_hand():
    log_alpha = [3.0, -2.0, 0.5, 1.0, -5.0, -0.4]
    bias = -BETA * math.log(-L / R)
    l0 = sum(1 / (1 + math.exp(-(a + bias))) for a in log_alpha)
    num_zeros = round(len(log_alpha) - l0)
    soft = [1 / (1 + math.exp(-a / BETA * 0.8)) for a in log_alpha]
    off = sorted(range(len(soft)), key=soft.__getitem__)[:num_zeros]
    expected = [0.0 if i in off else s for i, s in enumerate(soft)]
    assert num_zeros == 2
    np.testing.assert_allclose(
        hardconcrete.deterministic(jnp.array(log_alpha)), expected, rtol=1e-6
    )


@pytest.mark.parametrize("model", MODELS)
def test_deterministic_gates_reproduce_their_pruning(model):
    """Our eval gates on their log_alphas keep exactly what their prune() kept."""
    cfg = META[model]["pruned_config"]
    gates = hardconcrete.deterministic_gates(_their_gates(model))
    kept = [int((g != 0).sum()) for g in gates["conv"]]
    assert kept == [c[0] for c in cfg["extractor_conv_layer_config"]]
    assert [bool(g[0]) for g in gates["attlayer"]] == cfg["encoder_use_attention"]
    assert [bool(g[0]) for g in gates["ffnlayer"]] == cfg["encoder_use_feed_forward"]
    assert [int((g != 0).sum()) for g in gates["interm"]] == cfg["encoder_ff_interm_features"]
    heads = [np.flatnonzero(g).tolist() for g in gates["head"]]
    if model == "wavlm":
        for i, on in enumerate(cfg["encoder_use_attention"]):
            if on:
                assert heads[i] == cfg["encoder_remaining_heads"][i]
    else:
        assert [len(h) for h in heads] == cfg["encoder_num_heads"]


def test_deterministic_soft_values_are_their_dummy_weight():
    """Their prune() stores the last conv's kept soft-mask values in dummy_weight."""
    torch = pytest.importorskip("torch")
    state = torch.load(DATA / "dphubert_tiny.pth", weights_only=True)["state_dict"]
    gate = hardconcrete.deterministic(jnp.asarray(_outputs("hubert")["log_alpha_conv2"]))
    np.testing.assert_allclose(
        np.asarray(gate)[np.asarray(gate) != 0], state["feature_extractor.dummy_weight"], rtol=1e-6
    )


# ---- expected parameter count ----------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_expected_params_equal_their_get_num_params(model):
    cfg = _unpruned_cfg(model)
    assert params.teacher_num_params(cfg) == META[model]["teacher_num_params"]
    gates = _their_gates(model)
    expected = params.expected_num_params(cfg, gates)
    np.testing.assert_allclose(float(expected), META[model]["gated_expected_num_params"], rtol=1e-6)
    grads = jax.grad(lambda g: params.expected_num_params(cfg, g))(gates)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(grads))
    assert float(jnp.abs(grads["interm"]).sum()) > 0 and float(jnp.abs(grads["conv"][1]).sum()) > 0


@pytest.mark.parametrize("model", MODELS)
def test_count_at_0_1_gates_equals_the_pruned_model(model):
    """Unit counts read off our zero-padded model's non-zero structure give their real size."""
    cfg, p = teacher.load(str(DATA / f"dp{model}_tiny.pth"))
    units = params.units_of_padded(cfg, p)
    pruned = META[model]["pruned_config"]
    assert units["attention_on"].tolist() == pruned["encoder_use_attention"]
    assert units["ffn_on"].tolist() == pruned["encoder_use_feed_forward"]
    n = params.count(cfg, **units)
    assert float(n) == META[model]["pruned_get_num_params"]
    if model != "wavlm":  # their formula is the real count (WavLM's omits the bias tensors)
        assert float(n) == META[model]["pruned_numel"]


@pytest.mark.parametrize("model", MODELS)
def test_count_of_their_pruned_widths_in_the_unpruned_config(model):
    """0/1 gates on the unpruned model: their pruned config's widths give its real size."""
    c = META[model]["pruned_config"]
    heads = c.get("encoder_num_heads") or [len(h) for h in c["encoder_remaining_heads"]]
    n = params.count(
        _unpruned_cfg(model),
        conv_channels=[w[0] for w in c["extractor_conv_layer_config"]],
        heads=heads,
        attention_on=c["encoder_use_attention"],
        ffn_units=c["encoder_ff_interm_features"],
        ffn_on=c["encoder_use_feed_forward"],
    )
    assert float(n) == META[model]["pruned_get_num_params"]


# ---- Lagrangian ------------------------------------------------------------------------------


def test_target_sparsity_warmup():
    ts = [float(lagrangian.target_sparsity(s, 0.75, 100)) for s in (0, 50, 100, 400)]
    np.testing.assert_allclose(ts, [0.0, 0.375, 0.75, 0.75])


def test_lagrangian_moves_expected_sparsity_to_target():
    cfg = _unpruned_cfg("hubert")
    gates = hardconcrete.init_gates(
        jax.random.key(0), cfg.conv_dim, cfg.num_layers, cfg.num_heads, cfg.intermediate_size
    )
    state = {"gates": gates, "multipliers": lagrangian.init_multipliers()}
    tx = lagrangian.optimizer(0.05)
    opt = tx.init(state)
    target, warmup = 0.5, 100

    def loss(p, step):
        s = params.expected_sparsity(cfg, p["gates"])
        return lagrangian.penalty(
            s, lagrangian.target_sparsity(step, target, warmup), p["multipliers"]
        )

    @jax.jit
    def step(p, opt, i):
        g = jax.grad(loss)(p, i)
        updates, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, updates), opt

    s0 = float(params.expected_sparsity(cfg, gates))
    for i in range(400):
        state, opt = step(state, opt, i)
        if i == 0:  # t(0) = 0 < s0: ascent raises lambda1 by Adam's first step, exactly lr
            lambda1_first = float(state["multipliers"]["lambda1"])
    s = float(params.expected_sparsity(cfg, state["gates"]))
    assert 0 < s0 < 0.2
    np.testing.assert_allclose(lambda1_first, 0.05, rtol=1e-4)
    assert abs(s - target) < 0.02, (s0, s)


# ---- their checkpoint ------------------------------------------------------------------------


def _max_err(ours, ref, mask):
    return float(np.abs(np.asarray(ours, np.float64) - ref)[np.asarray(mask)].max())


@pytest.mark.parametrize("model", MODELS)
def test_teacher_load_reads_their_checkpoint_and_matches_their_forward(model):
    pytest.importorskip("torch")
    cfg, p = teacher.load(str(DATA / f"dp{model}_tiny.pth"))
    assert cfg.model_type == model.split("_")[0] and cfg.feature_scale and cfg.num_heads == 4
    ln = model == "hubert_ln"
    assert (cfg.feat_extract_norm == "layer", cfg.do_stable_layer_norm, cfg.conv_bias) == (ln,) * 3
    conv = META[model]["pruned_config"]["extractor_conv_layer_config"]
    assert cfg.conv_dim == tuple(c[0] for c in conv)
    o = _outputs(model)
    out = models.encode(cfg, p, o["wav"], o["lengths"])
    np.testing.assert_array_equal(np.asarray(out.mask).sum(1), o["frame_lengths"])
    assert _max_err(out.features, o["features"], out.mask) < 1e-4
    assert out.hidden_states.shape == o["hidden_states"].shape
    for i in range(cfg.num_layers + 1):
        assert _max_err(out.hidden_states[i], o["hidden_states"][i], out.mask) < 1e-4, i
    cached_cfg, cached = teacher.load(str(DATA / f"dp{model}_tiny.pth"))  # from the cache
    assert cached_cfg == cfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, cached, p)


def test_wavlm_heads_must_go_back_to_their_slots(monkeypatch):
    """The fixture sees head placement: packing WavLM's kept heads first breaks parity."""
    pytest.importorskip("torch")
    monkeypatch.setattr(
        checkpoint,
        "_head_slots",
        lambda config, i, n: list(range(len(config["encoder_remaining_heads"][i]))),
    )
    cfg, p = checkpoint.read(DATA / "dpwavlm_tiny.pth")
    o = _outputs("wavlm")
    out = models.encode(cfg, p, o["wav"], o["lengths"])
    assert _max_err(out.hidden_states[-1], o["hidden_states"][-1], out.mask) > 1e-2


def test_refusals(tmp_path):
    torch = pytest.importorskip("torch")
    ckpt = torch.load(DATA / "dphubert_tiny.pth", weights_only=True)
    gated = dict(ckpt, config={**ckpt["config"], "encoder_prune_attention_heads": True})
    torch.save(gated, tmp_path / "gated.pth")
    with pytest.raises(ValueError, match="gated.pth: .*prune.py"):
        teacher.load(str(tmp_path / "gated.pth"))
    norm = dict(ckpt, config={**ckpt["config"], "normalize_waveform": True})
    torch.save(norm, tmp_path / "norm.pth")
    with pytest.raises(ValueError, match="normalize_waveform"):
        teacher.load(str(tmp_path / "norm.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="junk.pth"):
        teacher.load(str(tmp_path / "junk.pth"))
    cfg, _ = checkpoint.read(DATA / "dphubert_tiny.pth")
    with pytest.raises(ValueError, match="feature_scale"):
        cfg.to_hf()


def test_superb_upstream_spec_reads_their_checkpoint():
    pytest.importorskip("torch")
    import ml_collections

    from stackdistill.superb import upstream

    path = DATA / "dphubert_tiny.pth"
    assert upstream.parse_spec(f"dp:{path}", ".") == ("dp-dphubert_tiny", "dp", str(path), None)
    up = upstream.load(f"dp:{path}", ml_collections.ConfigDict({"dtype": "float32"}), ".")
    assert (up.kind, up.num_layers, up.cfg.feature_scale) == ("dp", 3, True)
    with pytest.raises(FileNotFoundError, match="not a file"):
        upstream.load("dp:/nonexistent.pth", ml_collections.ConfigDict(), ".")
