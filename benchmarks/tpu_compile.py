"""TPU fit and speed by XLA's own cost model, without a TPU: the --mode=compile table.

    python benchmarks/tpu_compile.py [--out /tmp/tpu_compile] [--full]

Needs libtpu (`pip install "jax[tpu]==<the installed jax version>"`); runs on CPU. Each cell
compiles one config's train step for one topology (stackdistill/aot.py) and reads per chip:
HBM, the cost-model step time, MFU against the chip's bf16 peak, audio-seconds per second,
and the paper's 200k steps in chip-hours (the cell's stage time x all steps: the deepest
stage bounds the run from above). Default cells: configs/demo.py's models (a few seconds a
compile) on v4-8, v5e-8, v5p-8 and v6e-8. `--full` adds the full-size cells, deepest stage
each: HuBERT Base live on the four chips, HuBERT Base with stored targets and a shared
front-end, WavLM Base+, DistilHuBERT and XLS-R 300M on v5e-8, and HuBERT Base on the pod
slice v5e-32 with FSDP (1.5-4 minutes a cell on 2 cores, every time: jax 0.10.2 cannot read
compile-only executables back from the persistent compilation cache, so aot.py turns it
off). Writes one JSON line per cell to OUT/tpu_compile.jsonl and prints a markdown table.
Every number is an estimate of XLA's cost model, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import harness

from stackdistill import aot, config

PAPER_STEPS = 200_000
DEMO_CELLS = [("demo.py", {}, topo) for topo in ("v4-8", "v5e-8", "v5p-8", "v6e-8")]
STORED = {"targets.dir": "targets", "student.frozen_shared_frontend": True}
POD = {"batch_size": 96, "mesh.fsdp": 4, "mesh.params": "fsdp"}  # 3 per chip, as on v5e-8
FULL_CELLS = [("hubert_base.py", {}, topo) for topo in ("v5e-8", "v4-8", "v5p-8", "v6e-8")] + [
    ("hubert_base.py", STORED, "v5e-8"),  # stored targets + shared front-end
    ("wavlm_base.py", {}, "v5e-8"),
    ("distilhubert.py", {}, "v5e-8"),
    ("xlsr.py", {}, "v5e-8"),
    ("hubert_base.py", POD, "v5e-32"),  # a pod slice (4 hosts) with FSDP over 4 chips
]


def cell(name: str, overrides: dict, topology: str, hlo_dir: str = "") -> dict:
    """configs/NAME's deepest stage compiled for `topology`: the table row (its optimized HLO
    in `hlo_dir`, when given: costmodel reads it again without a compile)."""
    c = config.apply_overrides(harness.config_file(name), overrides)
    c.compile.topology = topology
    c.compile.stages = (-1,)
    c.compile.hlo_dir = hlo_dir
    if c.batch_size % 8:  # split over the 8 chips of the cells (v4-8: 8 compile-only devices)
        c.batch_size = 8 * max(1, c.batch_size // 8)
    start = time.perf_counter()
    out = aot.compile_run(c)
    stage = out["stages"][-1]
    e = stage["estimate"]
    return {
        "config": "configs/" + name + ("" if not overrides else f" {overrides}"),
        "topology": topology,
        "depth": stage["depth"],
        "global_batch": c.batch_size,
        "crop_s": c.data.max_samples / 16_000,
        "hbm_gb_per_device": stage["hbm_per_device_bytes"]["total"] / 1e9,
        "fits": stage["fits"],
        "step_ms": e["step_seconds"] * 1e3,
        "step_ms_all_bytes": e["step_seconds_all_bytes"] * 1e3,
        "hbm_traffic_gb": e["hbm_bytes_per_device"] / 1e9,
        "bound": e["bound"],
        "mfu": e["mfu"],
        "audio_s_per_s_per_chip": e["audio_s_per_s_per_chip"],
        "paper_chip_hours": PAPER_STEPS * e["step_seconds"] * out["num_chips"] / 3600,
        "seconds": time.perf_counter() - start,
        "hlo_file": stage.get("hlo_file"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/tpu_compile")
    parser.add_argument("--full", action="store_true", help="add the full-size cells")
    parser.add_argument("--only-full", action="store_true", help="the full-size cells alone")
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    cells = ([] if args.only_full else DEMO_CELLS) + (
        FULL_CELLS if args.full or args.only_full else []
    )
    for n, (name, overrides, topology) in enumerate(cells):
        try:
            row = cell(name, overrides, topology, str(out / "hlo" / f"cell{n}"))
        except Exception as e:  # noqa: BLE001 - one cell's failure is a row, the rest still run
            row = {"config": f"configs/{name} {overrides or ''}", "topology": topology}
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            print(f"{row['config']} on {topology}: {row['error']}", flush=True)
        rows.append(row)
        with open(out / "tpu_compile.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    print("| config | topology | depth | HBM GB/device (fits) | est. HBM traffic GB/device | "
          "est. step ms (bound) | VMEM as HBM: est. step ms | est. MFU | "
          "est. audio-s/s/chip | 200k steps, est. chip-h |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['config']} | {r['topology']} | {r['error']} | | | | | | | |")
            continue
        print(
            f"| {r['config']} | {r['topology']} | {r['depth']} | {r['hbm_gb_per_device']:.2f} "
            f"({'yes' if r['fits'] else 'NO'}) | {r['hbm_traffic_gb']:.1f} | "
            f"{r['step_ms']:.2f} ({r['bound']}) | {r['step_ms_all_bytes']:.2f} | {r['mfu']:.1%} | "
            f"{r['audio_s_per_s_per_chip']:.0f} | {r['paper_chip_hours']:.2f} |"
        )


if __name__ == "__main__":
    main()
