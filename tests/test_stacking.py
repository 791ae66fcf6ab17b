"""Tests for stackdistill.stacking: layer order, pytree growth, lineage, schedule."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stackdistill import stacking

# (method, depth, num_new, source layer of each grown layer, which grown layers are copies)
GROWTHS = [
    ("interleaved", 3, None, [0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 1]),
    ("interleaved", 6, 3, [0, 1, 1, 2, 3, 3, 4, 5, 5], [0, 0, 1, 0, 0, 1, 0, 0, 1]),
    ("interleaved", 4, 2, [0, 1, 1, 2, 3, 3], [0, 0, 1, 0, 0, 1]),
    ("top", 3, None, [0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 1, 1]),
    ("top", 6, 3, [0, 1, 2, 3, 4, 5, 3, 4, 5], [0, 0, 0, 0, 0, 0, 1, 1, 1]),
    ("top", 4, 1, [0, 1, 2, 3, 3], [0, 0, 0, 0, 1]),
    ("middle", 3, None, [0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 1, 1]),
    ("middle", 6, 3, [0, 1, 2, 3, 1, 2, 3, 4, 5], [0, 0, 0, 0, 1, 1, 1, 0, 0]),
    ("middle", 4, 2, [0, 1, 2, 1, 2, 3], [0, 0, 0, 1, 1, 0]),
]


def make_params(depth: int) -> dict:
    """A Linen-like pytree whose layer i holds the value i in every entry of every leaf."""
    layer_ids = np.arange(depth, dtype=np.float32)
    return {
        "encoder": {
            "feature_projection": {"kernel": np.full((4, 5), 7.0, np.float32)},
            "layers": {
                "attention": {"kernel": layer_ids[:, None, None] * np.ones((depth, 2, 3))},
                "layer_norm": {"scale": layer_ids[:, None] * np.ones((depth, 2))},
            },
            "final_layers_norm": {"scale": np.arange(3.0)},  # not under a `layers` key
        },
        "heads": {"kernel": np.full((2, 2), -1.0, np.float32)},
    }


def layer_ids_of(leaf) -> list[int]:
    """The constant value held by each layer slice of a leaf."""
    rows = np.asarray(leaf).reshape(len(leaf), -1)
    assert np.all(rows == rows[:, :1]), "a layer slice was mixed up"
    return rows[:, 0].astype(int).tolist()


@pytest.mark.parametrize("method, depth, num_new, expected, is_copy", GROWTHS)
def test_grow_layer_order(method, depth, num_new, expected, is_copy):
    assert stacking.grow_indices(depth, method, num_new).tolist() == expected
    assert stacking.new_layer_mask(depth, method, num_new).astype(int).tolist() == is_copy
    grown = stacking.grow(make_params(depth), method, num_new)
    for leaf in jax.tree_util.tree_leaves(grown["encoder"]["layers"]):
        assert layer_ids_of(leaf) == expected


@pytest.mark.parametrize("method", stacking.METHODS)
def test_grow_leaves_other_leaves_untouched(method):
    params = make_params(3)
    grown = stacking.grow(params, method)
    assert jax.tree_util.tree_structure(grown) == jax.tree_util.tree_structure(params)
    assert grown["heads"]["kernel"] is params["heads"]["kernel"]
    encoder, grown_encoder = params["encoder"], grown["encoder"]
    assert grown_encoder["feature_projection"]["kernel"] is encoder["feature_projection"]["kernel"]
    assert grown_encoder["final_layers_norm"]["scale"] is encoder["final_layers_norm"]["scale"]


def test_grow_under_jit_matches_eager():
    params = jax.tree_util.tree_map(jnp.asarray, make_params(3))
    jitted = jax.jit(lambda tree: stacking.grow(tree, "interleaved"))(params)
    eager = stacking.grow(params, "interleaved")
    jax.tree_util.tree_map(np.testing.assert_array_equal, jitted, eager)


def test_grow_refuses_bad_arguments():
    params = make_params(6)
    with pytest.raises(ValueError, match="num_new"):
        stacking.grow(params, "top", num_new=7)
    with pytest.raises(ValueError, match="not divisible"):
        stacking.grow(params, "interleaved", num_new=4)
    with pytest.raises(ValueError, match="method"):
        stacking.grow(params, "bottom")
    with pytest.raises(ValueError, match="num_new"):
        stacking.grow(params, "middle", num_new=0)
    params["encoder"]["layers"]["extra"] = np.zeros((5, 2))
    with pytest.raises(ValueError, match="disagree"):
        stacking.grow(params, "top")
    with pytest.raises(ValueError, match="no leaves"):
        stacking.grow({"heads": np.zeros(3)}, "top")


def make_optimizer() -> optax.GradientTransformation:
    """Adam on all params, weight decay masked: states nest in chain tuples and MaskedState."""
    decay_mask = {"encoder": {"layers": True, "head": False}}
    return optax.chain(
        optax.clip_by_global_norm(1e6),  # never clips here: keeps mu = 0.1 * grad exact
        optax.scale_by_adam(),
        optax.masked(optax.add_decayed_weights(1e-2), decay_mask),
        optax.masked(optax.scale_by_adam(), {"encoder": {"layers": True, "head": False}}),
        optax.scale(-1e-3),
    )


def one_step_state(depth: int):
    """Params and an optimizer state after one step whose gradient of layer i is i + 1."""
    params = {
        "encoder": {
            "layers": {"kernel": jnp.zeros((depth, 2, 3))},
            "head": {"kernel": jnp.zeros((3, 4))},
        }
    }
    grads = {
        "encoder": {
            "layers": {
                "kernel": jnp.arange(1.0, depth + 1)[:, None, None] * jnp.ones((depth, 2, 3))
            },
            "head": {"kernel": jnp.ones((3, 4))},
        }
    }
    tx = make_optimizer()
    _, opt_state = tx.update(grads, tx.init(params), params)
    return tx, params, opt_state


@pytest.mark.parametrize("method, depth, num_new, expected, is_copy", GROWTHS)
def test_grow_opt_state_mirrors_params(method, depth, num_new, expected, is_copy):
    tx, params, opt_state = one_step_state(depth)
    grown_state = stacking.grow_opt_state(opt_state, method, num_new)
    adam = grown_state[1]
    # After one step with b1 = 0.9, mu = 0.1 * grad; the grad of layer i is i + 1.
    mu_rows = np.asarray(adam.mu["encoder"]["layers"]["kernel"])[:, 0, 0]
    np.testing.assert_allclose(mu_rows, 0.1 * (np.asarray(expected) + 1), rtol=1e-6)
    assert adam.count == opt_state[1].count == 1
    assert adam.mu["encoder"]["head"]["kernel"] is opt_state[1].mu["encoder"]["head"]["kernel"]
    masked_mu = grown_state[3].inner_state.mu["encoder"]["layers"]["kernel"]
    assert masked_mu.shape == (len(expected), 2, 3)


@pytest.mark.parametrize("method", stacking.METHODS)
def test_grown_opt_state_usable_in_jitted_update(method):
    tx, params, opt_state = one_step_state(6)
    grown_params = stacking.grow(params, method, 3)
    grown_state = stacking.grow_opt_state(opt_state, method, 3)
    grads = jax.tree_util.tree_map(jnp.ones_like, grown_params)

    @jax.jit
    def step(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    new_params, new_state = step(grown_params, grown_state, grads)
    assert new_params["encoder"]["layers"]["kernel"].shape == (9, 2, 3)
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(new_params))
    assert int(new_state[1].count) == 2


@pytest.mark.parametrize("method, depth, num_new, expected, is_copy", GROWTHS)
def test_reset_new_zeroes_only_the_copies(method, depth, num_new, expected, is_copy):
    _, _, opt_state = one_step_state(depth)
    grown = stacking.grow_opt_state(opt_state, method, num_new, reset_new=True)
    for moment in (grown[1].mu, grown[1].nu):
        rows = np.asarray(moment["encoder"]["layers"]["kernel"])[:, 0, 0]
        assert [bool(r == 0) for r in rows] == [bool(c) for c in is_copy]
    assert grown[1].mu["encoder"]["head"]["kernel"] is opt_state[1].mu["encoder"]["head"]["kernel"]


def grow_lineage(start_depth: int, method: str, num_new, growths: int) -> np.ndarray:
    """Lineage after repeated growth, built by growing a stack that stores its own ids."""
    lineage = np.arange(start_depth)
    tree = {"layers": np.arange(start_depth)}
    for _ in range(growths):
        lineage = stacking.lineage_after(lineage, method, num_new)
        tree = stacking.grow(tree, method, num_new)
    np.testing.assert_array_equal(lineage, tree["layers"])
    return lineage


def test_interleaved_keeps_relative_depth_and_top_does_not():
    initial = [0, 1, 2]
    interleaved = grow_lineage(3, "interleaved", 3, growths=3)  # 3 -> 6 -> 9 -> 12
    assert interleaved.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    supervised = stacking.supervised_layers(interleaved, initial)
    assert [(s + 1) / 12 for s in supervised] == [4 / 12, 8 / 12, 12 / 12]
    assert stacking.supervised_layers(interleaved, initial, follow="first") == [0, 4, 8]

    top = grow_lineage(3, "top", 3, growths=3)
    supervised_top = stacking.supervised_layers(top, initial)
    assert [(s + 1) / 12 for s in supervised_top] != [4 / 12, 8 / 12, 12 / 12]
    assert supervised_top == [9, 10, 11]


@pytest.mark.parametrize(
    "start_depth, num_new, growths",
    [(3, None, 2), (2, 2, 3), (4, 4, 2), (3, 3, 1), (1, None, 3)],
)
def test_interleaved_relative_depth_property(start_depth, num_new, growths):
    lineage = grow_lineage(start_depth, "interleaved", num_new, growths)
    final_depth = len(lineage)
    supervised = stacking.supervised_layers(lineage, range(start_depth))
    for layer_id, position in enumerate(supervised):
        assert (position + 1) * start_depth == (layer_id + 1) * final_depth


@pytest.mark.parametrize("method", stacking.METHODS)
def test_first_descendant_is_never_a_copy(method):
    depth, lineage, is_original = 3, np.arange(3), np.ones(3, bool)
    for _ in range(3):
        indices = stacking.grow_indices(depth, method, 3)
        is_original = is_original[indices] & ~stacking.new_layer_mask(depth, method, 3)
        lineage, depth = lineage[indices], depth + 3
        first = stacking.supervised_layers(lineage, [0, 1, 2], follow="first")
        assert is_original[first].all()
        assert is_original.sum() == 3


def stacking_config(**overrides):
    cfg = stacking.default_config()
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def test_default_schedule_is_the_papers():
    stages = stacking.plan_stages(stacking.default_config(), total_steps=1000, final_depth=12)
    assert [s.depth for s in stages] == [3, 6, 9, 12]
    assert [s.num_new for s in stages] == [0, 3, 3, 3]
    assert [s.start_step for s in stages] == [0, 250, 500, 750]
    assert [s.num_steps for s in stages] == [250] * 4
    assert [s.index for s in stages] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "stage_lengths, expected",
    [
        ("proportional", [100, 200, 300, 400]),  # 1000 * d / 30
        ("equal_compute", [480, 240, 160, 120]),  # 1/3 : 1/6 : 1/9 : 1/12 = 12 : 6 : 4 : 3
    ],
)
def test_stage_lengths(stage_lengths, expected):
    cfg = stacking_config(stage_lengths=stage_lengths)
    stages = stacking.plan_stages(cfg, total_steps=1000, final_depth=12)
    assert [s.num_steps for s in stages] == expected


@pytest.mark.parametrize("stage_lengths", stacking.STAGE_LENGTHS)
def test_stages_tile_the_steps(stage_lengths):
    cfg = stacking_config(stage_lengths=stage_lengths)
    stages = stacking.plan_stages(cfg, total_steps=1001, final_depth=12)
    assert stages[0].start_step == 0 and stages[-1].end_step == 1001
    for before, after in zip(stages, stages[1:], strict=False):
        assert before.end_step == after.start_step


def test_other_schedules():
    doubling = stacking.plan_stages(stacking_config(num_new=None), 90, 12)
    assert [(s.depth, s.num_new, s.num_steps) for s in doubling] == [
        (3, 0, 30),
        (6, 3, 30),
        (12, 6, 30),
    ]
    per_growth = stacking.plan_stages(stacking_config(method="top", num_new=(1, 2, 6)), 40, 12)
    assert [s.depth for s in per_growth] == [3, 4, 6, 12]
    full = stacking.plan_stages(stacking_config(method="none"), 1000, 12)
    assert full == [stacking.Stage(index=0, depth=12, start_step=0, num_steps=1000, num_new=0)]


@pytest.mark.parametrize(
    "overrides, final_depth, field",
    [
        ({"num_new": 4}, 12, "config.stacking.num_new"),  # num_new > depth 3
        ({"num_new": 2}, 12, "config.stacking.num_new"),  # 3 % 2: no integer spacing
        ({"num_new": (3, 3)}, 12, "config.stacking.num_new"),  # reaches only 9
        ({"num_new": (3, 3, 3, 3)}, 12, "config.stacking.num_new"),  # one growth too many
        ({"num_new": None}, 9, "config.stacking.num_new"),  # 3 -> 6 -> 12 overshoots 9
        ({"method": "top", "num_new": 6}, 12, "config.stacking.num_new"),
        ({"start_depth": 0}, 12, "config.stacking.start_depth"),
        ({"start_depth": 13}, 12, "config.stacking.start_depth"),
        ({"method": "bottom"}, 12, "config.stacking.method"),
        ({"stage_lengths": "linear"}, 12, "config.stacking.stage_lengths"),
        ({"follow": "middle"}, 12, "config.stacking.follow"),
    ],
)
def test_invalid_schedules_name_the_field(overrides, final_depth, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        stacking.plan_stages(stacking_config(**overrides), 1000, final_depth)


def test_too_few_steps_refused():
    with pytest.raises(ValueError, match="total_steps"):
        stacking.plan_stages(stacking.default_config(), total_steps=3, final_depth=12)
