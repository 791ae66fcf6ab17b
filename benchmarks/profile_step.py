"""Where a distillation step's time goes: a jax.profiler trace and a per-op-category table.

    python benchmarks/profile_step.py --model 12x384 --batch 24 --seconds 15.6 \
        --dtype bfloat16 --out /tmp/profile                                     # GPU
    python benchmarks/profile_step.py --teacher demo --model demo --batch 4 --seconds 2 \
        --out /tmp/profile                                                      # CPU, fast

Each configuration is compiled once (random weights, nothing downloaded), timed untraced,
then traced for --steps steps: "teacher" (the teacher forward alone, all hidden states),
"live" (teacher forward + student forward/backward + clipped AdamW), "live_shared" (the
student reads the teacher's CNN features), "cached" (targets from the batch, as from the
teacher-target cache), "cached_shared" (targets and CNN features from the batch: neither the
teacher nor any CNN runs). The table splits the traced step into op categories
(benchmarks/op_profile.py: convolutions, matmuls, attention, normalisations, elementwise,
copies/transposes, collectives, other; idle = no op running) with the FLOPs and bytes of
those ops from the HLO shapes and the rates they achieve. Markdown to stdout; traces under
OUT/trace_<config>/ and every number in OUT/profile.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import sys
import time
from typing import Any

import harness
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import op_profile

from stackdistill import fastpath, flops, models

CONFIGS = ("teacher", "live", "live_shared", "cached", "cached_shared")


def build(
    config: str,
    model: str,
    t_cfg,
    t_params,
    batch: int,
    samples: int,
    dtype: str,
    remat: str = "none",
):
    """(jitted fn, its arguments, analytic FLOPs per call) for one configuration."""
    rng = np.random.default_rng(0)
    wav = (0.1 * rng.standard_normal((batch, samples))).astype(np.float32)
    lengths = np.full((batch,), samples, np.int32)
    t_run = t_cfg.replace(dtype=dtype)
    if config == "teacher":
        fn = jax.jit(lambda p, w, n: models.encode(t_run, p, w, n).hidden_states)
        return (
            fn,
            (t_params, jnp.asarray(wav), jnp.asarray(lengths)),
            flops.encoder_flops(t_cfg, batch, samples),
        )
    shared, cached = config.endswith("_shared"), config.startswith("cached")
    setup = harness.train_step(model, t_cfg, t_params, dtype, shared, cached, remat)
    s_cfg, sources = setup["s_cfg"], setup["sources"]
    data: dict[str, Any] = {"lengths": jnp.asarray(lengths)}
    if not (cached and shared):
        data["audio"] = jnp.asarray(wav)
    if cached:
        frames = t_cfg.num_frames(samples)
        shape = (batch, len(harness.TEACHER_LAYERS), frames, t_cfg.hidden_size)
        data["targets"] = jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
        if shared:
            feats = rng.standard_normal((batch, frames, t_cfg.conv_dim[-1]))
            data["features"] = jnp.asarray(feats, jnp.bfloat16)
    analytic = flops.step_flops(t_cfg, s_cfg, batch, samples, len(sources), shared, not cached)
    return setup["step"], (setup["state"], t_params, data), analytic


def profile(fn, args: tuple, steps: int, trace_dir: pathlib.Path) -> dict[str, Any]:
    """Compiles, times `steps` untraced calls, then traces `steps` more; the category table."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    is_step = isinstance(args[0], dict) and "opt_state" in args[0]
    holder = {"args": args}

    def call() -> float:
        t = time.perf_counter()
        out = compiled(*holder["args"])
        jax.block_until_ready(out)
        if is_step:
            holder["args"] = (out[0], *holder["args"][1:])
        return time.perf_counter() - t

    call()  # warm-up
    untraced = [call() for _ in range(steps)]
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        traced = [call() for _ in range(steps)]
    hlo = op_profile.Hlo(compiled.as_text())
    trace_file = op_profile.perfetto_file(trace_dir)
    events = op_profile.op_events(trace_file, hlo.module)
    if jax.default_backend() != "cpu" and not op_profile.has_device_lines(trace_file):
        print("WARNING: the trace has no device lines (no CUPTI?): the table times host-side "
              "thunks, not kernels", flush=True)  # fmt: skip
    table = op_profile.category_table(hlo, events, steps)
    return {"compile_s": compile_s, "step_s": statistics.median(untraced),
            "traced_step_s": sum(traced) / steps, "traced_times": traced,
            "xla_flops": flops.xla_flops(compiled), "module": hlo.module,
            "events": len(events), "categories": table,
            "busy_s": op_profile.busy_seconds(events) / steps,
            "op_span_s": op_profile.span_seconds(events) / steps}  # fmt: skip


def markdown(name: str, r: dict[str, Any]) -> str:
    """One configuration's table (ms and % of the traced step, achieved rates)."""
    step_s = r["traced_step_s"]
    busy = sum(c["seconds"] for c in r["categories"].values())
    lines = [
        f"**{name}**: step {r['step_s'] * 1e3:.1f} ms untraced, {step_s * 1e3:.1f} ms traced "
        f"(ops busy {busy / step_s:.0%}); analytic {r['analytic_flops'] / 1e9:.1f} GFLOP "
        f"(XLA {r['xla_flops'] / 1e9:.1f}), {r['analytic_flops'] / r['step_s'] / 1e12:.3f} "
        f"TFLOP/s, MFU {r['mfu']:.1%}; compile {r['compile_s']:.1f} s",
        "",
        "| category | ms/step | % of step | ops/step | GFLOP/step | TFLOP/s | GB/step | GB/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    steps = len(r["traced_times"])
    rows = list(r["categories"].items()) + [
        ("idle (no op running)", {"seconds": max(step_s - busy, 0.0), "flops": 0, "bytes": 0,
                                  "ops": 0})]  # fmt: skip
    for cat, c in rows:
        if not c["seconds"] and cat != "idle (no op running)":
            continue
        s = c["seconds"]
        rate = f"{c['flops'] / s / 1e12:.3f}" if c["flops"] and s else "-"
        bw = f"{c['bytes'] / s / 1e9:.1f}" if c["bytes"] and s else "-"
        gflop = f"{c['flops'] / 1e9:.2f}" if c["flops"] else "-"
        gb = f"{c['bytes'] / 1e9:.3f}" if c["bytes"] else "-"
        lines.append(f"| {cat} | {s * 1e3:.2f} | {s / step_s:.1%} | {c['ops'] / steps:.0f} "
                     f"| {gflop} | {rate} | {gb} | {bw} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Profiles the configurations asked for; prints the tables, writes OUT/profile.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="12x384", choices=sorted(harness.STUDENTS))
    parser.add_argument("--teacher", default="base", choices=harness.TEACHER_NAMES)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=15.625)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=3, help="timed, then traced, calls")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--peak-flops", type=float, default=0.0, help="0: by backend")
    parser.add_argument("--out", default="/tmp/stackdistill_profile")
    # The fast-path options (stackdistill/fastpath.py), for benchmarks/gpu.sh's A/B runs.
    parser.add_argument("--attention", default="xla", choices=["xla", "cudnn"])
    parser.add_argument("--frontend-norm", default="float32", choices=["float32", "compute"])
    parser.add_argument("--remat", default="none", help="a policy, or auto (by size)")
    parser.add_argument("--xla-gpu-flags", action="store_true", help="fastpath.GPU_FLAGS")
    args = parser.parse_args(argv)
    if args.xla_gpu_flags:  # before the first jax call starts the backend
        os.environ["XLA_FLAGS"] = fastpath.xla_flags(os.environ.get("XLA_FLAGS", ""))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = jax.default_backend() == "gpu"
    peak = args.peak_flops or (flops.H100_BF16_PEAK_FLOPS if gpu else flops.CPU_PEAK_FLOPS)
    samples = int(round(args.seconds * 16000))
    t_cfg = models.EncoderConfig(
        **harness.teacher_arch(args.teacher),
        attention=args.attention,
        frontend_norm=args.frontend_norm,
    )
    t_params = jax.device_put(models.init_params(t_cfg, jax.random.key(0)))
    device = jax.devices()[0].device_kind
    results: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="minutes"), "device": device,
        "backend": jax.default_backend(), "cores": os.cpu_count(),
        "load_1min": os.getloadavg()[0], "jax": jax.__version__, "model": args.model,
        "teacher": args.teacher, "batch": args.batch, "seconds": args.seconds,
        "dtype": args.dtype, "steps": args.steps, "peak_flops": peak,
        "fastpath": {"attention": args.attention, "frontend_norm": args.frontend_norm,
                     "remat": args.remat, "xla_flags": os.environ.get("XLA_FLAGS", "")},
        "command": "python benchmarks/profile_step.py " + " ".join(argv or sys.argv[1:]),
        "configs": {},
    }  # fmt: skip
    print(f"{device} ({jax.default_backend()}, {os.cpu_count()} cores, load "
          f"{results['load_1min']:.2f}); teacher {args.teacher}, student {args.model}, batch "
          f"{args.batch} x {args.seconds:g} s, {args.dtype}\n", flush=True)  # fmt: skip
    for config in args.configs.split(","):
        if config not in CONFIGS:
            parser.error(f"--configs: {config!r} is not one of {CONFIGS}")
        remat = args.remat
        if remat == "auto":
            s_cfg = harness.student_encoder_config(args.model, t_cfg, args.dtype)
            run = ml_collections.ConfigDict({"remat": "auto", "data": {"max_samples": samples}})
            remat = fastpath.remat_policy(run, s_cfg, args.batch)
        fn, fn_args, analytic = build(
            config, args.model, t_cfg, t_params, args.batch, samples, args.dtype, remat
        )
        r = profile(fn, fn_args, args.steps, out / f"trace_{config}")
        r.update(analytic_flops=analytic, mfu=flops.mfu(analytic, r["step_s"], peak), remat=remat)
        results["configs"][config] = r
        print(markdown(config, r) + "\n", flush=True)
        # After each configuration, so that a run cut short keeps what it measured.
        (out / "profile.json").write_text(json.dumps(results, indent=1))
    results["load_1min_end"] = os.getloadavg()[0]
    (out / "profile.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
