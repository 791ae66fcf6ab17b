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
    assert sum(r["hbm_share"] for r in rows) == pytest.approx(1.0)
    assert sum(r["hbm_bytes"] for r in rows) == pytest.approx(costmodel.hbm_bytes(text))
    assert [r["hbm_bytes"] for r in rows] == sorted((r["hbm_bytes"] for r in rows), reverse=True)


# A while loop (3 trips) over a stack of 4 layers kept in HBM, written as the TPU compiler
# writes them: an async slice of one layer into VMEM (`S(1)`), a multi-output fusion that
# updates two stacked buffers in place (one in HBM, one in VMEM), an async copy into VMEM.
_TYPES = {  # the HLO below with its long types spelt out: `$S` a stack in HBM, `$SV` in VMEM
    "$W": "(s32[]{:T(128)}, $S, $SV, $RV)",
    "$w": "(s32[], bf16[4,256,128], bf16[4,256,128], bf16[256,128])",
    "$pair": "(bf16[4,256,128], bf16[4,256,128])",
    "$SV": "bf16[4,256,128]{2,1,0:T(8,128)(2,1)S(1)}",
    "$S": "bf16[4,256,128]{2,1,0:T(8,128)(2,1)}",
    "$LV": "bf16[1,256,128]{2,1,0:T(8,128)(2,1)S(1)}",
    "$L1": "bf16[1,256,128]{2,1,0:T(8,128)(2,1)}",
    "$RV": "bf16[256,128]{1,0:T(8,128)(2,1)S(1)}",
    "$R": "bf16[256,128]{1,0:T(8,128)(2,1)}",
    "$I": "s32[]{:T(128)}",
}


def _spelt(text: str) -> str:
    for key, value in _TYPES.items():  # $W before the types it is made of; $SV before $S
        text = text.replace(key, value)
    return text


_HLO = _spelt("""HloModule m, entry_computation_layout={()->()}

%slice_comp (p0: bf16[4,256,128]) -> bf16[1,256,128] {
  %p0 = $S parameter(0)
  ROOT %s = $LV slice(%p0), slice={[0:1], [0:256], [0:128]}
}

%dus_comp (a: bf16[4,256,128], b: bf16[4,256,128], u: bf16[256,128], i: s32[]) -> $pair {
  %a = $S parameter(0)
  %b = $SV parameter(1)
  %u = $RV parameter(2)
  %i = $I parameter(3)
  %z = $I constant(0)
  %t = $L1 bitcast(%u)
  %d1 = $S dynamic-update-slice(%a, %t, %i, %z, %z)
  %d2 = $SV dynamic-update-slice(%b, %t, %i, %z, %z)
  ROOT %r = ($S, $SV) tuple(%d1, %d2)
}

%body (w: $w) -> $w {
  %w = $W parameter(0)
  %n = $I get-tuple-element(%w), index=0
  %a = $S get-tuple-element(%w), index=1
  %b = $SV get-tuple-element(%w), index=2
  %u = $RV get-tuple-element(%w), index=3
  %slice-start = (($S), $LV, s32[]{:S(2)}) async-start(%a), calls=%slice_comp
  %slice-done = $LV async-done(%slice-start)
  %f = ($S, $SV) fusion(%a, %b, %u, %n), kind=kLoop, calls=%dus_comp
  %a2 = $S get-tuple-element(%f), index=0
  %b2 = $SV get-tuple-element(%f), index=1
  %one = $I constant(1)
  %n2 = $I add(%n, %one)
  ROOT %o = $W tuple(%n2, %a2, %b2, %u)
}

%cond (c: $w) -> pred[] {
  %c = $W parameter(0)
  %k = $I get-tuple-element(%c), index=0
  %lim = $I constant(3)
  ROOT %lt = pred[]{:T(512)} compare(%k, %lim), direction=LT
}

ENTRY %main (x: bf16[256,128], a: bf16[4,256,128], b: bf16[4,256,128]) -> bf16[4,256,128] {
  %x = $R parameter(0)
  %a = $S parameter(1)
  %b = $SV parameter(2)
  %copy-start = ($RV, $R, u32[]{:S(2)}) copy-start(%x)
  %copy-done = $RV copy-done(%copy-start)
  %zero = $I constant(0)
  %init = $W tuple(%zero, %a, %b, %copy-done)
  %loop = $W while(%init), condition=%cond, body=%body
  ROOT %out = $S get-tuple-element(%loop), index=1
}
""")


# The same module with the async slice as XLA prints it short (compiled.as_text() does)
_HLO_SHORT = _HLO.replace(
    "async-start(%a), calls=%slice_comp", "slice-start(%a), slice={[0:1], [0:256], [0:128]}"
).replace("async-done(%slice-start)", "slice-done(%slice-start)")


@pytest.mark.parametrize("text", [_HLO, _HLO_SHORT], ids=["async-start", "slice-start"])
def test_hbm_bytes_by_memory_space_by_hand(text):
    """HBM traffic by hand: the copy into VMEM reads x once (64 KiB); each of the 3 trips
    slices one layer out of HBM (64 KiB, into VMEM) and writes one layer in place into the
    HBM stack (64 KiB; the VMEM stack's update and the VMEM operands cost no HBM bytes), and
    the loop counter's scalars are in HBM (the add's 3 and the fusion's index: 16 bytes)."""
    layer = 256 * 128 * 2
    assert text.count("slice-start(") == (text is _HLO_SHORT)
    assert costmodel.hbm_bytes(text) == layer + 3 * (layer + layer + 16)
    # XLA's rules count every buffer, VMEM included, as HBM: more than the HBM traffic
    assert costmodel.hlo_cost(text)[3] > 2 * costmodel.hbm_bytes(text)


def test_hbm_bytes_of_compiled_programs_by_hand(mesh):
    """Programs compiled for v5e whose HBM traffic is known by hand: a matmul chain reads its
    input and three weights once and writes its output (the intermediates stay in VMEM); an
    elementwise op on an array too large for VMEM reads and writes it once; a forward scan
    of n layers keeps its activations in VMEM and reads each layer's weights once."""
    x, w = 4 * B * D * 2 // 4, D * D * 2  # per device, bf16
    chain = jax.jit(lambda x, a, b, c: x @ a @ b @ c)
    args = _args(mesh, ((4 * B, D), ("data",)), *[((D, D), ())] * 3)
    assert costmodel.estimate(chain.lower(*args).compile()).hbm_bytes == x + 3 * w + x

    big = _args(mesh, ((4 * 4096, 4096), ("data",)))
    cost = costmodel.estimate(jax.jit(jnp.tanh).lower(*big).compile())
    assert cost.hbm_bytes == 2 * 4096 * 4096 * 2 == cost.bytes_accessed

    def layers(h, ws):
        y, _ = jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), h, ws)
        return y.astype(jnp.float32).sum()

    for n in (1, 6):
        args = _args(mesh, ((4 * 8192, D), ("data",)), ((n, D, D), ()))
        cost = costmodel.estimate(jax.jit(layers).lower(*args).compile())
        assert cost.hbm_bytes == pytest.approx(8192 * D * 2 + n * w, abs=4096)
        assert cost.bytes_accessed > 3 * cost.hbm_bytes  # XLA's count: VMEM as if HBM


def test_stacked_scan_outputs_are_written_once(mesh):
    """A scan that stacks every layer's output (as the encoder's hidden states and the saved
    residuals are): the compiler allocates the (n, ...) stack without writing it (an
    AllocateBuffer custom call where the program says zeros) and each trip writes one layer
    in place, so the HBM traffic is h + n w read and n h written, by hand."""
    h, w = 8192 * D * 2, D * D * 2  # per device, bf16

    def layers(h, ws):
        _, ys = jax.lax.scan(lambda h, w: (jnp.tanh(h @ w),) * 2, h, ws)
        return ys

    for n in (1, 6):
        args = _args(mesh, ((4 * 8192, D), ("data",)), ((n, D, D), ()))
        compiled = jax.jit(layers).lower(*args).compile()
        assert ('custom_call_target="AllocateBuffer"' in compiled.as_text()) == (n > 1)
        cost = costmodel.estimate(compiled)
        assert cost.hbm_bytes == pytest.approx(h + n * w + n * h, abs=4096)
