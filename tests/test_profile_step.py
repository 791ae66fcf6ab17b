"""benchmarks/profile_step.py and op_profile.py: trace parsing and op categories on XLA:CPU."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import op_profile  # noqa: E402
import profile_step  # noqa: E402


def _trace(fn, args, trace_dir, calls=2):
    """Compiled fn, its HLO and the leaf op events of `calls` traced calls."""
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        for _ in range(calls):
            jax.block_until_ready(compiled(*args))
    hlo = op_profile.Hlo(compiled.as_text())
    return hlo, op_profile.op_events(op_profile.perfetto_file(trace_dir), hlo.module)


def test_matmul_only_function_is_matmul(tmp_path):
    n = 384
    a = jax.random.normal(jax.random.key(0), (n, n))
    hlo, events = _trace(lambda x, y: x @ y, (a, a), tmp_path, calls=2)
    table = op_profile.category_table(hlo, events, steps=2)
    busy = sum(row["seconds"] for row in table.values())
    assert busy > 0
    assert table["matmul"]["seconds"] / busy > 0.9, table
    assert table["matmul"]["flops"] == pytest.approx(2.0 * n**3)  # hand count per call


def test_convolution_and_copy_categories(tmp_path):
    x = jax.random.normal(jax.random.key(0), (2, 1, 4000))
    w = jax.random.normal(jax.random.key(1), (64, 1, 10))
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (5,), "VALID")  # noqa: E731
    hlo, events = _trace(conv, (x, w), tmp_path / "conv", calls=1)
    table = op_profile.category_table(hlo, events, steps=1)
    assert table["convolution"]["seconds"] > 0
    out_len = (4000 - 10) // 5 + 1
    assert table["convolution"]["flops"] == pytest.approx(2.0 * 2 * 64 * out_len * 10)
    hlo, events = _trace(lambda y: jnp.transpose(y, (2, 0, 1)) + 0, (x,), tmp_path / "t")
    assert {hlo.category(e["op"]) for e in events} <= {"copy/transpose", "elementwise"}


def test_apportion_splits_overlaps():
    events = [{"start": 0.0, "dur": 10.0}, {"start": 5.0, "dur": 10.0}, {"start": 30.0, "dur": 2}]
    assert op_profile.apportion(events) == pytest.approx([7.5, 7.5, 2.0])
    assert op_profile.busy_seconds(events) == pytest.approx(17e-6)


def test_step_table_sums_to_traced_step(tmp_path):
    results = profile_step.main(["--teacher", "tiny", "--model", "demo", "--batch", "1",
                                 "--seconds", "1", "--steps", "1", "--dtype", "float32",
                                 "--configs", "live", "--out", str(tmp_path)])  # fmt: skip
    r = results["configs"]["live"]
    categories = sum(row["seconds"] for row in r["categories"].values())
    # The categories share out exactly the time some op ran (the union of the op intervals),
    # which lies inside the wall-clock time of the traced step; the rest is the idle row.
    assert categories == pytest.approx(r["busy_s"], rel=1e-6)
    assert 0.2 * r["traced_step_s"] < categories <= r["op_span_s"] <= r["traced_step_s"]
    for name in ("convolution", "matmul", "attention", "normalisation", "elementwise"):
        assert r["categories"][name]["seconds"] > 0, name
    # FLOPs counted from the HLO's dots and convolutions against the analytic count
    # (stackdistill.flops), which leaves out the elementwise work and the optimizer.
    counted = sum(row["flops"] for row in r["categories"].values())
    assert counted == pytest.approx(r["analytic_flops"], rel=0.25)
    assert (tmp_path / "profile.json").is_file()
    assert list((tmp_path / "trace_live").rglob("*.xplane.pb"))
