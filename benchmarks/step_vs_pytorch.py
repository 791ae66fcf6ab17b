"""One distillation step, our JAX code against a PyTorch reference built on transformers.

    python benchmarks/step_vs_pytorch.py [--batch 4 --seconds 4 --repeats 5 --threads 2]
    python benchmarks/step_vs_pytorch.py --no-torch --dtype bfloat16 --batch 24 \
        --seconds 15.6 --peak-flops 989e12 --json out.json          # GPU, JAX alone
    python benchmarks/step_vs_pytorch.py --device cuda --dtype bfloat16 --batch 24 \
        --seconds 15.6 --peak-flops 989e12 --json out.json          # GPU, against PyTorch

A step is the teacher forward (HuBERT Base, random weights, nothing downloaded) + the
student forward/backward + clipped AdamW. The reference runs transformers' HubertModel as
teacher and as student (the student's config, dropouts, layer drop and SpecAugment off) with
nn.Linear heads and the same loss, starting from the very same weights: the first step's
losses are printed side by side as a check. For each student (DistilHuBERT: 2 x 768, heads on
the last layer, L1 + cos; 12 x 384: MSE + 0.5 x intermediate, student layers 4/8/12 ->
teacher 4/8/12) the two are timed alternately after one warm-up each; medians are reported
with the teacher forward timed alone, so that the student's share is the difference.

`--device cuda` runs the reference on the GPU with bf16 autocast (`--autocast bf16`, its
default there), fused AdamW and SDPA attention, in two variants, eager and `torch.compile`d
(teacher and student modules), timed alternately with our step in the same process (JAX
does not preallocate GPU memory then); our step is compared with the faster variant. On a
CPU `--autocast bf16 --compile` exercise the same variants.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

if "--malloc=tuned" in sys.argv:  # parsed again below; acted on here, before jax and torch load
    from stackdistill import hostmem  # imports no jax

    hostmem.configure("keep")  # glibc: one arena, no mmap, no trimming; both frameworks
if "cuda" in sys.argv or "--device=cuda" in sys.argv:  # PyTorch shares the GPU with JAX
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


import harness  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from harness import cpu_name, median_time  # noqa: E402
from torch_reference import (  # noqa: E402
    autocast,
    frontend_times,
    sync,
    torch_step_fn,
    torch_student,
    torch_variants,
)

from stackdistill import flops, models, teacher  # noqa: E402

# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--students", default="distilhubert,12x384")
    parser.add_argument("--no-torch", action="store_true", help="JAX only (GPU runs)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="PyTorch's")
    parser.add_argument("--autocast", default="", choices=["", "none", "bf16"],
                        help="PyTorch autocast; default bf16 on cuda, none on cpu")  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="add a torch.compile variant")
    parser.add_argument("--no-compile", action="store_true", help="cuda: eager variant only")
    parser.add_argument("--peak-flops", type=float, default=flops.CPU_PEAK_FLOPS)
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--malloc", default="default", choices=["default", "tuned"],
                        help="tuned: glibc keeps freed memory (stackdistill.hostmem), both "
                             "frameworks; spell it --malloc=tuned")  # fmt: skip
    args = parser.parse_args()
    if args.malloc == "tuned" and "--malloc=tuned" not in sys.argv:
        parser.error("spell it --malloc=tuned (it must act before jax and torch are imported)")
    args.autocast = args.autocast or ("bf16" if args.device == "cuda" else "none")
    variants = [] if args.no_torch else torch_variants(args)

    samples = int(round(args.seconds * 16000))
    audio_s = args.batch * samples / 16000
    wav = (0.1 * np.random.default_rng(0).standard_normal((args.batch, samples))).astype(np.float32)
    lengths = np.full((args.batch,), samples, np.int32)
    print(f"{cpu_name()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
          f"JAX {jax.__version__} on {jax.devices()[0].device_kind}; batch {args.batch} x "
          f"{args.seconds:g} s, {args.dtype}, malloc {args.malloc}", flush=True)  # fmt: skip

    t_model = None
    if args.no_torch:
        t_cfg = models.EncoderConfig()
        t_params = models.init_params(t_cfg, jax.random.key(0))
    else:
        import torch
        import transformers

        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        if args.device == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 where autocast leaves float32
        t_model = transformers.HubertModel(transformers.HubertConfig()).eval()
        with tempfile.TemporaryDirectory() as tmp:
            t_model.save_pretrained(tmp)
            t_cfg, t_params = teacher.load(tmp, use_cache=False)
        t_model = t_model.to(args.device)
        t_runs = {v: torch.compile(t_model) if c else t_model for v, c in variants}
    batch = jax.device_put({"audio": wav, "lengths": lengths})
    t_cfg_run = t_cfg.replace(dtype=args.dtype)
    forward = jax.jit(lambda p, w, n: models.encode(t_cfg_run, p, w, n).hidden_states)
    forward(t_params, batch["audio"], batch["lengths"]).block_until_ready()
    results: dict[str, Any] = {
        "machine": harness.machine_name(),
        "load_1min": os.getloadavg()[0], "batch": args.batch, "seconds": args.seconds,
        "dtype": args.dtype, "repeats": args.repeats, "jax": jax.__version__,
        "malloc": args.malloc, "torch_device": args.device, "torch_autocast": args.autocast,
        "torch_variants": [v for v, _ in variants],
        "teacher_flops": flops.encoder_flops(t_cfg, args.batch, samples),
    }  # fmt: skip
    jax_teacher = median_time(
        lambda: forward(t_params, batch["audio"], batch["lengths"]).block_until_ready(),
        args.repeats,
    )
    results["jax_teacher_forward_s"] = jax_teacher
    results["jax_teacher_audio_s_per_s"] = audio_s / jax_teacher
    results["jax_teacher_mfu"] = flops.mfu(results["teacher_flops"], jax_teacher, args.peak_flops)
    print(json.dumps(results), flush=True)
    if t_model is not None:
        x = torch.from_numpy(wav).to(args.device)
        for v, _ in variants:

            def run_teacher(run=t_runs[v]) -> None:
                with torch.inference_mode(), autocast(args.device, args.autocast):
                    run(x, output_hidden_states=True)
                sync(args.device)

            run_teacher()  # warm-up (and compile)
            results[f"torch_teacher_forward_s:{v}"] = median_time(run_teacher, args.repeats)
        best = min(variants, key=lambda v: results[f"torch_teacher_forward_s:{v[0]}"])[0]
        results["torch_teacher_forward_s"] = results[f"torch_teacher_forward_s:{best}"]
        results["torch_teacher_best"] = best

    for name in args.students.split(","):
        setup = harness.train_step(name, t_cfg, t_params, args.dtype)
        setup["params"] = jax.device_get(setup["params"])  # host copy for the PyTorch reference
        loss, sources, state = setup["loss"], setup["sources"], setup["state"]
        compile_start = time.perf_counter()
        compiled = setup["step"].lower(state, t_params, batch).compile()
        compile_s = time.perf_counter() - compile_start
        holder = {"state": state}

        def run_jax(compiled=compiled, holder=holder) -> float:
            holder["state"], metrics = compiled(holder["state"], t_params, batch)
            return float(metrics["loss"])  # float() waits for the step

        first_jax = run_jax()
        runs, firsts, s_model = {}, {}, None
        for v, compiled_variant in variants:
            model, heads = torch_student(setup["s_cfg"], setup["params"], sources)
            model, heads = model.to(args.device), heads.to(args.device)
            s_model = model if s_model is None else s_model  # eager, for the front-end timing
            runs[v] = torch_step_fn(
                t_runs[v], torch.compile(model) if compiled_variant else model, heads, loss,
                sources, wav, args.device, args.autocast, fused=args.device == "cuda",
            )  # fmt: skip
            start = time.perf_counter()
            firsts[v] = runs[v]()  # loss.item() waits for the step
            firsts[v + ":first_call_s"] = time.perf_counter() - start
        jax_times, variant_times = [], {v: [] for v in runs}
        for _ in range(args.repeats):  # alternating, so that load changes hit all
            jax_times.append(median_time(run_jax, 1))
            for v, run in runs.items():
                variant_times[v].append(median_time(run, 1))
        run_torch = bool(runs)
        if run_torch:
            best = min(runs, key=lambda v: statistics.median(variant_times[v]))
            torch_times, first_torch = variant_times[best], firsts[best]
        else:
            torch_times = []
        s_cfg = setup["s_cfg"]
        analytic = flops.step_flops(t_cfg, s_cfg, args.batch, samples, len(sources))
        jax_s = statistics.median(jax_times)
        row = {
            "student": name, "jax_step_s": jax_s, "jax_audio_s_per_s": audio_s / jax_s,
            "jax_compile_s": compile_s, "jax_first_loss": first_jax,
            "analytic_flops": analytic, "xla_flops": flops.xla_flops(compiled),
            "jax_mfu": flops.mfu(analytic, jax_s, args.peak_flops),
            "jax_student_s": jax_s - jax_teacher, "jax_times": jax_times,
        }  # fmt: skip
        if run_torch:
            torch_s = statistics.median(torch_times)
            row.update(torch_step_s=torch_s, torch_audio_s_per_s=audio_s / torch_s,
                       torch_first_loss=first_torch, torch_times=torch_times,
                       torch_student_s=torch_s - results[f"torch_teacher_forward_s:{best}"],
                       torch_mfu=flops.mfu(analytic, torch_s, args.peak_flops),
                       ratio=torch_s / jax_s, torch_best=best)  # fmt: skip
            row["torch_by_variant"] = {
                v: {"step_s": statistics.median(t), "times": t, "first_loss": firsts[v],
                    "first_call_s": firsts[v + ":first_call_s"],
                    "audio_s_per_s": audio_s / statistics.median(t),
                    "mfu": flops.mfu(analytic, statistics.median(t), args.peak_flops),
                    "ratio": statistics.median(t) / jax_s}
                for v, t in variant_times.items()
            }  # fmt: skip
        row.update(jax_min_s=min(jax_times), torch_min_s=min(torch_times) if torch_times else None)
        if "jax_frontend_fwd_bwd_s" not in results:  # every student has the teacher's CNN
            results.update(frontend_times(s_cfg, setup["params"]["encoder"], s_model, wav,
                                          args.repeats, args.device, args.autocast))  # fmt: skip
        results[name] = row
        print(json.dumps(row), flush=True)
        if args.json:  # after each student, so that a run cut short keeps what it measured
            pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    results["load_1min_end"] = os.getloadavg()[0]
    _print_table(results, args.students.split(","), audio_s)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))


def _print_table(results: dict[str, Any], names: list[str], audio_s: float) -> None:
    """Markdown rows for RESULTS.md."""
    print(f"\nteacher forward: JAX {results['jax_teacher_forward_s']:.3f} s "
          f"({results['jax_teacher_audio_s_per_s']:.1f} audio-s/s, "
          f"MFU {results['jax_teacher_mfu']:.1%})", end="")  # fmt: skip
    if "torch_teacher_forward_s" in results:
        print(f", PyTorch {results['torch_teacher_forward_s']:.2f} s", end="")
    print(f" (load {results['load_1min']:.2f} -> {results['load_1min_end']:.2f})")
    print(f"student CNN front-end forward+backward: JAX {results['jax_frontend_fwd_bwd_s']:.2f} s"
          + (f", PyTorch {results['torch_frontend_fwd_bwd_s']:.2f} s"
             if "torch_frontend_fwd_bwd_s" in results else "") + "\n")  # fmt: skip
    print(
        "| student | JAX step s | JAX audio-s/s | PyTorch step s | PyTorch audio-s/s | ratio "
        "| min JAX, PyTorch s | JAX student part s | PyTorch student part s "
        "| FLOPs/step (analytic, XLA) | MFU JAX, PyTorch | first loss JAX, PyTorch |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        r = results[name]
        torch_cells = (
            f"{r['torch_step_s']:.3f} | {r['torch_audio_s_per_s']:.2f} | {r['ratio']:.2f}x | "
            f"{r['jax_min_s']:.2f}, {r['torch_min_s']:.2f} | "
            f"{r['jax_student_s']:.2f} | {r['torch_student_s']:.2f}"
            if "ratio" in r
            else f"- | - | - | {r['jax_min_s']:.3f}, - | {r['jax_student_s']:.2f} | -"
        )
        mfu = f"{r['jax_mfu']:.1%}" + (f", {r['torch_mfu']:.1%}" if "torch_mfu" in r else "")
        loss = f"{r['jax_first_loss']:.4f}" + (
            f", {r['torch_first_loss']:.4f}" if "torch_first_loss" in r else ""
        )
        print(f"| {name} | {r['jax_step_s']:.3f} | {r['jax_audio_s_per_s']:.2f} | {torch_cells} "
              f"| {r['analytic_flops'] / 1e9:.0f} G, {r['xla_flops'] / 1e9:.0f} G | {mfu} "
              f"| {loss} |")  # fmt: skip

    if any(len(results[n].get("torch_by_variant", {})) > 1 for n in names):
        print(f"\nPyTorch variants ({results['torch_device']}), teacher forward: "
              + ", ".join(f"{v} {results[f'torch_teacher_forward_s:{v}']:.3f} s"
                          for v in results["torch_variants"]) + "\n")  # fmt: skip
        print("| student | PyTorch variant | step s | audio-s/s | MFU | PyTorch/JAX "
              "| first loss (JAX) | first call s |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for name in names:
            r = results[name]
            for v, t in r.get("torch_by_variant", {}).items():
                mark = " (best)" if v == r["torch_best"] else ""
                print(f"| {name} | {v}{mark} | {t['step_s']:.3f} | {t['audio_s_per_s']:.1f} "
                      f"| {t['mfu']:.1%} | {t['ratio']:.2f}x | {t['first_loss']:.4f} "
                      f"({r['jax_first_loss']:.4f}) | {t['first_call_s']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
