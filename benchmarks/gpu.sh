#!/usr/bin/env bash
# Everything issue 18 measures on one H100/H200, in two invocations of at most ~8.5 and ~4.5
# minutes (no network needed there):
#
#   bash benchmarks/gpu.sh --prepare   # HERE, once: copies ml_collections (pure Python, absent
#                                      # from the GPU image) into .gpu_deps/ (git-ignored)
#   bash benchmarks/gpu.sh [--out DIR] # THERE, from the repo root, with .gpu_deps carried along:
#                                      # parts 1, 2 and 4 (GPU_BENCH_PARTS=profile,ab)
#   GPU_BENCH_PARTS=torch bash benchmarks/gpu.sh   # THERE, second call: part 3
#
# In bfloat16 at the paper's batch (24 x 15.6 s = 250,000 samples each), random weights:
#   1. benchmarks/profile_step.py, 12 x 384 student: the teacher forward, the live step, live +
#      shared front-end, cached targets, cached targets + features: step times, MFU, and the
#      per-op-category table (convolutions, matmuls, attention, norms, ...) from a trace;
#   2. the same for DistilHuBERT (live, cached + shared);
#   3. benchmarks/step_vs_pytorch.py --device cuda: our step against transformers' HubertModel
#      teacher + the same student and loss in PyTorch (bf16 autocast, eager and torch.compile),
#      in the same process, 12 x 384 then DistilHuBERT; the teacher forwards of both too;
#   4. the fast-path A/B (stackdistill/fastpath.py), each option alone against part 1's
#      default (same flags, batch, dtype): attention=cudnn (teacher forward + cached/shared
#      step), frontend_norm=compute (teacher forward: also the cache-building pass), MaxText's
#      XLA GPU flags, remat=dots_saveable and per-device batch 48 (cached/shared step).
# Outputs (at most 8 files, the device tool's limit): $OUT, else --out DIR, else ./gpu_results:
# env.txt, profile_<student>.md/.json, trace_12x384_live.json.gz (perfetto), ab.md/.json
# (first call); env.txt, torch.log/.json (second call).
# Each part has its own timeout and writes its JSON as it goes: a part cut short keeps what
# it measured and the next still runs. Traces go to a scratch folder (too deep to come back).
# Dry run on a CPU: GPU_BENCH_ALLOW_CPU=1 GPU_BENCH_BATCH=1 GPU_BENCH_SECONDS=1 GPU_BENCH_REPEATS=1
#   GPU_BENCH_TEACHER=tiny GPU_BENCH_MODEL=demo GPU_BENCH_DEVICE=cpu
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
if [[ "${1:-}" == "--out" ]]; then
  out_dir="${OUT:-$2}"
fi
mkdir -p "$out_dir"
scratch="$(mktemp -d)"
py="${PYTHON:-python3}"
batch="${GPU_BENCH_BATCH:-24}"
parts="${GPU_BENCH_PARTS:-profile,ab}"
seconds="${GPU_BENCH_SECONDS:-15.625}"
repeats="${GPU_BENCH_REPEATS:-5}"
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
try:
    import torch, transformers
    print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers",
          transformers.__version__)
except ImportError as e:
    print("no torch/transformers:", e)
print("devices", jax.devices())
if os.environ["GPU_BENCH_ALLOW_CPU"] != "1":
    assert jax.default_backend() == "gpu", f"JAX runs on {jax.default_backend()}, not a GPU"
EOF
} 2>&1 | tee "$out_dir/env.txt"

status=0
profile() {  # profile <student> <timeout s> <configs>
  # Command buffers (CUDA graphs) off for the profile only, so that every kernel carries its
  # HLO instruction in the trace; step_vs_pytorch below times XLA's default setting.
  XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" timeout "$2" "$py" \
    benchmarks/profile_step.py --model "${GPU_BENCH_MODEL:-$1}" \
    --teacher "${GPU_BENCH_TEACHER:-base}" --batch "$batch" --seconds "$seconds" \
    --dtype bfloat16 --steps 3 --configs "$3" --peak-flops 989e12 --out "$scratch/$1" \
    2>&1 | tee "$out_dir/profile_$1.md" || status=$?
  cp "$scratch/$1/profile.json" "$out_dir/profile_$1.json" 2>/dev/null || true
}
ab() {  # ab <name> <timeout s> <configs> <profile_step options...>: one fast-path option
  local name="$1" limit="$2" configs="$3"
  shift 3
  echo "### A/B: $name (batch $batch, $*)" | tee -a "$out_dir/ab.md"
  XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" timeout "$limit" "$py" \
    benchmarks/profile_step.py --model "${GPU_BENCH_MODEL:-12x384}" \
    --teacher "${GPU_BENCH_TEACHER:-base}" --batch "$batch" --seconds "$seconds" \
    --dtype bfloat16 --steps 3 --configs "$configs" --peak-flops 989e12 \
    --out "$scratch/ab_$name" "$@" 2>&1 | grep -v '^|' | tee -a "$out_dir/ab.md" || status=$?
  "$py" - "$scratch/ab_$name/profile.json" "$out_dir/ab.json" "$name" <<'EOF' || true
import json, os, sys
src, dst, name = sys.argv[1:]
merged = json.load(open(dst)) if os.path.exists(dst) else {}
if os.path.exists(src):
    r = json.load(open(src))
    keep = ("step_s", "mfu", "compile_s", "remat")
    merged[name] = {"fastpath": r["fastpath"], "batch": r["batch"],
                    "configs": {k: {f: v.get(f) for f in keep} for k, v in r["configs"].items()}}
json.dump(merged, open(dst, "w"), indent=1)
EOF
}

if [[ ",$parts," == *",profile,"* ]]; then
  profile 12x384 150 teacher,live,live_shared,cached,cached_shared
  trace="$(find "$scratch/12x384/trace_live" -name perfetto_trace.json.gz | head -n 1)" || true
  if [[ -n "$trace" ]]; then cp "$trace" "$out_dir/trace_12x384_live.json.gz"; fi
  profile distilhubert 75 live,cached_shared
fi
if [[ ",$parts," == *",ab,"* ]]; then  # each against part 1's teacher / cached_shared rows
  ab cudnn_attention 75 teacher,cached_shared --attention cudnn
  ab bf16_frontend_norm 50 teacher --frontend-norm compute
  ab xla_gpu_flags 50 cached_shared --xla-gpu-flags
  ab remat_dots 50 cached_shared --remat dots_saveable
  base_batch="$batch"
  batch=$((2 * base_batch))
  ab batch_x2 60 cached_shared
  batch="$base_batch"
fi
if [[ ",$parts," == *",torch,"* ]]; then
  # PyTorch on the same GPU in the same process (JAX does not preallocate then).
  timeout 240 "$py" benchmarks/step_vs_pytorch.py --device "${GPU_BENCH_DEVICE:-cuda}" \
    --autocast bf16 --compile --dtype bfloat16 --batch "$batch" --seconds "$seconds" \
    --repeats "$repeats" --students 12x384,distilhubert --peak-flops 989e12 \
    --json "$out_dir/torch.json" 2>&1 | tee "$out_dir/torch.log" || status=$?
fi

echo
if [[ -f "$out_dir/torch.json" ]]; then
  "$py" - "$out_dir/torch.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['machine']}, batch {r['batch']} x {r['seconds']} s, {r['dtype']}")
print(f"teacher forward: JAX {r['jax_teacher_forward_s']:.3f} s, MFU {r['jax_teacher_mfu']:.1%}"
      + (f"; PyTorch {r['torch_teacher_forward_s']:.3f} s ({r['torch_teacher_best']})"
         if "torch_teacher_forward_s" in r else ""))
for name in ("12x384", "distilhubert"):
    if name in r:
        s = r[name]
        line = (f"{name} step: JAX {s['jax_step_s']:.3f} s, MFU {s['jax_mfu']:.1%}, "
                f"compile {s['jax_compile_s']:.0f} s")
        for v, t in s.get("torch_by_variant", {}).items():
            line += f"; PyTorch {v} {t['step_s']:.3f} s ({t['ratio']:.2f}x ours)"
        print(line)
EOF
elif [[ ",$parts," == *",torch,"* ]]; then
  echo "no PyTorch comparison written (see $out_dir/torch.log)"
fi
rm -rf "$scratch"
exit "$status"
