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
import subprocess
import sys
import tempfile
import time
from typing import Any

if "--malloc=tuned" in sys.argv:  # parsed again below; acted on here, before jax and torch load
    from stackdistill import hostmem  # imports no jax

    hostmem.configure("keep")  # glibc: one arena, no mmap, no trimming; both frameworks
if "cuda" in sys.argv or "--device=cuda" in sys.argv:  # PyTorch shares the GPU with JAX
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from stackdistill import distill, flops, models, optim, teacher  # noqa: E402
from stackdistill.models import student  # noqa: E402

TEACHER_LAYERS = (4, 8, 12)
STUDENTS = {
    # name: (student config fields, loss, student hidden state feeding each teacher layer)
    "distilhubert": (dict(num_layers=2, hidden_size=768, intermediate_size=3072, num_heads=12),
                     "l1_cos", {4: 2, 8: 2, 12: 2}),
    "12x384": (dict(num_layers=12, hidden_size=384, intermediate_size=1536, num_heads=6),
               "mse", {4: 4, 8: 8, 12: 12}),
}  # fmt: skip
LEARNING_RATE = 2e-4


def cpu_name() -> str:
    """lscpu's model name (or what platform says)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line
        )
    except (OSError, StopIteration):
        import platform

        return platform.processor() or "unknown CPU"


def median_time(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------- JAX


def jax_setup(name: str, t_cfg, t_params, dtype: str) -> dict[str, Any]:
    """Student params (teacher-initialised), jitted step and state for student `name`."""
    fields, loss, sources = STUDENTS[name]
    s_section = student.default_config()
    s_section.update(fields)
    s_cfg = student.student_encoder_config(s_section, t_cfg).replace(dtype=dtype)
    params = student.init_student(s_cfg, jax.random.key(0), t_cfg, t_params, TEACHER_LAYERS)
    distill_cfg = distill.default_config()
    distill_cfg.update(teacher_layers=TEACHER_LAYERS, loss=loss)
    schedule = optax.constant_schedule(LEARNING_RATE)
    tx = optim.make_optimizer(optim.default_config(), schedule, frozen_frontend=False)
    fn = distill.make_train_step(
        distill_cfg, t_cfg.replace(dtype=dtype), s_cfg, sources, tx, schedule, shared_frontend=False
    )
    # Fresh buffers: teacher-initialised leaves may alias the teacher's, and the step donates.
    state = jax.tree_util.tree_map(jnp.copy, distill.init_state(params, tx, seed=0))
    params = jax.device_get(params)  # host copy for the PyTorch reference
    return {"s_cfg": s_cfg, "params": params, "step": jax.jit(fn, donate_argnums=0),
            "state": state}  # fmt: skip


# ---------------------------------------------------------------- PyTorch reference


def torch_student(s_cfg, params: dict[str, Any], sources: dict[int, int]):
    """transformers HubertModel + nn.Linear heads holding the JAX student's initial weights."""
    import torch
    import transformers

    from stackdistill import convert

    hf = {**s_cfg.to_hf(), "hidden_dropout": 0.0, "activation_dropout": 0.0,
          "attention_dropout": 0.0, "feat_proj_dropout": 0.0, "layerdrop": 0.0,
          "apply_spec_augment": False}  # fmt: skip
    model = transformers.HubertModel(transformers.HubertConfig(**hf))
    state = convert.params_to_state_dict(s_cfg.replace(dtype="float32"), params["encoder"])
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=False
    )
    if unexpected or set(missing) - {"masked_spec_embed"}:
        raise RuntimeError(f"student weights do not fit: {missing=} {unexpected=}")
    heads = torch.nn.ModuleDict()
    for k in sources:
        head = params["heads"][f"layer_{k}"]
        linear = torch.nn.Linear(*np.shape(head["kernel"]))
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.asarray(head["kernel"]).T.copy()))
            linear.bias.copy_(torch.from_numpy(np.asarray(head["bias"])))
        heads[str(k)] = linear
    return model.train(), heads.train()


def torch_loss(preds: dict[int, Any], targets: dict[int, Any], loss: str):
    """The same losses as stackdistill.losses on an unpadded batch."""
    import torch
    import torch.nn.functional as F

    if loss == "mse":
        inner = [F.mse_loss(preds[k], targets[k]) for k in TEACHER_LAYERS[:-1]]
        return F.mse_loss(preds[12], targets[12]) + 0.5 * torch.stack(inner).mean()
    heads = [
        F.l1_loss(preds[k], targets[k])
        - F.logsigmoid(F.cosine_similarity(preds[k], targets[k], dim=-1, eps=1e-8)).mean()
        for k in TEACHER_LAYERS
    ]
    return torch.stack(heads).mean()


def autocast(device: str, dtype: str):
    """bf16 autocast on `device`, or a no-op context."""
    import contextlib

    import torch

    if dtype == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def torch_step_fn(t_model, s_model, heads, loss: str, sources: dict[int, int], wav,
                  device: str = "cpu", amp: str = "none", fused: bool = False):  # fmt: skip
    """A closure running one reference step (teacher no_grad, student fwd/bwd, AdamW).

    t_model and s_model may be torch.compile'd modules; with amp="bf16" the forwards and the
    loss run under bf16 autocast (the weights and AdamW stay float32).
    """
    import torch

    params = list(s_model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0, eps=1e-8,
                            **({"fused": True} if fused else {}))  # fmt: skip
    x = torch.from_numpy(wav).to(device)

    def run() -> float:
        with torch.no_grad(), autocast(device, amp):
            hidden = t_model(x, output_hidden_states=True).hidden_states
        targets = {k: hidden[k].float() for k in TEACHER_LAYERS}
        with autocast(device, amp):
            s_hidden = s_model(x, output_hidden_states=True).hidden_states
            preds = {k: heads[str(k)](s_hidden[s]) for k, s in sources.items()}
        value = torch_loss({k: v.float() for k, v in preds.items()}, targets, loss)
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        return value.item()

    return run


def frontend_times(s_cfg, encoder_params, s_model, wav: np.ndarray, repeats: int,
                   device: str = "cpu", amp: str = "none") -> dict:  # fmt: skip
    """Median forward+backward seconds of the student's CNN front-end alone, JAX and PyTorch."""
    from stackdistill.models.encoder import FeatureExtractor

    module = FeatureExtractor(s_cfg)
    grad = jax.jit(jax.grad(lambda p, w: jnp.mean(jnp.square(module.apply({"params": p}, w)))))
    params, wav_d = jax.device_put(encoder_params["feature_extractor"]), jax.device_put(wav)
    jax.block_until_ready(grad(params, wav_d))
    out = {"jax_frontend_fwd_bwd_s": median_time(
        lambda: jax.block_until_ready(grad(params, wav_d)), repeats)}  # fmt: skip
    if s_model is not None:
        import torch

        x = torch.from_numpy(wav).to(device)

        def run_torch():
            s_model.zero_grad(set_to_none=True)
            with autocast(device, amp):
                y = s_model.feature_extractor(x)
            y.float().square().mean().backward()
            sync(device)

        run_torch()
        out["torch_frontend_fwd_bwd_s"] = median_time(run_torch, repeats)
    return out


def sync(device: str) -> None:
    """Waits for the GPU's queued work (nothing to wait for on a CPU)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def torch_variants(args) -> list[tuple[str, bool]]:
    """(name, torch.compile?) of the reference variants: eager, and compiled on CUDA/--compile."""
    suffix = "" if args.autocast == "none" else f"+{args.autocast}"
    out = [("eager" + suffix, False)]
    if args.compile or (args.device == "cuda" and not args.no_compile):
        out.append(("compile" + suffix, True))
    return out


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
        "machine": cpu_name() if jax.default_backend() == "cpu" else jax.devices()[0].device_kind,
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
        setup = jax_setup(name, t_cfg, t_params, args.dtype)
        fields, loss, sources = STUDENTS[name]
        state = setup["state"]
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
