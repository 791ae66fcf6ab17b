"""Pruning with stacking (config.prune.depth, stackdistill/pruning/pipeline.py): a student of
every r-th teacher layer is pruned, then grown back to the teacher's depth by interleaved
stacking; its Lagrangian constrains the size of the grown model.

References: the pruned model of pyf98/DPHuBERT's fixture (tests/data/dphubert_tiny), its
units read off its non-zero structure, and hand identities of the count."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, load_config
from test_pruning_gated import MODELS, _batch, _their_gated_model

from stackdistill.pruning import hardconcrete, objective, params, pipeline, prune

DPHUBERT = ROOT / "configs" / "dphubert.py"


def _layer_leaves(tree):
    flat = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat if "'layers'" in str(p)}


@pytest.mark.parametrize("model", MODELS)
def test_grown_pruned_model_is_what_the_count_with_copies_counts(model):
    """Their pruned model (3 heterogeneous layers) grown to 6: layer j becomes layers 2j and
    2j+1, each keeps its units, and `count(layer_copies=2)` of the 3-layer model is the count
    read off the grown model's own non-zero structure."""
    cfg, p, log_alpha = _their_gated_model(model)
    pcfg, pp = prune.shrink_ffn(*prune.prune(cfg, p, log_alpha))
    grown = pipeline.grow_back(pp, 2)
    gcfg = pcfg.replace(num_layers=2 * pcfg.num_layers)
    before, after = _layer_leaves(pp), _layer_leaves(grown)
    assert before.keys() == after.keys()
    for name, x in before.items():
        np.testing.assert_array_equal(after[name], np.repeat(x, 2, axis=0), err_msg=name)
    units = params.units_of_padded(pcfg, pp)
    g_units = params.units_of_padded(gcfg, grown)
    for k, v in units.items():
        np.testing.assert_array_equal(g_units[k], np.repeat(v, 2), err_msg=k)
    assert units["heads"].tolist() != [units["heads"][0]] * 3  # heterogeneous widths
    n_grown = float(params.count(gcfg, **g_units))
    assert float(params.count(pcfg, **units, layer_copies=2)) == n_grown
    assert n_grown > float(params.count(pcfg, **units))
    # r = 3: d -> 2d -> 3d, each layer's copies adjacent
    three = _layer_leaves(pipeline.grow_back(pp, 3))
    for name, x in before.items():
        np.testing.assert_array_equal(three[name], np.repeat(x, 3, axis=0), err_msg=name)


@pytest.mark.parametrize("model", ("hubert", "wavlm"))
def test_half_depth_expected_sparsity_is_the_grown_models(model):
    """Gates all on: the every-2nd-layer student grown back is the teacher's size, so its
    expected sparsity is the 6-layer teacher's with all gates on (0 for HuBERT; for WavLM
    the extras their formula leaves out); each copy adds the layers' count once."""
    cfg, _, _ = _their_gated_model(model)
    on = hardconcrete.init_gates(jax.random.key(0), cfg.conv_dim, 3, cfg.num_heads,
                                 cfg.intermediate_size, hardconcrete.UNITS)  # fmt: skip
    on = jax.tree_util.tree_map(lambda x: jnp.full_like(x, 20.0), on)  # L0 = 1
    t6 = cfg.replace(num_layers=6)
    on6 = {k: v if k == "conv" else jnp.concatenate([v, v]) for k, v in on.items()}
    grown = float(params.expected_sparsity(cfg, on, layer_copies=2))
    np.testing.assert_allclose(grown, float(params.expected_sparsity(t6, on6)), atol=1e-6)
    if model == "hubert":
        assert abs(grown) < 1e-6
    layer_part = float(params.count(cfg) - params.count(cfg.replace(num_layers=0)))
    np.testing.assert_allclose(
        float(params.expected_num_params(cfg, on, 2) - params.expected_num_params(cfg, on)),
        layer_part,
        rtol=1e-6,
    )


def test_joint_loss_of_a_shallow_student_reports_the_grown_sparsity():
    """The joint step's sparsity (and its Lagrangian) is the grown model's; the student's
    distill layers learn the teacher's layers r times deeper (target_spec)."""
    cfg, p, log_alpha = _their_gated_model("hubert")  # 3 layers: the student
    t_cfg = cfg.replace(num_layers=6)
    spec = objective.DistillSpec(((0,), (1, 3)))
    target = objective.DistillSpec(((0,), (2, 6)))
    wav, lengths = _batch()
    heads = objective.init_heads(jax.random.key(2), spec, cfg.hidden_size, cfg.hidden_size)
    trainable = {"student": p, "heads": heads, "gates": log_alpha}
    trainable["multipliers"] = {"lambda1": jnp.float32(0.3), "lambda2": jnp.float32(0.1)}
    targets = objective.teacher_targets(cfg, p, spec, wav, lengths)  # any fixed targets
    kw = dict(student_cfg=cfg, spec=spec, target_sparsity=0.5, sparsity_warmup=0)
    args = (trainable, targets, wav, lengths, jax.random.key(3), jnp.int32(5))
    _, m1 = objective.joint_loss(*args, **kw)
    _, m2 = objective.joint_loss(*args, **kw, layer_copies=2)
    s2 = float(params.expected_sparsity(cfg, log_alpha, 2))
    np.testing.assert_allclose(float(m2["sparsity_expected"]), s2, rtol=1e-6)
    assert s2 != pytest.approx(float(m1["sparsity_expected"]))
    np.testing.assert_allclose(float(m2["loss_distill"]), float(m1["loss_distill"]), rtol=1e-6)
    reg = 0.3 * (s2 - 0.5) + 0.1 * (s2 - 0.5) ** 2  # lightning.py L271-273 by hand
    np.testing.assert_allclose(float(m2["loss_reg"]), reg, rtol=1e-5)
    import optax

    tx = optax.adam(1e-3)
    objective.make_train_step(t_cfg, cfg, spec, tx, tx, 0.5, 0, target_spec=target)
    with pytest.raises(ValueError, match="outside the teacher's 0..6"):
        objective.make_train_step(
            t_cfg, cfg, spec, tx, tx, 0.5, 0, target_spec=objective.DistillSpec(((0,), (2, 7)))
        )
    with pytest.raises(ValueError, match="outside the student's 0..3"):
        objective.make_train_step(t_cfg, cfg, target, tx, tx, 0.5, 0)


def test_depth_and_layers_that_do_not_divide_are_refused_naming_the_fields():
    c = load_config(DPHUBERT)
    assert pipeline.layer_copies(c, 12) == 1  # run.sh: the whole teacher
    c.prune.depth = 6
    assert pipeline.layer_copies(c, 12) == 2
    assert pipeline.student_spec(c, 2).layer_groups == ((0,), (2, 4, 6))
    c.prune.depth = 5
    with pytest.raises(ValueError, match=r"config.prune.depth=5: must divide the teacher's 12"):
        pipeline.layer_copies(c, 12)
    c.prune.depth = 4  # every 3rd layer: "0.4,8,12" has 4 and 8
    with pytest.raises(ValueError, match=r"config.dp.layers='0.4,8,12'.*multiple of 3"):
        pipeline.student_spec(c, pipeline.layer_copies(c, 12))
    c.prune.depth = -1
    with pytest.raises(ValueError, match="config.prune.depth=-1"):
        pipeline.validate(c)
    tree = {"encoder": {"layers": {"w": np.arange(12)}, "norm": np.ones(3)}}
    picked = pipeline.every_rth_layer(tree, 4)  # the top of each block of 4: layers 4, 8, 12
    assert picked["encoder"]["layers"]["w"].tolist() == [3, 7, 11]
    assert picked["encoder"]["norm"].tolist() == [1, 1, 1]


@pytest.mark.slow  # the demo-size pipeline in process (two compiles): ~70 s of CPU
def test_pipeline_at_half_depth_grows_the_pruned_student_back(tmp_path):
    """configs/dphubert.py:runlocal with prune.depth=6 (its teacher has 12): the pruning
    stage trains 6 layers, pruned/ holds 12 (each pruned layer twice, adjacent), the count
    recorded is the grown model's, and the final stage trains it at depth 12."""
    from stackdistill.pruning import store

    c = load_config(DPHUBERT, "runlocal")
    c.prune.depth = 6
    c.prune.update(steps=8, warmup=2, sparsity_warmup=4)
    c.final.update(steps=4, warmup=1)
    c.checkpoint_every = 8
    summary = pipeline.run(c, str(tmp_path))
    assert summary["status"] == "completed" and summary["depth"] == {"pruned": 6, "final": 12}
    cfg, tree = store.load_model(tmp_path / "pruned")
    assert cfg.num_layers == 12
    for name, x in _layer_leaves(tree["student"]).items():
        np.testing.assert_array_equal(x[0::2], x[1::2], err_msg=name)
    kept = params.units_of_padded(cfg, tree["student"])
    assert float(params.count(cfg, **kept)) == pytest.approx(summary["params"]["params_after"])
    from stackdistill import teacher

    t_cfg, _ = teacher.load(teacher.prepare(c.teacher, str(tmp_path)))
    before = params.count(t_cfg.replace(num_layers=6))  # the student it pruned: 6 layers
    assert summary["params"]["params_before"] == int(round(float(before)))
    assert summary["params"]["teacher_num_params"] == params.teacher_num_params(t_cfg)
    fcfg, final = store.load_model(tmp_path / "final")
    assert fcfg.num_layers == 12
    pairs = zip(*(jax.tree_util.tree_leaves(t["student"]) for t in (final, tree)))
    assert max(float(np.abs(a - b).max()) for a, b in pairs) > 0  # the final stage trained
    # their format holds the grown model (one width per layer); the card says how it was made
    from stackdistill import export
    from stackdistill.pruning import checkpoint

    c.export.format = "dphubert"
    out = export.run(c, str(tmp_path))
    assert "grown to 12 by interleaved stacking" in (out / "README.md").read_text()
    assert checkpoint.read(out / "pruned_hubert_base.pth")[0] == fcfg
    # what a person watches: TensorBoard events per stage, the numbers of metrics.jsonl
    for stage in ("prune", "final"):
        logged = {
            (r["step"], k): v
            for r in map(json.loads, (tmp_path / stage / "metrics.jsonl").read_text().splitlines())
            for k, v in r.items()
            if k != "step"
        }
        events = _scalars(next((tmp_path / stage / "tensorboard").iterdir()))
        assert events.keys() == logged.keys()
        for key, v in events.items():
            assert v == pytest.approx(logged[key], rel=1e-6, abs=1e-7), (stage, key)


def _scalars(path):
    """{(step, tag): value} of a TensorBoard event file (TFRecord: length, crc, data, crc)."""
    import struct

    from tensorboardX.proto import event_pb2

    data, i, out = path.read_bytes(), 0, {}
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
        for value in event.summary.value:
            out[(event.step, value.tag)] = value.simple_value
        i += 12 + n + 4
    return out
