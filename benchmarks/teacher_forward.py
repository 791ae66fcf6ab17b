"""HuBERT Base forward (all hidden states), our JAX encoder vs transformers in PyTorch.

    python benchmarks/teacher_forward.py [--batch 4 --seconds 4 --repeats 7 --dtype float32]

Both run the same random-weight HuBERT Base (nothing downloaded) on the same batch, timed
alternately after one warm-up each; prints the medians, audio-seconds per second and the
JAX/PyTorch ratio, and (with --write) appends a row to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import statistics
import tempfile
import time

import harness
import jax
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-torch", action="store_true", help="time JAX only (GPU runs)")
    parser.add_argument("--write", action="store_true", help="append the result to RESULTS.md")
    args = parser.parse_args()

    import transformers

    from stackdistill import models, teacher

    samples = int(args.seconds * 16000)
    rng = np.random.default_rng(0)
    wav = (0.1 * rng.standard_normal((args.batch, samples))).astype(np.float32)
    lengths = np.full((args.batch,), samples, np.int32)

    torch_model = transformers.HubertModel(transformers.HubertConfig()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        torch_model.save_pretrained(tmp)
        cfg, params = teacher.load(tmp, use_cache=False)
    cfg = cfg.replace(dtype=args.dtype)
    params = jax.device_put(params)
    forward = jax.jit(lambda p, w, n: models.encode(cfg, p, w, n).hidden_states)
    wav_d, lengths_d = jax.device_put(wav), jax.device_put(lengths)

    def run_jax() -> float:
        t = time.perf_counter()
        forward(params, wav_d, lengths_d).block_until_ready()
        return time.perf_counter() - t

    def run_torch() -> float:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(wav)
            t = time.perf_counter()
            torch_model(x, output_hidden_states=True)
            return time.perf_counter() - t

    if not args.no_torch:
        import torch

        torch.set_num_threads(args.threads)
        run_torch()
    compile_s = run_jax()
    jax_times, torch_times = [], []
    for _ in range(args.repeats):
        jax_times.append(run_jax())
        if not args.no_torch:
            torch_times.append(run_torch())
    audio = args.batch * args.seconds
    jax_med = statistics.median(jax_times)
    line = (
        f"JAX ({jax.default_backend()}, {args.dtype}): {jax_med:.3f} s/batch, "
        f"{audio / jax_med:.1f} audio-s/s (first call incl. compile {compile_s:.1f} s)"
    )
    print(line)
    row = None
    if not args.no_torch:
        torch_med = statistics.median(torch_times)
        print(
            f"PyTorch ({args.threads} threads): {torch_med:.3f} s/batch, "
            f"{audio / torch_med:.1f} audio-s/s"
        )
        print(f"ratio JAX/PyTorch throughput: {torch_med / jax_med:.2f}x")
        row = (
            f"| {datetime.date.today()} | {harness.cpu_name()} ({os.cpu_count()} cores, load "
            f"{os.getloadavg()[0]:.1f}) | {args.batch} x {args.seconds:g} s, {args.dtype} | "
            f"{jax_med:.2f} s ({audio / jax_med:.1f} audio-s/s) | {torch_med:.2f} s "
            f"({audio / torch_med:.1f} audio-s/s) | {torch_med / jax_med:.2f}x |"
        )
    if args.write and row:
        _append_row(pathlib.Path(__file__).with_name("RESULTS.md"), row, args)


def _append_row(path: pathlib.Path, row: str, args: argparse.Namespace) -> None:
    """Adds `row` to the teacher-forward table of RESULTS.md (creating the section if needed)."""
    header = "## Teacher forward: HuBERT Base, JAX vs PyTorch"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if header not in text:
        text = text.rstrip("\n") + (
            f"\n\n{header}\n\n`python benchmarks/teacher_forward.py --write` (median of "
            f"{args.repeats}, alternating, torch {args.threads} threads)\n\n"
            "| date | machine | batch | JAX | PyTorch | JAX/PyTorch |\n"
            "|---|---|---|---|---|---|\n"
        )
    lines = text.rstrip("\n").split("\n")
    start = lines.index(header)
    end = start + 1
    while end < len(lines) and not lines[end].startswith("## "):
        end += 1
    last_row = max(i for i in range(start, end) if lines[i].startswith("|"))
    lines.insert(last_row + 1, row)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
