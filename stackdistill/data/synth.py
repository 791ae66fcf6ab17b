"""Synthetic speech corpus spoken by espeak-ng: keywords and short sentences, labelled.

    python -m stackdistill.data.synth --out DIR --num 1000 --seed 0 [--noise-snr 10 30]

writes DIR/wav/NNNNNN.wav (16 kHz mono int16) and DIR/manifest.jsonl with, per line: path,
name, num_samples, sample_rate, text, keyword (index into KEYWORDS, -1 for a sentence), speaker
(index into VOICES), voice, phonemes (espeak's IPA; "_" inside a word, " " between espeak's
words, which join unstressed words to the next),
rate, pitch, snr_db. The corpus is a function of (seed, num) alone: utterance i depends only
on (seed, i) and on the fixed chunk of CHUNK_SIZE utterances it is spoken in.
"""

import argparse
import concurrent.futures
import json
import multiprocessing
import os
from typing import Any

import numpy as np
import soundfile as sf
from etils import epath

from stackdistill.data import audio

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SENTENCES = (
    "turn the light on",
    "turn the music off",
    "go left at the next corner",
    "please stop the car",
    "move the box up a little",
    "put it down over there",
    "yes I think so",
    "no not today",
    "the cat sat on the mat",
    "open the window please",
    "what time is it now",
    "call me in the morning",
    "the weather is nice today",
    "read the first page again",
    "she sells sea shells",
    "keep right and slow down",
    "we will go home soon",
    "bring me a cup of tea",
    "the train leaves at nine",
    "set an alarm for seven",
)
VOICES = (
    "en-us",
    "en-us+f2",
    "en-gb-x-rp",
    "en-gb-x-rp+f4",
    "en-gb-scotland+m3",
    "en-029+m1",
    "en+f3",
    "en-us-nyc+m5",
)
CHUNK_SIZE = 200  # utterances spoken per fresh process (espeak-ng carries state between them)
MANIFEST_NAME = "manifest.jsonl"


def utterance_plan(
    seed: int, index: int, sentence_fraction: float, noise_snr_db: tuple[float, float] | None
) -> dict[str, Any]:
    """What utterance `index` says and how: a pure function of (seed, index)."""
    rng = np.random.default_rng([seed, index])
    if rng.random() < sentence_fraction:
        keyword, text = -1, SENTENCES[rng.integers(len(SENTENCES))]
    else:
        keyword = int(rng.integers(len(KEYWORDS)))
        text = KEYWORDS[keyword]
    speaker = int(rng.integers(len(VOICES)))
    plan = {
        "text": text,
        "keyword": keyword,
        "speaker": speaker,
        "voice": VOICES[speaker],
        "rate": int(rng.integers(140, 211)),
        "pitch": int(rng.integers(30, 71)),
        "gain": float(rng.uniform(0.3, 0.9)),
        "silence": rng.uniform(0.05, 0.3, size=2).tolist(),  # seconds before and after
        "snr_db": float(rng.uniform(*noise_snr_db)) if noise_snr_db else None,
        "noise_seed": int(rng.integers(2**31)),
    }
    return plan


def render(plan: dict[str, Any], speech: np.ndarray, sample_rate: int) -> np.ndarray:
    """Speech samples -> the 16 kHz float waveform of the plan: gain, silences, noise."""
    x = audio.resample(audio.to_float(speech), sample_rate)
    x = x * (plan["gain"] / max(float(np.abs(x).max()), 1e-6))
    before, after = (int(s * audio.SAMPLE_RATE) for s in plan["silence"])
    x = np.concatenate([np.zeros(before, np.float32), x, np.zeros(after, np.float32)])
    if plan["snr_db"] is not None:
        noise = np.random.default_rng(plan["noise_seed"]).standard_normal(len(x))
        speech_power = float(np.mean(x**2))
        x = x + noise * np.sqrt(speech_power / 10 ** (plan["snr_db"] / 10))
    return np.clip(x, -1.0, 1.0 - 1 / 32768).astype(np.float32)


def _speak_chunk(out_dir: str, plans: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Worker: speaks a chunk of planned utterances into wav files; returns their labels."""
    from stackdistill.data.espeak import Speaker

    speaker = Speaker.get()
    rows = []
    for index, plan in plans:
        speech = speaker.speak(
            plan["text"], plan["voice"], plan["rate"], plan["pitch"], seed=plan["noise_seed"]
        )
        wave = render(plan, speech, speaker.sample_rate)
        name = f"{index:06d}"
        sf.write(os.path.join(out_dir, "wav", name + ".wav"), wave, audio.SAMPLE_RATE, "PCM_16")
        rows.append(
            {
                "path": f"wav/{name}.wav",
                "name": name,
                "num_samples": len(wave),
                "sample_rate": audio.SAMPLE_RATE,
                "text": plan["text"],
                "keyword": plan["keyword"],
                "speaker": plan["speaker"],
                "voice": plan["voice"],
                "phonemes": speaker.phonemes(plan["text"], plan["voice"]),
                "rate": plan["rate"],
                "pitch": plan["pitch"],
                "snr_db": plan["snr_db"],
            }
        )
    return rows


def generate(
    out_dir: str,
    num: int,
    seed: int = 0,
    *,
    sentence_fraction: float = 0.3,
    noise_snr_db: tuple[float, float] | None = None,
    workers: int | None = None,
) -> str:
    """Speaks `num` utterances into out_dir (a local folder); returns the manifest path."""
    os.makedirs(os.path.join(out_dir, "wav"), exist_ok=True)
    plans = [(i, utterance_plan(seed, i, sentence_fraction, noise_snr_db)) for i in range(num)]
    chunks = [plans[i : i + CHUNK_SIZE] for i in range(0, num, CHUNK_SIZE)]
    workers = workers or min(len(chunks), os.cpu_count() or 1, 4)
    # A fresh spawned process per chunk: espeak-ng state starts clean and JAX threads in the
    # parent are never forked.
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=max(workers, 1),
        mp_context=multiprocessing.get_context("spawn"),
        max_tasks_per_child=1,
    ) as pool:
        results = list(pool.map(_speak_chunk, [out_dir] * len(chunks), chunks))
    manifest = os.path.join(out_dir, MANIFEST_NAME)
    with open(manifest + ".tmp", "w") as f:
        for rows in results:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(manifest + ".tmp", manifest)  # a manifest exists only for a complete corpus
    return manifest


def ensure_corpus(out_dir: str, num: int, seed: int = 0) -> str:
    """The manifest of the corpus in out_dir, generating it first if there is none."""
    from stackdistill import distributed

    manifest = epath.Path(out_dir) / MANIFEST_NAME
    distributed.make_once(
        manifest.exists, lambda: generate(out_dir, num, seed), f"corpus {out_dir}"
    )
    return str(manifest)


def main(argv: list[str] | None = None) -> None:
    """Command line: generate a synthetic corpus."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num", type=int, default=1000, help="number of utterances")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sentence-fraction", type=float, default=0.3)
    parser.add_argument("--noise-snr", type=float, nargs=2, default=None, metavar=("LO", "HI"))
    parser.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
    args = parser.parse_args(argv)
    noise = tuple(args.noise_snr) if args.noise_snr else None
    print(
        generate(
            args.out,
            args.num,
            args.seed,
            sentence_fraction=args.sentence_fraction,
            noise_snr_db=noise,
            workers=args.workers,
        )
    )


if __name__ == "__main__":
    main()
