"""Chip table and topology names (stackdistill/chips.py)."""

import importlib.util

import pytest

from stackdistill import chips


@pytest.mark.parametrize(
    "name, chip, num_chips, desc",
    [
        ("v4-8", "v4", 4, "v4:2x2x1"),  # v4/v5p suffixes count TensorCores, 2 per chip
        ("v4-32", "v4", 16, "v4:2x2x4"),
        ("v5p-8", "v5p", 4, "v5p:2x2x1"),
        ("v5p-128", "v5p", 64, "v5p:4x4x4"),
        ("v5e-4", "v5e", 4, "v5e:2x2"),
        ("v5litepod-16", "v5e", 16, "v5e:4x4"),
        ("v5e-16", "v5e", 16, "v5e:4x4"),
        ("v5e-256", "v5e", 256, "v5e:16x16"),
        ("v6e-8", "v6e", 8, "v6e:2x4"),
        ("V6E-32", "v6e", 32, "v6e:4x8"),
        ("v5e:4x8", "v5e", 32, "v5e:4x8"),
        ("v5p:2x2x2", "v5p", 8, "v5p:2x2x2"),
    ],
)
def test_topology_names(name, chip, num_chips, desc):
    topo = chips.topology(name)
    assert (topo.chip.name, topo.num_chips, topo.desc_name) == (chip, num_chips, desc)
    again = chips.topology(chips.accelerator_type(topo))  # the Cloud TPU API's name
    assert (again.chip, again.num_chips) == (topo.chip, topo.num_chips)


@pytest.mark.parametrize(
    "name, says",
    [
        ("v7x-8", "unknown TPU"),
        ("banana", "expected an accelerator type"),
        ("v5e-12", "not a slice size"),
        ("v4-7", "counts TensorCores"),
        ("v5e-512", "4 to 256"),
        ("v5e-1", "the smallest: v5e-4"),
        ("v5e:4x4x4", "2D"),
    ],
)
def test_topology_refusals_name_the_field(name, says):
    with pytest.raises(ValueError, match="config.compile.topology") as e:
        chips.topology(name)
    assert says in str(e.value)


def test_chip_table_matches_the_cloud_docs():
    # Google Cloud TPU docs (v5e, v5p-training, v6e and v4 pages).
    expected = {  # peak bf16 TFLOP/s, HBM GB, HBM GB/s
        "v4": (275, 32 * 2**30 / 1e9, 1200),
        "v5e": (197, 16, 819),
        "v5p": (459, 95, 2765),
        "v6e": (918, 32, 1640),
    }
    for name, (tflops, hbm_gb, bw) in expected.items():
        chip = chips.CHIPS[name]
        assert chip.peak_bf16_flops == tflops * 1e12
        assert chip.hbm_bytes / 1e9 == pytest.approx(hbm_gb)
        assert chip.hbm_bytes_per_s == bw * 1e9
        assert chip.source.startswith("https://cloud.google.com/tpu/docs/")


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu (jax[tpu])")
@pytest.mark.parametrize("name, kind", [("v5e-8", "TPU v5 lite"), ("v6e-8", "TPU v6 lite")])
def test_compile_only_devices(name, kind):
    devices = chips.devices(chips.topology(name))
    assert len(devices) == 8 and devices[0].device_kind == kind
