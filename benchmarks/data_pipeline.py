"""Input pipeline throughput: audio-seconds per second delivered, with 0 and 2 worker processes.

    python benchmarks/data_pipeline.py [--corpus /tmp/stackdistill_synth_1000] [--batches 60]

Reads the synthetic espeak-ng corpus (1,000 utterances, generated on first use) through the
full pipeline at the default crop (250,000 samples), batch 8, shuffled, repeated. Its
utterances are short (1-3 s), so a second corpus closer to LibriSpeech is read too: 200 flac
files of ~20 s in the openslr layout, each a concatenation of synthetic utterances, so that
every one is decoded from flac and randomly cropped. Reports real (unpadded) audio-seconds per
second and padded samples per second, after a warm-up that absorbs the worker start. Prints a
markdown section for benchmarks/RESULTS.md.

`--per-core` (benchmarks/input_rates.py) then times each input format on one thread in CPU
seconds: flac at 16 kHz (decode + crop) and at 24 kHz (decode + resample + crop), the packed
ArrayRecord shards of stackdistill/data/pack.py, and teacher-target shards of HuBERT Base's
size, and says how many host cores a GPU needs at the step rates measured on an H200.
"""

import argparse
import datetime
import os
import platform
import time

import harness
import numpy as np
import soundfile as sf
from input_rates import cores_table, per_core_rates

from stackdistill import data
from stackdistill.data import synth

STEP_AUDIO_SECONDS_PER_SECOND = 3.0  # the distillation step on this CPU (issue 4)


def librispeech_like(manifest: str, out_dir: str, num_files: int = 200) -> str:
    """A LibriSpeech-layout folder of ~20 s flac files made from the synthetic utterances."""
    folder = os.path.join(out_dir, "train-clean-100", "1", "1")
    transcript = os.path.join(folder, "1-1.trans.txt")
    if os.path.exists(transcript):
        return out_dir
    os.makedirs(folder, exist_ok=True)
    records = data.read_manifest(manifest)
    lines = []
    for n in range(num_files):
        parts = [sf.read(records[(n * 13 + k) % len(records)]["path"])[0] for k in range(13)]
        name = f"1-1-{n:04d}"
        sf.write(os.path.join(folder, name + ".flac"), np.concatenate(parts), 16_000)
        lines.append(f"{name} SYNTHETIC")
    with open(transcript, "w") as f:
        f.write("\n".join(lines) + "\n")
    return out_dir


def measure(cfg, batches: int, warmup: int) -> dict[str, float]:
    """Throughput of one pipeline configuration after `warmup` batches."""
    loader = data.make_loader(cfg, process_index=0, process_count=1)
    start = time.perf_counter()
    for _ in range(warmup):
        next(loader)
    first = time.perf_counter() - start
    seconds = padded = 0.0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(loader)
        seconds += data.audio_seconds(batch)
        padded += batch["audio"].size
    elapsed = time.perf_counter() - start
    loader.close()
    return {
        "warmup_s": first,
        "audio_s_per_s": seconds / elapsed,
        "padded_samples_per_s": padded / elapsed,
        "batches_per_s": batches / elapsed,
    }


def main() -> None:
    """Runs the benchmark and prints the results section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="/tmp/stackdistill_synth_1000")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--per-core", action="store_true", help="per-core rates of each format")
    parser.add_argument("--per-core-only", action="store_true", help="skip the loader table")
    parser.add_argument("--records", type=int, default=40, help="per-core: records per format")
    args = parser.parse_args()

    start = time.perf_counter()
    manifest = synth.ensure_corpus(args.corpus, 1000, seed=0)
    corpus_s = time.perf_counter() - start
    num_utterances = sum(1 for _ in open(manifest))
    long_corpus = librispeech_like(manifest, args.corpus + "_librispeech_like")

    if args.per_core or args.per_core_only:
        rates = per_core_rates(long_corpus, args.corpus + "_formats", args.records)
        print(cores_table(rates, f"{harness.cpu_name()}, {os.cpu_count()} cores", args.records))
        if args.per_core_only:
            return
    rows = []
    for corpus in ("synthetic", "librispeech-like"):
        for workers in args.workers:
            cfg = data.default_config()
            cfg.update(batch_size=8, num_workers=workers)
            if corpus == "synthetic":
                cfg.update(source="synthetic", path=args.corpus)
            else:
                cfg.update(source="librispeech", path=long_corpus, subsets=("train-clean-100",))
            result = measure(cfg, args.batches, args.warmup)
            rows.append((corpus, workers, result))
            print(f"{corpus} workers={workers}: {result}", flush=True)

    command = "python benchmarks/data_pipeline.py " + " ".join(
        f"--{k}={v}" for k, v in (("batches", args.batches), ("warmup", args.warmup))
    )
    machine = f"{harness.cpu_name()}, {os.cpu_count()} cores"
    print("\n## Data pipeline throughput (benchmarks/data_pipeline.py)\n")
    print(f"- Command: `{command}`")
    print(f"- Machine: {machine}, shared with other jobs; Python {platform.python_version()}")
    print(f"- Date: {datetime.date.today().isoformat()}")
    print(
        f"- Corpus: {num_utterances} espeak-ng utterances (synth seed 0, words and short"
        f" sentences, ~1-3 s each), {corpus_s:.1f} s to obtain (0 if already there);"
        " LibriSpeech-like: 200 flac files of 13 of those utterances (~20 s) each. Crop"
        " 250,000 samples, batch 8, shuffled, padded to 250,000."
    )
    print(
        "\n| corpus | workers | audio-s/s | x step (3 audio-s/s) | padded Msamples/s |"
        " batches/s | warm-up (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for corpus, workers, r in rows:
        print(
            f"| {corpus} | {workers} | {r['audio_s_per_s']:.0f} |"
            f" {r['audio_s_per_s'] / STEP_AUDIO_SECONDS_PER_SECOND:.0f}x |"
            f" {r['padded_samples_per_s'] / 1e6:.1f} | {r['batches_per_s']:.1f} |"
            f" {r['warmup_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
