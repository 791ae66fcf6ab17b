"""The fast-path options: off by default, XLA's GPU flags, remat chosen by model size."""

import os
import subprocess
import sys

import pytest

from stackdistill import config as config_lib
from stackdistill import fastpath
from stackdistill.models import EncoderConfig


def test_defaults_are_todays_path():
    c = config_lib.base_config()
    assert fastpath.encoder_options(c) == {
        "attention": "xla",
        "frontend_norm": "float32",
        "first_conv": "conv",
        "strided_conv": "conv",
        "layer_norm": "flax",
    }
    fields = EncoderConfig()
    assert (fields.attention, fields.frontend_norm, fields.first_conv) == ("xla", "float32", "conv")
    assert (fields.strided_conv, fields.layer_norm) == ("conv", "flax")
    assert c.remat == "none" and not c.fastpath.xla_gpu_flags
    assert fastpath.remat_policy(c, fields, 24, device_bytes=10**15) == "none"


def test_xla_flags_keep_the_users_values():
    merged = fastpath.xla_flags("--xla_gpu_enable_triton_gemm=true --xla_dump_to=/tmp/x")
    flags = merged.split()
    assert "--xla_gpu_enable_triton_gemm=true" in flags  # the user's value wins
    assert "--xla_gpu_enable_triton_gemm=false" not in flags
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in flags
    assert flags[-1] == "--xla_dump_to=/tmp/x"
    assert fastpath.xla_flags("") == " ".join(fastpath.GPU_FLAGS)


def test_gpu_flags_are_known_to_this_xla():
    """XLA aborts on a flag it does not know; all of GPU_FLAGS parse (also on a CPU backend)."""
    code = "import jax; print(jax.numpy.ones(3).sum())"
    env = {**os.environ, "XLA_FLAGS": " ".join(fastpath.GPU_FLAGS), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "3.0", done.stderr[-2000:]
    env["XLA_FLAGS"] = "--xla_gpu_no_such_flag=true"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "Unknown flag" in bad.stderr


def test_xla_flags_only_when_asked_and_on_a_gpu(monkeypatch):
    c = config_lib.base_config()
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    assert not fastpath.apply_xla_flags(c)  # off by default
    c.fastpath.xla_gpu_flags = True
    monkeypatch.setattr(fastpath, "gpu_present", lambda: False)
    assert not fastpath.apply_xla_flags(c) and os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"
    monkeypatch.setattr(fastpath, "gpu_present", lambda: True)
    assert fastpath.apply_xla_flags(c)
    assert os.environ["XLA_FLAGS"] == fastpath.xla_flags("--xla_dump_to=/tmp/x")


def test_gpu_present_follows_jax_platforms(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert not fastpath.gpu_present()


@pytest.mark.parametrize(
    "size,batch,expected",
    [
        # 12 x 384 student, 24 x 15.6 s (781 frames), bf16; by hand, per layer and frame:
        # none 8*384 + 2*1536 + 2*6*781 = 15516 values -> 12*24*781*15516*2 B = 6.98 GB;
        # dots_saveable 4*384 + 1536 + 6*781 = 7758 -> 3.49 GB; nothing_saveable 384 -> 0.17 GB.
        ((12, 384, 1536, 6), 24, {8e9: "none", 6e9: "dots_saveable", 1e9: "nothing_saveable"}),
        # HuBERT Base-sized, batch 48: none 12*48*781*(6144+6144+18744)*2 B = 27.9 GB;
        # dots_saveable (3072+3072+9372) -> 14.0 GB; nothing_saveable 768 -> 0.69 GB.
        ((12, 768, 3072, 12), 48, {30e9: "none", 20e9: "dots_saveable", 5e9: "nothing_saveable"}),
    ],
)
def test_auto_remat_picks_the_cheapest_policy_that_fits(size, batch, expected):
    c = config_lib.base_config()
    c.remat, c.data.max_samples = "auto", 250_000
    layers, hidden, ffn, heads = size
    cfg = EncoderConfig(num_layers=layers, hidden_size=hidden, intermediate_size=ffn,
                        num_heads=heads, dtype="bfloat16")  # fmt: skip
    assert cfg.num_frames(250_000) == 781
    for budget, policy in expected.items():
        # remat_memory_fraction 0.5: the budget is half the device's memory.
        assert fastpath.remat_policy(c, cfg, batch, device_bytes=int(2 * budget)) == policy
    assert fastpath.remat_policy(c, cfg, batch, device_bytes=10**6) == "nothing_saveable"
    c.remat = "dots_saveable"  # an explicit policy is kept whatever the size
    assert fastpath.remat_policy(c, cfg, batch, device_bytes=10**15) == "dots_saveable"


def test_auto_is_todays_path_except_on_a_tpu():
    """ "auto" resolves by platform: the cost-model winners on a TPU, today's path elsewhere;
    an explicit value wins everywhere, and a bad one names its config field."""
    c = config_lib.base_config()
    assert (c.fastpath.attention, c.fastpath.first_conv) == ("auto", "auto")
    for platform in ("cpu", "gpu"):
        assert fastpath.encoder_options(c, platform) == {
            "attention": "xla",
            "frontend_norm": "float32",
            "first_conv": "conv",
            "strided_conv": "conv",
            "layer_norm": "flax",
        }
    tpu = fastpath.encoder_options(c, "tpu")
    assert (tpu["attention"], tpu["first_conv"], tpu["strided_conv"], tpu["layer_norm"]) == (
        "flash",
        "matmul",
        "matmul",
        "recompute",
    )
    c.fastpath.attention = "xla"
    assert fastpath.encoder_options(c, "tpu")["attention"] == "xla"
    EncoderConfig(**fastpath.encoder_options(c, "tpu"))  # every resolved value is valid
    c.fastpath.first_conv = "fft"
    with pytest.raises(ValueError, match=r"config\.fastpath\.first_conv='fft'"):
        fastpath.encoder_options(c, "cpu")


def test_compile_for_a_tpu_topology_resolves_auto_for_the_tpu():
    """--mode=compile for a TPU topology builds the teacher (and so the student) the TPU way."""
    from stackdistill import aot

    c = config_lib.base_config()
    c.teacher.random_arch = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    c.distill.teacher_layers = (1, 2)
    c.compile = aot.default_config()
    assert aot.teacher_shapes(c)[0].attention == "xla"  # local devices: CPU here
    c.compile.topology = "v5e-8"
    cfg = aot.teacher_shapes(c)[0]
    assert (cfg.attention, cfg.first_conv, cfg.strided_conv) == ("flash", "matmul", "matmul")
    assert cfg.layer_norm == "recompute"
