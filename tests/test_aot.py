"""--mode=compile (stackdistill/aot.py): the run's steps compiled, fit checked, cost estimated."""

import importlib.util
import json
import pathlib

import jax
import pytest

from stackdistill import aot, config, costmodel
from stackdistill.models.config import EncoderConfig

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="needs libtpu (jax[tpu])"
)


def tiny_config(topology: str = ""):
    """configs/demo.py shrunk further: a 4 x 48 teacher, students 3 -> 6, 0.25 s crops."""
    c = config.load_file("configs/demo.py")
    c.teacher.random_arch.update(num_layers=4, conv_dim=(16,) * 7)
    c.distill.teacher_layers = (2, 3, 4)
    c.student.num_layers = 6
    c.data.max_samples = 4000
    c.batch_size = 4
    c.total_steps = 20
    c.compile.topology = topology
    return c


@pytest.mark.parametrize("name", sorted(aot.KNOWN_TEACHERS))
def test_known_teachers_are_valid_architectures(name):
    cfg = EncoderConfig.from_hf(aot.KNOWN_TEACHERS[name])
    assert cfg.num_layers in (12, 24) and cfg.hidden_size in (768, 1024)


def test_unknown_hub_teacher_is_refused_by_name():
    c = tiny_config()
    c.teacher.random_arch = None
    c.teacher.name = "someone/unknown-model"
    with pytest.raises(ValueError, match="config.teacher.name"):
        aot.teacher_shapes(c)


def test_not_fitting_names_the_stage_and_the_excess(tmp_path):
    c = tiny_config()  # local CPU devices, with a made-up 1 MB of device memory
    c.compile.stages = (-1,)
    c.compile.hbm_bytes = 1_000_000
    with pytest.raises(ValueError, match=r"stage 1 \(depth 6\) does not fit .* over"):
        aot.run(c, str(tmp_path))
    out = json.loads((tmp_path / "compile.json").read_text())  # written before the refusal
    assert out["fits"] is False and [s["depth"] for s in out["stages"]] == [6]


def test_top_ops_lists_where_the_bytes_go(tmp_path):
    c = tiny_config()  # local CPU devices
    c.compile.stages = (-1,)
    c.compile.top_ops = 5
    c.compile.hlo_dir = str(tmp_path / "hlo")
    stage = aot.run(c, str(tmp_path))["stages"][0]
    rows = stage["top_ops"]
    # the written HLO gives the same HBM traffic again, without a compile
    text = pathlib.Path(stage["hlo_file"]).read_text()
    assert costmodel.hbm_bytes(text) == stage["estimate"]["hbm_bytes_per_device"]
    assert len(rows) == 5 and any(r["op"].startswith("jit(train_step)/") for r in rows)
    assert [r["hbm_bytes"] for r in rows] == sorted((r["hbm_bytes"] for r in rows), reverse=True)
    assert 0 < sum(r["hbm_share"] for r in rows) <= 1 and 0 < sum(r["bytes_share"] for r in rows)


@needs_libtpu
def test_compile_for_v5e_writes_compile_json(tmp_path):
    out = aot.run(tiny_config("v5e-4"), str(tmp_path))
    assert json.loads((tmp_path / "compile.json").read_text()) == json.loads(json.dumps(out))
    assert out["chip"] == "v5e" and out["num_devices"] == 4 and out["fits"] is True
    assert "XLA's TPU cost model" in out["note"] and out["run_chip_hours"] > 0
    assert [s["depth"] for s in out["stages"]] == [3, 6]
    for s in out["stages"]:
        hbm, est = s["hbm_per_device_bytes"], s["estimate"]
        assert 0 < hbm["total"] <= s["hbm_limit_bytes"] == 16 * 10**9
        assert est["step_seconds"] > 0 and 0 < est["mfu"] < 1
        assert est["audio_s_per_s_per_chip"] > 0 and est["bound"] in ("compute", "memory")
        # the HBM traffic is part of what XLA counts (its count takes VMEM buffers as HBM)
        assert 0 < est["hbm_bytes_per_device"] < est["bytes_accessed_per_device"]
        assert est["step_seconds"] <= est["step_seconds_all_bytes"]
    # the scanned layers are counted per layer: depth 3 -> 6 adds what the analytic count adds
    # (XLA's cost_analysis alone adds next to nothing: the scan body counted once)
    e3, e6 = (s["estimate"] for s in out["stages"])
    added = e6["analytic_flops_per_device"] - e3["analytic_flops_per_device"]
    assert e6["flops_per_device"] - e3["flops_per_device"] > 0.8 * added


@needs_libtpu
@pytest.mark.slow  # ~8 compiles (~3 minutes on 2 cores)
def test_find_batch_brackets_the_limit(tmp_path):
    c = tiny_config("v5e-4")
    c.compile.stages = (-1,)
    c.compile.find_batch = True
    c.compile.hbm_bytes = 30_000_000
    fb = aot.run(c, str(tmp_path))["find_batch"]
    by_batch = {int(k): v for k, v in fb["hbm_per_device_bytes_by_batch"].items()}
    assert by_batch[fb["largest_batch_per_device"]] <= 30_000_000
    if fb["smallest_not_fitting"]:
        assert by_batch[fb["smallest_not_fitting"]] > 30_000_000


@needs_libtpu
@pytest.mark.slow  # the CLI in a subprocess: 4 stages of the demo config (~1 minute)
def test_cli_compile_mode(tmp_path):
    import os
    import subprocess
    import sys

    cmd = [
        sys.executable, "-m", "stackdistill.main", "--config=configs/demo.py",
        f"--workdir={tmp_path}", "--mode=compile", "--config.compile.topology=v5e-4",
        "--config.data.max_samples=8000", "--config.batch_size=4",
        "--config.compilation_cache_dir=",
    ]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [x for x in done.stderr.splitlines() if x.startswith("compile v5e-4: stage")]
    assert len(lines) == 4 and all("est. (XLA cost model)" in x for x in lines)
    assert json.loads((tmp_path / "compile.json").read_text())["run_chip_hours"] > 0


@needs_libtpu
def test_flash_attention_compiles_for_v5e_per_device():
    """attention="flash" is lowered by Mosaic for a compile-only v5e: the Pallas kernels run
    per device under the mesh (a batch-sharded shard_map), with no gather of the batch."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from stackdistill import chips
    from stackdistill.models import flash_attention

    jax.config.update("jax_enable_compilation_cache", False)  # as aot.target does
    devices = chips.devices(chips.topology("v5e-4"))
    mesh = jax.sharding.Mesh(np.array(devices).reshape(4, 1), ("data", "fsdp"))
    batch = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))

    def loss(q, k, v, mask):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            out = flash_attention.attention(q, k, v, mask)
        return jnp.sum(out.astype(jnp.float32) ** 2)

    qkv = [jax.ShapeDtypeStruct((8, 200, 2, 64), jnp.bfloat16, sharding=batch)] * 3
    mask = jax.ShapeDtypeStruct((8, 200), jnp.bool_, sharding=batch)
    step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), in_shardings=(batch,) * 4)
    hlo = step.lower(*qkv, mask).compile().as_text()
    assert hlo.count("tpu_custom_call") >= 3  # forward, dK/dV and dQ kernels
    assert "all-gather" not in hlo


@needs_libtpu
def test_dp_pipeline_compiles_for_v5e(tmp_path):
    """A DPHuBERT config: its pruning step (here at half depth, prune.depth) and its final
    step (at the unpruned widths: the bound before pruning has run) compiled for v5e-4, the
    run's chip-hours the sum of the two stages'."""
    c = config.load_file("configs/dphubert.py", "runlocal")
    c.teacher.random_arch.update(num_layers=4, conv_dim=(16,) * 7)
    c.dp.layers = "0.2,4"
    c.prune.depth = 2
    c.data.max_samples = 4000
    c.compile.topology = "v5e-4"
    out = aot.run(c, str(tmp_path))
    assert json.loads((tmp_path / "compile.json").read_text()) == json.loads(json.dumps(out))
    assert [(s["name"], s["depth"], s["steps"]) for s in out["stages"]] == [
        ("prune", 2, c.prune.steps),
        ("final", 4, c.final.steps),
    ]
    assert out["fits"] is True and out["num_devices"] == 4
    hours = [s["estimate"]["chip_hours"] for s in out["stages"]]
    assert out["run_chip_hours"] == pytest.approx(sum(hours)) and min(hours) > 0
    prune, final = (s["estimate"] for s in out["stages"])
    # the final student runs all 4 layers forward and backward, the pruning one 2
    assert prune["analytic_flops_per_device"] < final["analytic_flops_per_device"]
    assert prune["flops_per_device"] < final["flops_per_device"]
    c.batch_size = 6
    with pytest.raises(ValueError, match="config.batch_size=6 does not split over the 4"):
        aot.run(c, str(tmp_path))


@pytest.mark.slow  # ~6 compiles of the DP final step on the CPU
def test_dp_compile_picks_stages_and_finds_the_batch(tmp_path):
    """config.compile.stages and find_batch on a DP config: (-1,) compiles the final step
    alone (no run total from a part of the run); find_batch brackets the memory limit."""
    c = config.load_file("configs/dphubert.py", "runlocal")
    c.teacher.random_arch.update(num_layers=2, conv_dim=(16,) * 7)
    c.dp.layers = "0.2,2"
    c.data.max_samples = 4000
    c.batch_size = len(jax.devices())
    c.compile.stages = (-1,)
    c.compile.find_batch = True
    c.compile.hbm_bytes = 60_000_000
    out = aot.run(c, str(tmp_path))
    assert [s["name"] for s in out["stages"]] == ["final"] and "run_chip_hours" not in out
    fb = out["find_batch"]
    by_batch = {int(k): v for k, v in fb["hbm_per_device_bytes_by_batch"].items()}
    assert fb["stage"] == 1 and by_batch[fb["largest_batch_per_device"]] <= 60_000_000
    assert fb["smallest_not_fitting"] and by_batch[fb["smallest_not_fitting"]] > 60_000_000
