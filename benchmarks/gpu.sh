#!/usr/bin/env bash
# One prepared GPU benchmark, under 5 minutes on one H100/H200 (no network needed there).
#
#   bash benchmarks/gpu.sh --prepare   # HERE, once: copies ml_collections (pure Python, absent
#                                      # from the GPU image) into .gpu_deps/ (git-ignored)
#   bash benchmarks/gpu.sh             # THERE, from the repo root, with .gpu_deps carried along
#
# Measures, in bfloat16 at the paper's batch (24 x 15.6 s = 250,000 samples each):
#   - the HuBERT Base teacher forward (all hidden states), random weights;
#   - a full distillation step (teacher forward + student forward/backward + AdamW) of the
#     12 x 384 student, then of DistilHuBERT if time is left;
# each as step time (median of 10 after a warm-up), audio-seconds/s and MFU against the dense
# bf16 peak (989 TFLOP/s, H100/H200 SXM) from the analytic FLOP count (stackdistill/flops.py).
# Results: $OUT (if set) or ./gpu_results: gpu.json, step.log, env.txt.
# Dry run on a CPU: GPU_BENCH_ALLOW_CPU=1 GPU_BENCH_BATCH=1 GPU_BENCH_SECONDS=1 GPU_BENCH_REPEATS=1
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--prepare" ]]; then
  src="$(python3 -c 'import ml_collections, os; print(os.path.dirname(ml_collections.__file__))')"
  rm -rf .gpu_deps && mkdir -p .gpu_deps && cp -r "$src" .gpu_deps/
  find .gpu_deps -name __pycache__ -prune -exec rm -rf {} +
  grep -qx '/.gpu_deps/' .git/info/exclude 2>/dev/null || echo '/.gpu_deps/' >> .git/info/exclude
  echo "prepared .gpu_deps ($(du -sh .gpu_deps | cut -f1)); carry it to the GPU machine"
  exit 0
fi

out_dir="${OUT:-$PWD/gpu_results}"
mkdir -p "$out_dir"
py="${PYTHON:-python3}"
batch="${GPU_BENCH_BATCH:-24}"
seconds="${GPU_BENCH_SECONDS:-15.625}"
repeats="${GPU_BENCH_REPEATS:-10}"
export GPU_BENCH_ALLOW_CPU="${GPU_BENCH_ALLOW_CPU:-0}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD:$PWD/.gpu_deps${PYTHONPATH:+:$PYTHONPATH}"

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
    --format=csv,noheader || echo "nvidia-smi failed"
  timeout 60 "$py" - <<'EOF'
import os, jax, flax, optax, ml_collections, numpy
print("python", __import__("sys").version.split()[0], "jax", jax.__version__, "flax",
      flax.__version__, "optax", optax.__version__, "numpy", numpy.__version__)
print("devices", jax.devices())
if os.environ["GPU_BENCH_ALLOW_CPU"] != "1":
    assert jax.default_backend() == "gpu", f"JAX runs on {jax.default_backend()}, not a GPU"
EOF
} 2>&1 | tee "$out_dir/env.txt"

# Both students in one process (the teacher is built and timed once); JSON is rewritten
# after each, so a run stopped by the timeout keeps what it measured.
status=0
timeout 270 "$py" benchmarks/step_vs_pytorch.py --no-torch --dtype bfloat16 \
  --batch "$batch" --seconds "$seconds" --repeats "$repeats" --students 12x384,distilhubert \
  --peak-flops 989e12 --json "$out_dir/gpu.json" 2>&1 | tee "$out_dir/step.log" || status=$?

echo
if [[ -f "$out_dir/gpu.json" ]]; then
  "$py" - "$out_dir/gpu.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['machine']}, batch {r['batch']} x {r['seconds']} s, {r['dtype']}")
print(f"teacher forward: {r['jax_teacher_forward_s']:.3f} s, "
      f"{r['jax_teacher_audio_s_per_s']:.0f} audio-s/s, MFU {r['jax_teacher_mfu']:.1%}")
for name in ("12x384", "distilhubert"):
    if name in r:
        s = r[name]
        print(f"{name} step: {s['jax_step_s']:.3f} s, {s['jax_audio_s_per_s']:.0f} audio-s/s, "
              f"MFU {s['jax_mfu']:.1%} (analytic {s['analytic_flops'] / 1e12:.2f} TFLOP/step, "
              f"compile {s['jax_compile_s']:.0f} s)")
EOF
else
  echo "no results written (see $out_dir/step.log)"
fi
exit "$status"
