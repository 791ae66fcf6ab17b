"""Step time of a pruned student: zero-padded scan vs unscanned narrow layers (issue 24 item 3).

    python benchmarks/pruned_step.py [--repeats 10] [--configs tiny,small]

For each config: random log_alphas keep about half the heads and FFN units (different per
layer, one attention block and one FFN block removed), `pruning.prune.prune` gives the
zero-padded scanned model and `pruning.narrow` the per-layer narrow one. Times one jitted
forward + backward (gradient of a mean-square of the last hidden state w.r.t. all params)
for the unpruned model, the padded pruned one and the narrow one: median of `--repeats`
after one warm-up call, plus the compile time. Prints a markdown table and the load average.
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from stackdistill import models
from stackdistill.models.config import EncoderConfig
from stackdistill.pruning import hardconcrete, narrow, params, prune

CONFIGS = {
    "tiny": dict(
        hidden_size=32, num_layers=3, num_heads=4, intermediate_size=64, conv_dim=(16, 12, 16),
        conv_kernel=(10, 3, 2), conv_stride=(5, 2, 2), num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4,
    ),
    "small": dict(
        hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024,
        conv_dim=(128,) * 7, num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=4,
    ),  # HuBERT's CNN geometry (20 ms frames) at a quarter of its channels
    "wide": dict(
        hidden_size=512, num_layers=4, num_heads=8, intermediate_size=2048,
        conv_dim=(64,) * 7, num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=8,
    ),  # transformer-heavy: the CNN small, the layers HuBERT Base-like
    "deep": dict(
        hidden_size=64, num_layers=12, num_heads=4, intermediate_size=256,
        conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    ),  # 12 layers: what 12 distinct layer bodies cost in compile time
}  # fmt: skip


def log_alphas(cfg: EncoderConfig, seed: int = 0) -> dict:
    """About half of the heads / FFN units kept per layer, layer 1's attention and 2's FFN off."""
    rng = np.random.default_rng(seed)
    n = cfg.num_layers

    def half(shape, keep):
        return jnp.asarray(np.where(rng.uniform(size=shape) < keep, 8.0, -8.0), jnp.float32)

    la = {
        "conv": [half((c,), 0.8) for c in cfg.conv_dim],
        "head": half((n, cfg.num_heads), 0.5),
        "interm": half((n, cfg.intermediate_size), rng.uniform(0.3, 0.7, (n, 1))),
        "attlayer": jnp.full((n, 1), 8.0).at[1].set(-8.0),
        "ffnlayer": jnp.full((n, 1), 8.0).at[min(2, n - 1)].set(-8.0),
    }
    la["head"] = la["head"].at[:, 0].set(8.0)  # every layer keeps a head
    la["conv"] = [c.at[0].set(8.0) for c in la["conv"]]
    return la


def time_fn(fn, args, repeats):
    """(compile seconds, median step seconds) of a jitted fn."""
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return compile_s, float(np.median(times))


def bench(name: str, repeats: int, seconds: float) -> list[str]:
    cfg = EncoderConfig(**CONFIGS[name])
    samples = int(seconds * 16000)
    p = models.init_params(cfg, jax.random.key(0), samples)
    pcfg, pp = prune.prune(cfg, p, log_alphas(cfg))
    layers = narrow.narrow_layers(pcfg, pp)
    wav = 0.3 * jax.random.normal(jax.random.key(1), (2, samples))
    lengths = jnp.array([samples, samples * 3 // 4], jnp.int32)

    def scanned_loss(c):
        def loss(q):
            return jnp.mean(jnp.square(models.Encoder(c).apply({"params": q}, wav, lengths)[0][-1]))

        return jax.value_and_grad(loss)

    def narrow_loss(q):
        front, ls = q
        return jnp.mean(jnp.square(narrow.encode(pcfg, front, ls, wav, lengths)[0][-1]))

    front = {k: v for k, v in pp.items()}
    rows = []
    det = hardconcrete.deterministic_gates(log_alphas(cfg))
    kept = float(params.count(cfg, **prune.kept_units(cfg, det)))
    full = params.teacher_num_params(cfg)
    for label, fn, args in (
        ("unpruned, scanned", scanned_loss(cfg), (p,)),
        ("pruned, zero-padded scan", scanned_loss(pcfg), (pp,)),
        ("pruned, narrow unscanned", jax.value_and_grad(narrow_loss), ((front, layers),)),
    ):
        compile_s, step_s = time_fn(fn, args, repeats)
        rows.append(f"| {name} | {label} | {step_s * 1e3:.1f} | {compile_s:.1f} |")
    rows.append(f"| {name} | (kept params {kept:.0f} of {full}) | | |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--configs", default="tiny,small")
    ap.add_argument("--seconds", type=float, default=1.0, help="audio per utterance (batch 2)")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}, backend {jax.default_backend()}")
    print(f"batch 2 x {args.seconds} s (second utterance 3/4 long), float32")
    print("| config | model | fwd+bwd ms (median) | compile s |\n|---|---|---|---|")
    for name in args.configs.split(","):
        for row in bench(name, args.repeats, args.seconds):
            print(row, flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
