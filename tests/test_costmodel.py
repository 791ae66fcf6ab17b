"""The per-step cost estimate (stackdistill/costmodel.py) on programs whose cost is known by hand.

Compiled for compile-only v5e devices (libtpu, no TPU): the estimate must count a scanned
layer stack N times where XLA's cost_analysis counts it once.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stackdistill import chips, costmodel, flops, models
from stackdistill.models.config import EncoderConfig

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="needs libtpu (jax[tpu])"
)
B, D = 256, 512  # per device


@pytest.fixture(scope="module")
def mesh():
    return Mesh(np.array(chips.devices(chips.topology("v5e-4"))), ("data",))


def _args(mesh, *shapes_specs):
    return [
        jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=NamedSharding(mesh, PartitionSpec(*s)))
        for shape, s in shapes_specs
    ]


def test_matmul_chain_equals_hand_count_and_xla(mesh):
    def chain(x, w1, w2, w3):
        return x @ w1 @ w2 @ w3

    args = _args(mesh, ((4 * B, D), ("data",)), *[((D, D), ())] * 3)
    cost = costmodel.estimate(jax.jit(chain).lower(*args).compile())
    assert cost.loops == ()
    assert cost.flops == cost.xla_flops  # no loop: XLA's own count, unchanged
    assert cost.flops == pytest.approx(3 * 2 * B * D * D, rel=0.01)


@pytest.mark.parametrize("n", [1, 6])
def test_scan_of_n_layers_is_n_times_one_layer(mesh, n):
    def loss(x, ws):
        y, _ = jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, ws)
        return y.astype(jnp.float32).sum()

    args = _args(mesh, ((4 * B, D), ("data",)), ((n, D, D), ()))
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile()
    cost = costmodel.estimate(compiled)
    per_layer = 3 * 2 * B * D * D  # forward, and the two backward matmuls
    assert cost.flops == pytest.approx(n * per_layer, rel=0.03)
    if n > 1:  # what XLA alone reports: the body once
        assert cost.xla_flops == pytest.approx(per_layer, rel=0.03)
        assert [trip for _, trip in cost.loops] == [n, n]


def test_encoder_layers_counted_per_layer(mesh):
    """An encoder (CNN, positional conv, N scanned layers) against flops.py's analytic count."""
    base = EncoderConfig(
        hidden_size=128, num_heads=4, intermediate_size=512, conv_dim=(64,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, dtype="bfloat16",
    )  # fmt: skip
    samples, batch = 16_000, 4

    def cost_of(num_layers):
        cfg = base.replace(num_layers=num_layers)
        params = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
        rep = NamedSharding(mesh, PartitionSpec())
        params = jax.tree_util.tree_map(
            lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=rep), params
        )
        wav = jax.ShapeDtypeStruct(
            (4 * batch, samples), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec("data"))
        )
        lengths = jnp.full((4 * batch,), samples, jnp.int32)

        def forward(p, w):
            return models.encode(cfg, p, w, lengths).hidden_states

        return costmodel.estimate(jax.jit(forward).lower(params, wav).compile())

    one, six = cost_of(1), cost_of(6)
    per_layer = flops.transformer_flops(base.replace(num_layers=1), batch, base.num_frames(samples))
    per_layer -= flops.transformer_flops(
        base.replace(num_layers=0), batch, base.num_frames(samples)
    )
    # matmuls by hand; XLA also counts the elementwise work (softmax, GELU, norms): +15%
    assert six.flops - one.flops == pytest.approx(5 * per_layer, rel=0.15)
    assert six.flops > flops.encoder_flops(base.replace(num_layers=6), batch, samples)
    assert six.xla_flops < 0.7 * six.flops  # XLA alone counts the scan once


def test_top_charges_each_cost_to_its_source_op(mesh):
    """costmodel.top: a scanned layer's matmul is charged n x its flops to the op that made it."""
    n = 6

    def fwd(x, ws, v):
        with jax.named_scope("layers"):
            y, _ = jax.lax.scan(lambda h, w: (h @ w, None), x, ws)
        with jax.named_scope("head"):
            return jnp.tanh(y @ v)

    args = _args(mesh, ((4 * B, D), ("data",)), ((n, D, D), ()), ((D, D), ()))
    text = jax.jit(fwd).lower(*args).compile().as_text()
    rows = costmodel.top(text, n=50, depth=99)
    layers = [r for r in rows if "/layers/" in r["op"] and r["flops"] > 0]
    head = [r for r in rows if "/head/" in r["op"] and r["flops"] > 0]
    assert sum(r["flops"] for r in layers) == pytest.approx(n * 2 * B * D * D, rel=0.01)
    assert sum(r["flops"] for r in head) == pytest.approx(2 * B * D * D, rel=0.05)
    assert sum(r["bytes_share"] for r in rows) == pytest.approx(1.0)
    assert [r["bytes"] for r in rows] == sorted((r["bytes"] for r in rows), reverse=True)
