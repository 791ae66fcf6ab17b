"""pruning/gated.py, prune.py, objective.py: the gated forward, the prune step, the DPHuBERT loss.

References: pyf98/DPHuBERT's own code, through the fixture (tests/data/dphubert_tiny: their
gated model's weights and log_alphas, their pruned model's hidden states and sizes); models
zeroed by hand; their DistillLoss formula re-written in torch here.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stackdistill import convert, models
from stackdistill.pruning import (
    checkpoint,
    gated,
    hardconcrete,
    lagrangian,
    narrow,
    objective,
    params,
    prune,
)

DATA = pathlib.Path(__file__).parent / "data" / "dphubert_tiny"
META = json.loads((DATA / "meta.json").read_text())
MODELS = ("hubert", "wavlm", "hubert_ln")


def _outputs(model):
    return np.load(DATA / f"dp{model}_tiny_outputs.npz")


def _their_gated_model(model):
    """(unpruned cfg, our params of their gated model's weights, their log_alphas)."""
    conf = META[model]["unpruned_config"]
    cfg = checkpoint.encoder_config(conf, np.ones(1))
    state = dict(np.load(DATA / f"dp{model}_tiny_gated.npz"))
    p = convert.state_dict_to_params(cfg, checkpoint.to_hf_state_dict(cfg, conf, state))
    o = _outputs(model)
    units = (("head", "heads"), ("attlayer", "attlayer"), ("interm", "interm"))
    units += (("ffnlayer", "ffnlayer"),)
    log_alpha = {
        "conv": [jnp.asarray(o[f"log_alpha_conv{i}"]) for i in range(3)],
        **{u: jnp.stack([o[f"log_alpha_{n}{i}"] for i in range(3)]) for u, n in units},
    }
    return cfg, p, log_alpha


def _tiny(model):
    """A tiny unpruned model: their gated model's (random, non-trivial) weights, ungated."""
    cfg, p, _ = _their_gated_model(model)
    return cfg, p


def _batch():
    wav = 0.3 * jax.random.normal(jax.random.key(7), (2, 1200))
    return wav, jnp.array([1200, 900], jnp.int32)


def _max_err(a, b, mask):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))[mask].max())


def _random01(cfg, key, p_on=0.6):
    """0/1 gates over every unit, each unit on with probability p_on (at least one per conv)."""
    ks = jax.random.split(key, 5)
    conv = [
        (jax.random.uniform(k, (c,)) < p_on).at[0].set(True).astype(jnp.float32)
        for k, c in zip(jax.random.split(ks[0], len(cfg.conv_dim)), cfg.conv_dim)
    ]
    n = cfg.num_layers

    def bern(k, shape):
        return (jax.random.uniform(k, shape) < p_on).astype(jnp.float32)

    return {
        "conv": conv,
        "head": bern(ks[1], (n, cfg.num_heads)),
        "interm": bern(ks[2], (n, cfg.intermediate_size)),
        "attlayer": jnp.array([[1.0], [0.0], [1.0]]),
        "ffnlayer": jnp.array([[0.0], [1.0], [1.0]]),
    }


# ---- gated forward ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", ("hubert", "wavlm"))
def test_all_one_gates_are_the_ungated_encoder_exactly(model):
    cfg, p = _tiny(model)
    gates = hardconcrete.init_gates(jax.random.key(1), cfg.conv_dim, 3, 4, 64, hardconcrete.UNITS)
    ones = gated.ones_like_gates(gates)
    wav, lengths = _batch()
    ref = models.encode(cfg, p, wav, lengths)
    out = models.encode(
        gated.gated_config(cfg, ones), gated.apply_gates(cfg, p, ones), wav, lengths
    )
    for a, b in zip(ref, out):
        np.testing.assert_array_equal(a, b)


def _zeroed_by_hand(cfg, p, g):
    """The ungated model with each gated-off unit silenced at its source (not its consumer).

    Conv channel: its kernel column (and GroupNorm scale/bias) zero, so GELU gives 0; head:
    q, k, v zero (uniform attention over zero values); FFN unit: its input column and bias;
    a layer gate 0: the block's output weights and bias. Needs group-norm convs, no bias.
    """
    p = jax.tree_util.tree_map(np.array, p)
    fe = p["feature_extractor"]
    for i, gi in enumerate(g["conv"]):
        off = np.asarray(gi) == 0
        fe[f"conv_layers_{i}"]["conv"]["kernel"][:, :, off] = 0
        if "layer_norm" in fe[f"conv_layers_{i}"]:
            for leaf in fe[f"conv_layers_{i}"]["layer_norm"].values():
                leaf[off] = 0
    att = p["encoder"]["layers"]["attention"]
    ffn = p["encoder"]["layers"]["feed_forward"]
    h = cfg.hidden_size // cfg.num_heads
    for layer in range(cfg.num_layers):
        for head in np.flatnonzero(np.asarray(g["head"][layer]) == 0):
            for name in ("q_proj", "k_proj", "v_proj"):
                att[name]["kernel"][layer, :, head * h : (head + 1) * h] = 0
                att[name]["bias"][layer, head * h : (head + 1) * h] = 0
        off = np.asarray(g["interm"][layer]) == 0
        ffn["intermediate_dense"]["kernel"][layer][:, off] = 0
        ffn["intermediate_dense"]["bias"][layer][off] = 0
        for unit, block, dense in (
            ("attlayer", att, "out_proj"),
            ("ffnlayer", ffn, "output_dense"),
        ):
            if float(g[unit][layer, 0]) == 0:
                block[dense]["kernel"][layer] = 0
                block[dense]["bias"][layer] = 0
    return p


@pytest.mark.parametrize("model", ("hubert", "wavlm"))
def test_random_01_gates_equal_the_model_zeroed_by_hand(model):
    cfg, p = _tiny(model)
    g = _random01(cfg, jax.random.key(4))
    wav, lengths = _batch()
    out = models.encode(gated.gated_config(cfg, g), gated.apply_gates(cfg, p, g), wav, lengths)
    ref = models.encode(cfg, _zeroed_by_hand(cfg, p, g), wav, lengths)
    mask = np.asarray(ref.mask)
    for i in range(cfg.num_layers + 1):
        assert _max_err(out.hidden_states[i], ref.hidden_states[i], mask) < 1e-5, i
    # The gates do act: the same model ungated is far from it.
    plain = models.encode(cfg, p, wav, lengths)
    assert _max_err(plain.hidden_states[-1], ref.hidden_states[-1], mask) > 1e-2


def test_gate_refusals():
    cfg, p = checkpoint.encoder_config(META["hubert"]["unpruned_config"], np.ones(1)), {}
    with pytest.raises(ValueError, match="gate 'head' has shape"):
        gated.apply_gates(cfg, p, {"head": jnp.ones((3, 5))})
    with pytest.raises(ValueError, match="conv gates of sizes"):
        gated.apply_gates(cfg, p, {"conv": [jnp.ones(16)]})
    with pytest.raises(ValueError, match="are not among"):
        gated.apply_gates(cfg, p, {"heads": jnp.ones((3, 4))})
    with pytest.raises(ValueError, match="layers_per_block"):
        gated.apply_gates(cfg.replace(layers_per_block=3), p, {})


# ---- prune -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_prune_reproduces_their_pruned_model(model):
    """Our prune of their gated weights and log_alphas computes their prune()d model."""
    cfg, p, log_alpha = _their_gated_model(model)
    pcfg, pp = prune.prune(cfg, p, log_alpha)
    conv = META[model]["pruned_config"]["extractor_conv_layer_config"]
    assert pcfg.conv_dim == tuple(c[0] for c in conv) and pcfg.feature_scale
    o = _outputs(model)
    out = models.encode(pcfg, pp, o["wav"], o["lengths"])
    mask = np.asarray(out.mask)
    assert _max_err(out.features, o["features"], mask) < 1e-5
    for i in range(cfg.num_layers + 1):
        assert _max_err(out.hidden_states[i], o["hidden_states"][i], mask) < 1e-5, i
    # Sizes: the zero structure gives their pruned model's get_num_params(); the kept units
    # of the deterministic gates give it in the unpruned config too.
    units = params.units_of_padded(pcfg, pp)
    assert float(params.count(pcfg, **units)) == META[model]["pruned_get_num_params"]
    kept = prune.kept_units(cfg, hardconcrete.deterministic_gates(log_alpha))
    assert float(params.count(cfg, **kept)) == META[model]["pruned_get_num_params"]
    # Cut to the widest layer's FFN units: their checkpoint's padded width, same function.
    scfg, sp = prune.shrink_ffn(pcfg, pp)
    short = models.encode(scfg, sp, o["wav"], o["lengths"])
    assert _max_err(short.hidden_states[-1], out.hidden_states[-1], mask) < 1e-5
    pytest.importorskip("torch")
    assert scfg == checkpoint.read(DATA / f"dp{model}_tiny.pth")[0]


@pytest.mark.parametrize("model", MODELS)
def test_prune_zero_mode_preserves_the_deterministic_gate_forward(model):
    cfg, p, log_alpha = _their_gated_model(model)
    det = hardconcrete.deterministic_gates(log_alpha)
    o = _outputs(model)
    ref = models.encode(
        gated.gated_config(cfg, det), gated.apply_gates(cfg, p, det), o["wav"], o["lengths"]
    )
    pcfg, pp = prune.prune(cfg, p, log_alpha, conv="zero")
    assert pcfg.conv_dim == cfg.conv_dim
    out = models.encode(pcfg, pp, o["wav"], o["lengths"])
    mask = np.asarray(out.mask)
    for i in range(cfg.num_layers + 1):
        assert _max_err(out.hidden_states[i], ref.hidden_states[i], mask) < 1e-5, i
    # Their channel removal renormalises the projection's LayerNorm over the kept channels
    # only: not the gated function (the fixture's pruned outputs are theirs, see above).
    assert _max_err(ref.hidden_states[0], o["hidden_states"][0], mask) > 1e-3


@pytest.mark.parametrize("model", ("hubert", "hubert_ln"))
def test_count_of_pruned_widths_is_the_nonzero_params(model):
    """Every parameter of a kept unit is non-zero (fixture weights), every other one zero."""
    cfg, p, _ = _their_gated_model(model)
    rng = np.random.default_rng(0)
    log_alpha = hardconcrete.init_gates(
        jax.random.key(5), cfg.conv_dim, 3, 4, 64, units=hardconcrete.UNITS
    )
    log_alpha = jax.tree_util.tree_map(
        lambda x: jnp.asarray(rng.uniform(-3, 3, x.shape), jnp.float32), log_alpha
    )
    log_alpha["attlayer"] = jnp.array([[5.0], [-5.0], [5.0]])  # one block off by its layer gate
    pcfg, pp = prune.prune(cfg, p, log_alpha)
    nonzero = sum(int(np.count_nonzero(x)) for x in jax.tree_util.tree_leaves(pp))
    pos_weight_g = cfg.num_conv_pos_embeddings  # their weight-norm g, folded into our kernel
    n = float(params.count(pcfg, **params.units_of_padded(pcfg, pp)))
    assert nonzero + pos_weight_g == n
    det = hardconcrete.deterministic_gates(log_alpha)
    kept = prune.kept_units(cfg, det)
    assert float(params.count(cfg, **kept)) == n
    # The expected count at 0/1 gates (log_alpha -> +-inf on the kept / removed units).
    sharp = jax.tree_util.tree_map(lambda d: jnp.where(d != 0, 60.0, -60.0), det)
    expected = params.expected_num_params(cfg, sharp)
    assert kept["attention_on"].tolist() == [1.0, 0.0, 1.0]  # no block emptied by its units
    assert min(int((np.asarray(det[u]) != 0).sum(1).min()) for u in ("head", "interm")) > 0
    np.testing.assert_allclose(float(expected), n, rtol=1e-6)


def test_prune_refusals():
    cfg, p = checkpoint.encoder_config(META["hubert"]["unpruned_config"], np.ones(1)), {}
    la = hardconcrete.init_gates(jax.random.key(0), cfg.conv_dim, 3, 4, 64)
    with pytest.raises(ValueError, match="conv="):
        prune.prune(cfg, p, la, conv="drop")
    la["conv"][1] = jnp.full((12,), -20.0)
    with pytest.raises(ValueError, match="lost all its channels"):
        prune.prune(cfg, p, la)


# ---- the joint objective ---------------------------------------------------------------------


def _their_distill_loss(torch, inp, target, spec):
    """lightning.py L116-139 (DistillLoss.forward), re-written: inputs (batch, layer, T, D)."""
    mse = torch.nn.MSELoss()(inp, target)
    l1 = torch.nn.L1Loss()(inp, target)
    cos = torch.nn.CosineSimilarity(dim=-1)(inp, target)
    loss_cos = -cos.mean() if spec.cos_type == "raw" else -cos.sigmoid().log().mean()
    return spec.l2_weight * mse + spec.l1_weight * l1 + spec.cos_weight * loss_cos


@pytest.mark.parametrize("cos_type", objective.COS_TYPES)
def test_distill_loss_is_their_formula(cos_type):
    torch = pytest.importorskip("torch")
    spec = objective.DistillSpec(((0,), (1, 2)), l2_weight=0.3, l1_weight=1.0, cos_type=cos_type)
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(3, 2, 5, 6)).astype(np.float32)  # (K, B, T, D)
    target = (pred + rng.normal(size=pred.shape)).astype(np.float32)
    theirs = _their_distill_loss(
        torch, torch.tensor(pred).transpose(0, 1), torch.tensor(target).transpose(0, 1), spec
    )
    ours, _ = objective.distill_loss(spec, jnp.asarray(pred), jnp.asarray(target))
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)
    # With padding: ours is their formula on the valid frames only.
    mask = np.arange(5)[None, :] < np.array([[5], [3]])
    valid = lambda x: torch.tensor(np.concatenate([x[:, b, mask[b]] for b in range(2)], 1))[None]  # noqa: E731
    theirs = _their_distill_loss(torch, valid(pred), valid(target), spec)
    ours, _ = objective.distill_loss(spec, jnp.asarray(pred), jnp.asarray(target), mask)
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)


def test_heads_and_their_hidden_state_list():
    cfg, p = _tiny("hubert")
    wav, lengths = _batch()
    out = models.encode(cfg, p, wav, lengths)
    states = objective.dp_states(cfg, p, out)
    # Entry 0 is the projection output (zero on padding), which the layers' input is built from.
    mask = np.asarray(out.mask)
    assert float(jnp.abs(states[0][~mask]).max()) == 0.0
    x = states[0]
    x = x + models.encoder.PositionalConvEmbedding(cfg).apply(
        {"params": p["encoder"]["pos_conv_embed"]}, x
    )
    ln = p["encoder"]["layer_norm"]
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    x = (x - mu) / jnp.sqrt(var + cfg.layer_norm_eps) * ln["scale"] + ln["bias"]
    assert _max_err(x, out.hidden_states[0], mask) < 1e-5
    np.testing.assert_array_equal(states[1:], out.hidden_states[1:])
    spec = objective.DistillSpec(((0,), (1, 3)))
    heads = objective.init_heads(jax.random.key(0), spec, 32, 32)
    assert len(heads) == 2 and spec.head_index() == (0, 1, 1)
    np.testing.assert_array_equal(
        objective.predict(spec, heads, states), states[jnp.array([0, 1, 3])]
    )
    loss, m = objective.distill_loss(
        spec, states[jnp.array([0, 1, 3])], states[jnp.array([0, 1, 3])], out.mask
    )
    np.testing.assert_allclose([float(m["loss_l1"]), float(loss)], [0.0, -1.0], atol=1e-6)
    pred = objective.DistillSpec(((1, 3),), mode="predlayer")
    heads = objective.init_heads(jax.random.key(0), pred, 32, 48)
    y = objective.predict(pred, heads, states)  # both from the last layer, own heads
    h = heads[1]
    ref = jax.nn.gelu(states[-1] @ h["kernel"] + h["bias"], approximate=False)
    assert len(heads) == 2 and y.shape == (2, *states.shape[1:3], 48)
    np.testing.assert_allclose(y[1], ref, atol=1e-6)
    assert objective.DistillSpec.parse_layers("0.4,8,12").layer_groups == ((0,), (4, 8, 12))
    with pytest.raises(ValueError, match="cos_type"):
        objective.DistillSpec(cos_type="cos")


@pytest.mark.slow  # ~15 s of CPU (one jit of the whole gated step), ~35 s on 2 busy cores
def test_train_step_moves_sparsity_to_target():
    """Student = copy of the teacher; gates, heads, student by Adam, lambdas by ascent."""
    cfg, teacher = _tiny("hubert")
    spec = objective.DistillSpec(((0,), (1, 3)))
    log_alpha = hardconcrete.init_gates(
        jax.random.key(1), cfg.conv_dim, 3, 4, 64, units=("conv", "head", "interm")
    )
    heads = objective.init_heads(jax.random.key(2), spec, 32, 32)
    tx_main = optax.adamw(2e-4, weight_decay=0.0)
    reg_lr = 0.2
    tx_reg = lagrangian.optimizer(reg_lr)
    state = objective.init_state(teacher, heads, log_alpha, tx_main, tx_reg)
    step = jax.jit(objective.make_train_step(cfg, cfg, spec, tx_main, tx_reg, 0.5, 10))
    wav, lengths = _batch()
    s0 = float(params.expected_sparsity(cfg, log_alpha))
    history = []
    for i in range(40):
        state, m = step(state, teacher, wav, lengths, jax.random.key(100 + i))
        history.append(m)
        if i == 0:  # target 0 < s0 at step 0: ascent raises lambda1 by Adam's first step, reg_lr
            np.testing.assert_allclose(
                float(state.trainable["multipliers"]["lambda1"]), reg_lr, rtol=1e-4
            )
    s = float(params.expected_sparsity(cfg, state.trainable["gates"]))
    assert all(np.isfinite(float(m["loss_distill"])) for m in history)
    assert 0 < s0 < 0.1 and 0.25 < s < 0.5, (s0, s)  # on its way to 0.5 (oscillates first)
    assert float(history[-1]["sparsity_target"]) == 0.5
    # The student's weights and the heads moved too (teacher untouched: a separate tree).
    moved = jax.tree_util.tree_map(
        lambda a, b: float(jnp.abs(a - b).max()), state.trainable["heads"], heads
    )
    assert max(jax.tree_util.tree_leaves(moved)) > 0


def test_final_distillation_keeps_removed_blocks_removed():
    """Their pruned model has no removed block; ours holds it as zeros. Two final-distillation
    steps (teacher: the unpruned model) leave every removed block exactly zero with the mask
    of `prune.removed_blocks_mask`, while kept weights move; without it a removed block's
    output bias trains (the residual stream's gradient) and the block comes back."""
    cfg, teacher, log_alpha = _their_gated_model("hubert")
    pcfg, pp = prune.shrink_ffn(*prune.prune(cfg, teacher, log_alpha))
    units = params.units_of_padded(pcfg, pp)
    off = {"attention": units["attention_on"] == 0, "feed_forward": units["ffn_on"] == 0}
    assert off["attention"].any() and off["feed_forward"].any()  # the fixture removes both
    spec = objective.DistillSpec(((0,), (1, 3)))
    heads = objective.init_heads(jax.random.key(2), spec, 32, 32)
    tx = optax.adamw(1e-2, weight_decay=0.0)
    wav, lengths = _batch()

    def train(mask):
        state = objective.init_distill_state(pp, heads, tx)
        step = jax.jit(objective.make_distill_step(cfg, pcfg, spec, tx, 10.0, mask))
        for i in range(2):
            state, _ = step(state, teacher, wav, lengths, jax.random.key(i))
        return jax.tree_util.tree_map(np.asarray, state.trainable["student"]["encoder"])

    masked = train(prune.removed_blocks_mask(pcfg, pp))
    free = train(None)
    start = jax.tree_util.tree_map(np.asarray, pp["encoder"])
    for block, layers in off.items():
        for leaf in jax.tree_util.tree_leaves(masked["layers"][block]):
            assert not leaf[layers].any(), block  # every param of a removed block: zero
    after = params.units_of_padded(pcfg, {"encoder": masked})
    for k in units:
        np.testing.assert_array_equal(after[k], units[k])
    kept = ~off["feed_forward"]
    w = "intermediate_dense"
    ffn, ffn0 = masked["layers"]["feed_forward"][w], start["layers"]["feed_forward"][w]
    assert np.abs(ffn["kernel"][kept] - ffn0["kernel"][kept]).max() > 0  # kept weights train
    revived = free["layers"]["feed_forward"]["output_dense"]["bias"][off["feed_forward"]]
    assert np.abs(revived).max() > 0  # without the mask the removed block comes back


# ---- unscanned narrow layers -----------------------------------------------------------------


@pytest.mark.parametrize("model", ("hubert", "hubert_ln"))
def test_narrow_layers_compute_the_zero_padded_model(model):
    cfg, p, log_alpha = _their_gated_model(model)
    pcfg, pp = prune.prune(cfg, p, log_alpha)
    layers = narrow.narrow_layers(pcfg, pp)
    kept = prune.kept_units(cfg, hardconcrete.deterministic_gates(log_alpha))
    h = cfg.hidden_size // cfg.num_heads
    for i, layer in enumerate(layers):
        assert ("attention" in layer) == bool(kept["attention_on"][i])
        assert ("feed_forward" in layer) == bool(kept["ffn_on"][i])
        if "attention" in layer:
            assert layer["attention"]["q_proj"]["kernel"].shape == (32, kept["heads"][i] * h)
        if "feed_forward" in layer:
            assert layer["feed_forward"]["w1"].shape == (32, kept["ffn_units"][i])
    o = _outputs(model)
    states, mask = narrow.encode(pcfg, pp, layers, o["wav"], o["lengths"])
    mask = np.asarray(mask)
    for i in range(cfg.num_layers + 1):  # their pruned model's hidden states
        assert _max_err(states[i], o["hidden_states"][i], mask) < 1e-5, i
    with pytest.raises(ValueError, match="WavLM"):
        narrow.narrow_layers(cfg.replace(model_type="wavlm"), pp)
