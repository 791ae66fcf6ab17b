"""Audio manifests: fairseq-style TSV or JSONL, read into records and written for any folder;
the records of a LibriSpeech folder, read from its transcripts.

TSV: the first line is the root folder, then one `relative_path<TAB>num_samples` line per file.
JSONL: one object per line with `path` (relative to the manifest's folder, or absolute/URL) and
any labels. Write one with `python -m stackdistill.data.manifest DIR [--out FILE]`.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import soundfile as sf
from etils import epath

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus")


def _join(root: str, relative: str) -> str:
    """Joins a manifest path to its root unless it is already absolute or a URL."""
    if relative.startswith("/") or "://" in relative:
        return relative
    return str(epath.Path(root) / relative)


def read_manifest(path: str) -> list[dict[str, Any]]:
    """Records (`path`, `name` and labels) listed in a .tsv or .jsonl manifest."""
    lines = epath.Path(path).read_text().splitlines()
    if str(path).endswith(".jsonl"):
        root = str(epath.Path(path).parent)
        records = []
        for line in lines:
            if not line.strip():
                continue
            labels = json.loads(line)
            records.append({"name": labels["path"], **labels, "path": _join(root, labels["path"])})
        return records
    if not lines:
        raise ValueError(f"empty manifest {path}: its first line must be the root folder")
    root = lines[0].strip()
    records = []
    for line in lines[1:]:
        if not line.strip():
            continue
        relative, *rest = line.split("\t")
        record = {"path": _join(root, relative), "name": relative}
        if rest:
            record["num_samples"] = int(rest[0])
        records.append(record)
    return records


def librispeech_records(root: str, subsets: Sequence[str]) -> list[dict[str, Any]]:
    """Utterances of the given subsets of an openslr LibriSpeech folder, from the transcripts.

    Reads `root/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`; each line names an
    utterance `<speaker>-<chapter>-<n>` whose audio is the .flac beside it. Labels: text,
    speaker and chapter (ints), subset.
    """
    root_path = epath.Path(root)
    records = []
    for subset in subsets:
        subset_path = root_path / subset
        if not subset_path.is_dir():
            raise FileNotFoundError(f"LibriSpeech subset {subset!r} not found: {subset_path}")
        for transcript in sorted(subset_path.glob("*/*/*.trans.txt")):
            for line in transcript.read_text().splitlines():
                if not line.strip():
                    continue
                name, _, text = line.strip().partition(" ")
                speaker, chapter, _ = name.split("-")
                records.append(
                    {
                        "path": str(transcript.parent / f"{name}.flac"),
                        "name": name,
                        "text": text,
                        "speaker": int(speaker),
                        "chapter": int(chapter),
                        "subset": subset,
                    }
                )
    return records


def scan_audio(folder: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(readable audio files under folder with their length and rate, unreadable file names)."""
    root = epath.Path(folder)
    paths = sorted(
        folder / name
        for folder, _, names in root.walk()  # epath has no recursive glob (costly on GCS)
        for name in names
        if name.lower().endswith(AUDIO_SUFFIXES)
    )
    entries, unreadable = [], []
    for path in paths:
        relative = str(path.relative_to(root))
        try:
            with path.open("rb") as f:
                info = sf.info(f)
        except Exception:  # anything libsndfile cannot open is left out and reported
            unreadable.append(relative)
            continue
        entries.append(
            {"path": relative, "num_samples": info.frames, "sample_rate": info.samplerate}
        )
    return entries, unreadable


def write_manifest(folder: str, out: str | None = None) -> tuple[str, list[str]]:
    """Writes a manifest of the audio under folder (.jsonl if out says so); returns it and the
    names of unreadable files. Raises ValueError (and writes nothing) if no file is usable."""
    out = out or str(epath.Path(folder) / "manifest.tsv")
    if not epath.Path(folder).is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    entries, unreadable = scan_audio(folder)
    if not entries:
        found = f"{len(unreadable)} unreadable audio files" if unreadable else "no audio files"
        raise ValueError(
            f"no usable audio in {folder} ({found}; looked for {', '.join(AUDIO_SUFFIXES)})"
        )
    if out.endswith(".jsonl"):
        text = "".join(json.dumps(e) + "\n" for e in entries)
    else:
        root = str(epath.Path(folder).resolve()) if "://" not in folder else folder
        text = root + "\n" + "".join(f"{e['path']}\t{e['num_samples']}\n" for e in entries)
    epath.Path(out).write_text(text)
    return out, unreadable


def main(argv: list[str] | None = None) -> None:
    """Command line: write a manifest for an audio folder (exit status 1 if it holds none)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="folder searched recursively for audio files")
    parser.add_argument("--out", default=None, help="manifest file (.tsv or .jsonl)")
    args = parser.parse_args(argv)
    try:
        out, unreadable = write_manifest(args.folder, args.out)
    except (ValueError, FileNotFoundError) as e:
        print(
            f"error: {e}\nNo manifest written: point it at a folder of audio files.",
            file=sys.stderr,
        )
        sys.exit(1)
    for name in unreadable[:10]:
        print(f"unreadable, left out: {name}", file=sys.stderr)
    if len(unreadable) > 10:
        print(f"... and {len(unreadable) - 10} more unreadable files", file=sys.stderr)
    print(out)


if __name__ == "__main__":
    main()
