"""Tiny copies of the SUPERB datasets, laid out exactly like the real ones, spoken by espeak-ng.

Each `make_*` builds one dataset under a folder and returns its paths and what the builder put
where (the ground truth the readers are checked against). Folder and file names, list, CSV
and label-file formats follow the released datasets (and, for SNIPS, s3prl's preprocessing).
"""

from __future__ import annotations

import csv
import hashlib
import pathlib
import re
import uuid

import numpy as np
import soundfile as sf

from stackdistill.data import audio, synth
from stackdistill.data.espeak import Speaker


def speak(text: str, voice_index: int, rate: int = 190) -> np.ndarray:
    """16 kHz float speech of `text` in one of the synthetic corpus's voices."""
    speaker = Speaker.get()
    voice = synth.VOICES[voice_index % len(synth.VOICES)]
    samples = speaker.speak(text.lower(), voice, rate=rate, seed=voice_index + 1)
    x = audio.resample(audio.to_float(samples), speaker.sample_rate)
    return (0.7 * x / max(float(np.abs(x).max()), 1e-6)).astype(np.float32)


def write(path: pathlib.Path, samples: np.ndarray, fmt: str = "WAV") -> pathlib.Path:
    """16-bit mono 16 kHz audio file (WAV or FLAC), parents created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, audio.SAMPLE_RATE, "PCM_16", format=fmt)
    return path


# ------------------------------------------------------------------- Speech Commands v0.01


def which_set(file_name: str) -> str:
    """The dataset README's rule that wrote validation_list.txt / testing_list.txt."""
    base = re.sub(r"_nohash_.*$", "", file_name)
    percent = (int(hashlib.sha1(base.encode()).hexdigest(), 16) % (2**27)) * (100.0 / (2**27 - 1))
    return "validation" if percent < 10 else "testing" if percent < 20 else "training"


def _speakers_by_set(wanted: dict[str, int]) -> dict[str, list[str]]:
    """Deterministic 8-hex-digit speaker ids, as many as wanted in each list."""
    found: dict[str, list[str]] = {k: [] for k in wanted}
    for i in range(10_000):
        speaker = hashlib.md5(str(i).encode()).hexdigest()[:8]
        kind = which_set(f"{speaker}_nohash_0.wav")
        if len(found[kind]) < wanted[kind]:
            found[kind].append(speaker)
        if all(len(found[k]) == wanted[k] for k in wanted):
            return found
    raise RuntimeError("not enough speaker ids")


def make_speech_commands(root: pathlib.Path) -> dict:
    """speech_commands_v0.01/ and speech_commands_test_set_v0.01/ with 2 unknown words."""
    train_root = root / "speech_commands_v0.01"
    test_root = root / "speech_commands_test_set_v0.01"
    words = [*synth.KEYWORDS, "bed", "cat"]  # 10 commands and two auxiliary words
    speakers = _speakers_by_set({"training": 3, "validation": 1, "testing": 1})
    lists: dict[str, list[str]] = {"validation": [], "testing": []}
    for kind, ids in speakers.items():
        for s, speaker in enumerate(ids):
            for word in words:
                name = f"{word}/{speaker}_nohash_0.wav"
                write(train_root / name, speak(word, s + (3 if kind != "training" else 0)))
                if kind in lists:
                    lists[kind].append(name)
    for kind, names in lists.items():
        (train_root / f"{kind}_list.txt").write_text("".join(n + "\n" for n in sorted(names)))
    rng = np.random.default_rng(0)
    noise = {"white_noise.wav": 3.0, "pink_noise.wav": 2.0}
    for name, seconds in noise.items():
        samples = 0.1 * rng.standard_normal(int(seconds * audio.SAMPLE_RATE))
        write(train_root / "_background_noise_" / name, samples.astype(np.float32))
    (train_root / "_background_noise_" / "README.md").write_text("background noise clips\n")
    (train_root / "README.md").write_text("Speech Commands v0.01\n")
    test_speaker = hashlib.md5(b"test").hexdigest()[:8]
    for word in synth.KEYWORDS:
        write(test_root / word / f"{test_speaker}_nohash_0.wav", speak(word, 7))
    for i, word in enumerate(("bed", "cat")):
        write(test_root / "_unknown_" / f"{word}_{test_speaker}_nohash_{i}.wav", speak(word, 7))
    for i in range(2):
        samples = 0.05 * rng.standard_normal(audio.SAMPLE_RATE)
        write(test_root / "_silence_" / f"silence_{i}_nohash_0.wav", samples.astype(np.float32))
    return {
        "path": train_root,
        "test_path": test_root,
        "sizes": {"train": 3 * 12 + 2, "dev": 12 + 2, "test": 10 + 2 + 2},
        "lists": lists,
    }


# --------------------------------------------------------------------------- LibriSpeech

LEXICON = {
    "TURN": "T ER1 N",
    "THE": "DH AH0",
    "LIGHT": "L AY1 T",
    "ON": "AA1 N",
    "MUSIC": "M Y UW1 Z IH0 K",
    "OFF": "AO1 F",
    "PLEASE": "P L IY1 Z",
    "STOP": "S T AA1 P",
    "CAR": "K AA1 R",
    "OPEN": "OW1 P AH0 N",
    "WINDOW": "W IH1 N D OW0",
    "CAT": "K AE1 T",
    "SAT": "S AE1 T",
    "MAT": "M AE1 T",
}
OTHER_LEXICON = {"WHAT": "W AH1 T", "TIME": "T AY1 M", "IS": "IH1 Z", "IT": "IH1 T", "NOW": "N AW1"}
LIBRI_SENTENCES = (
    "TURN THE LIGHT ON",
    "TURN THE MUSIC OFF",
    "PLEASE STOP THE CAR",
    "OPEN THE WINDOW PLEASE",
    "THE CAT SAT ON THE MAT",
    "WHAT TIME IS IT NOW",
)
LIBRI_LAYOUT = {"train-clean-100": ((19, 198), (26, 495)), "dev-clean": ((84, 121123),),
                "test-clean": ((61, 70968),)}  # fmt: skip
UTTERANCES_PER_CHAPTER = 3


def make_librispeech(root: pathlib.Path) -> dict:
    """LibriSpeech/<subset>/<speaker>/<chapter>/ with .flac and .trans.txt, and 2 lexicons."""
    libri = root / "LibriSpeech"
    texts: dict[str, str] = {}
    k = 0
    for subset, chapters in LIBRI_LAYOUT.items():
        for speaker, chapter in chapters:
            folder = libri / subset / str(speaker) / str(chapter)
            lines = []
            for n in range(UTTERANCES_PER_CHAPTER):
                name, text = f"{speaker}-{chapter}-{n:04d}", LIBRI_SENTENCES[k % 6]
                write(folder / f"{name}.flac", speak(text, speaker), "FLAC")
                lines.append(f"{name} {text}\n")
                texts[name] = text
                k += 1
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    # Two files as s3prl uses (200k-g2p, then allothers-g2p); a word listed again later, and
    # a second pronunciation of THE, must not replace the first.
    main = root / "librispeech-lexicon-200k-g2p.txt"
    main.write_text("".join(f"{w}\t{p}\n" for w, p in LEXICON.items()) + "THE\tDH IY0\n")
    other = root / "librispeech-lexicon-allothers-g2p.txt"
    other.write_text("".join(f"{w}\t{p}\n" for w, p in OTHER_LEXICON.items()) + "TURN\tT R N\n")
    return {
        "path": libri,
        "lexicon": [str(main), str(other)],
        "texts": texts,
        "sizes": {"train": 6, "dev": 3, "test": 3},
    }


# ------------------------------------------------------------------------------ VoxCeleb1


def make_voxceleb1(root: pathlib.Path, s3prl_layout: bool = False) -> dict:
    """VoxCeleb1/wav/idXXXXX/<video>/<n>.wav (or dev/wav + test/wav) and iden_split.txt."""
    vox = root / "VoxCeleb1"
    lines, sizes = [], {"train": 0, "dev": 0, "test": 0}
    for s, speaker in enumerate(("id10001", "id10002", "id10003")):
        part = ("dev" if s < 2 else "test") if s3prl_layout else ""
        for v, video in enumerate(("1zcIwhmdeo4", "7gWzIy6yIIk")):
            for n in (1, 2):
                entry = f"{speaker}/{video}/{n:05d}.wav"
                text = synth.SENTENCES[(s + 2 * v + n) % len(synth.SENTENCES)]
                write(vox / part / "wav" / entry, speak(text, s))
                split = 1 if (v, n) in ((0, 1), (0, 2)) else 2 if n == 1 else 3
                lines.append(f"{split} {entry}\n")
                sizes[("train", "dev", "test")[split - 1]] += 1
    split_file = root / "iden_split.txt"
    split_file.write_text("".join(lines))
    return {"path": vox, "split_file": split_file, "sizes": sizes}


# --------------------------------------------------------------- Fluent Speech Commands

COMMANDS = (
    ("Turn on the lights", "activate", "lights", "none"),
    ("Turn off the lights", "deactivate", "lights", "none"),
    ("Turn on the lights in the kitchen", "activate", "lights", "kitchen"),
    ("Increase the volume", "increase", "volume", "none"),
    ("Decrease the heating in the bedroom", "decrease", "heat", "bedroom"),
    ("Play the music", "activate", "music", "none"),
)
FSC_SPLITS = {"train": (("2BqVo8kVB2Skwgyb", 6), ("35v28XaVEns4WXOv", 6)),
              "valid": (("4aGjX3AG5xcxeL7a", 3),), "test": (("52XVOeXMXYuZ6Y4E", 3),)}  # fmt: skip


def make_fluent_commands(root: pathlib.Path) -> dict:
    """fluent_speech_commands_dataset/ with data/*_data.csv and wavs/speakers/<id>/."""
    fsc = root / "fluent_speech_commands_dataset"
    (fsc / "data").mkdir(parents=True)
    for split, speakers in FSC_SPLITS.items():
        rows = []
        for s, (speaker, count) in enumerate(speakers):
            for c in range(count):
                text, action, obj, location = COMMANDS[(c + s) % len(COMMANDS)]
                name = uuid.uuid5(uuid.NAMESPACE_URL, f"{speaker}/{c}")
                rel = f"wavs/speakers/{speaker}/{name}.wav"
                write(fsc / rel, speak(text, c + s))
                rows.append([len(rows), rel, speaker, text, action, obj, location])
        with open(fsc / "data" / f"{split}_data.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["", "path", "speakerId", "transcription", "action", "object",
                             "location"])  # fmt: skip
            writer.writerows(rows)
    (fsc / "readme.md").write_text("Fluent Speech Commands\n")
    return {"path": fsc, "sizes": {"train": 12, "dev": 3, "test": 3}}


# ----------------------------------------------------------------------------- IEMOCAP

EMOTIONS = ("neu", "hap", "exc", "ang", "sad", "fru", "xxx", "neu")  # the last has no wav
KEPT_PER_SESSION = 5


def _emo_line(start: float, name: str, emotion: str) -> str:
    return (
        f"[{start:.4f} - {start + 1.5:.4f}]\t{name}\t{emotion}\t[2.5000, 3.0000, 2.5000]\n"
        f"C-E1:\tNeutral;\t()\nC-E2:\tNeutral;\t()\nA-E3:\tval 3; act 2; dom  2;\t()\n\n"
    )


def make_iemocap(root: pathlib.Path) -> dict:
    """IEMOCAP_full_release/Session1..5 with EmoEvaluation labels and sentences/wav."""
    release = root / "IEMOCAP_full_release"
    labels = {}
    for session in range(1, 6):
        dialog = f"Ses0{session}F_impro01"
        emo_dir = release / f"Session{session}" / "dialog" / "EmoEvaluation"
        (emo_dir / "Categorical").mkdir(parents=True)
        text = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        for i, emotion in enumerate(EMOTIONS):
            name = f"{dialog}_{'FM'[i % 2]}{i:03d}"
            text += _emo_line(2.0 * i, name, emotion)
            if i < len(EMOTIONS) - 1:
                wav_dir = release / f"Session{session}" / "sentences" / "wav" / dialog
                write(wav_dir / f"{name}.wav", speak(synth.SENTENCES[i], session + i))
                labels[name] = emotion
        (emo_dir / f"{dialog}.txt").write_text(text)
        # Not label files: a subfolder's per-annotator file and a macOS resource fork.
        (emo_dir / "Categorical" / f"{dialog}_e1_cat.txt").write_text(
            _emo_line(0.0, f"{dialog}_F000", "sad")
        )
        (emo_dir / f"._{dialog}.txt").write_bytes(b"\x00\x05\x16\x07\xff\xfe[")
    return {"path": release, "labels": labels, "per_session": KEPT_PER_SESSION}


# ---------------------------------------------------------------------------- Audio SNIPS

SNIPS_SENTENCES = (
    ("PLAY YESTERDAY BY THE BEATLES", "O track O artist artist", "PlayMusic"),
    ("ADD THIS SONG TO MY ROCK PLAYLIST", "O O music_item O playlist_owner playlist O",
     "AddToPlaylist"),
    ("WHAT IS THE WEATHER IN PARIS ?", "O O O O O city O", "GetWeather"),
    ("BOOK A TABLE FOR TWO", "O O O O party_size_number", "BookRestaurant"),
)  # fmt: skip
SNIPS_SPEAKERS = ("Joanna", "Salli", "Amy", "Brian")  # 2 train, 1 valid, 1 test speakers
SNIPS_COUNTS = {"train": 3, "valid": 2, "test": 2}
SLOTS = ("O", "artist", "playlist", "music_item", "track", "city", "playlist_owner",
         "party_size_number")  # fmt: skip


def make_snips(root: pathlib.Path) -> dict:
    """SNIPS/{train,valid,test}/<Speaker>-snips-<split>-<n>.wav, all.iob.snips.txt, slots.txt."""
    snips = root / "SNIPS"
    lines, utterances = [], {}
    for split, count in SNIPS_COUNTS.items():
        for s, speaker in enumerate(SNIPS_SPEAKERS):
            for n in range(count):
                uid = f"{speaker}-snips-{split}-{n}"
                text, slots, intent = SNIPS_SENTENCES[(n + (split == "test")) % 4]
                write(snips / split / f"{uid}.wav", speak(text.replace(" ?", ""), s))
                lines.append(f"{uid} BOS {text} EOS\tO {slots} {intent}\n")
                utterances[uid] = (text, slots, intent)
    write(snips / "train" / "Joanna-snips-train-99.wav", speak("no label", 0))  # not in text
    (snips / "all.iob.snips.txt").write_text("".join(lines))
    (snips / "slots.txt").write_text("\n".join(SLOTS))
    sizes = {"train": 2 * 3, "dev": 2, "test": 2}
    return {"path": snips, "utterances": utterances, "sizes": sizes}


# --------------------------------------------------------------------------- QUESST 2014

# (query word, the documents' sentences it occurs in): docs are sentences of other voices
QUESST_DOCS = (
    "turn the light on", "please stop the car", "open the window please",
    "the cat sat on the mat", "what time is it now", "turn the music off",
)  # fmt: skip
QUESST_QUERIES = {"dev": ("window", "music"), "eval": ("light", "stop")}


def make_quesst14(root: pathlib.Path) -> dict:
    """quesst14Database/ with Audio/, dev_queries/, eval_queries/ and scoring/ (lists, rttm).

    English lines as QUESST lists them (`quesst14Database/Audio/quesst14_00001.wav nnenglish`),
    plus one non-English utterance and query per list whose audio is never read.
    """
    db = root / "quesst14Database"
    scoring = db / "scoring"
    scoring.mkdir(parents=True)
    docs = []
    for i, text in enumerate(QUESST_DOCS, start=1):
        name = f"quesst14_{i:05d}"
        write(db / "Audio" / f"{name}.wav", speak(text, i % 4 + 1))
        docs.append((name, text, "nnenglish"))
    docs.append((f"quesst14_{len(docs) + 1:05d}", "", "nnbasque"))
    lines = [f"quesst14Database/Audio/{n}.wav {lang}\n" for n, _, lang in docs]
    (scoring / "language_key_utterances.lst").write_text("".join(lines))
    sizes = {"docs": len(QUESST_DOCS)}
    for split, words in QUESST_QUERIES.items():
        queries, rttm = [], []
        for j, word in enumerate((*words, "basque"), start=1):
            name = f"quesst14_{split}_{j:04d}"
            english = word != "basque"
            if english:
                write(db / f"{split}_queries" / f"{name}.wav", speak(word, 0))
            queries.append(f"quesst14Database/{split}_queries/{name}.wav "
                           f"{'nnenglish' if english else 'nnbasque'}\n")  # fmt: skip
            hits = [n for n, text, _ in docs if word in text.split()] if english else [docs[-1][0]]
            rttm += [f"LEXEME {n} 1 0.50 0.40 {name} lex <NA> <NA>\n" for n in hits]
        (scoring / f"language_key_{split}.lst").write_text("".join(queries))
        truth = scoring / f"groundtruth_quesst14_{split}"
        truth.mkdir()
        (truth / f"quesst14_{split}.rttm").write_text("".join(rttm))
        sizes["dev" if split == "dev" else "test"] = len(words)
    return {"path": db, "sizes": sizes}


# ------------------------------------------------------------------- VoxCeleb1 for ASV

SV_TRAIN_SPEAKERS = ("id10001", "id10002", "id10003", "id10004")
SV_TEST_SPEAKERS = ("id10270", "id10271", "id10272")


def make_voxceleb1_sv(root: pathlib.Path) -> dict:
    """VoxCeleb1/dev/wav and test/wav (s3prl's layout) and voxceleb1_test_v2.txt, all pairs.

    Every file is two sentences (over the 2 s minimum) except one short word per training
    speaker's first video, which the reader must drop.
    """
    vox = root / "VoxCeleb1"
    n_sentences = len(synth.SENTENCES)
    for s, speaker in enumerate(SV_TRAIN_SPEAKERS):
        for v, video in enumerate(("1zcIwhmdeo4", "7gWzIy6yIIk")):
            for n in (1, 2):
                text = [synth.SENTENCES[(s + 2 * v + n + k) % n_sentences] for k in (0, 3)]
                samples = speak(". ".join(text), s, rate=120)
                write(vox / "dev/wav" / speaker / video / f"{n:05d}.wav", samples)
        write(vox / "dev/wav" / speaker / "1zcIwhmdeo4/00003.wav", speak("yes", s))
    entries = []
    for s, speaker in enumerate(SV_TEST_SPEAKERS):
        for v, video in enumerate(("x6uYqmx31kE", "8jEAjG6SegY")):
            entry = f"{speaker}/{video}/{v + 1:05d}.wav"
            text = [synth.SENTENCES[(s + v + k) % n_sentences] for k in (1, 4)]
            write(vox / "test/wav" / entry, speak(". ".join(text), 4 + s, rate=120))
            entries.append(entry)
    lines = [
        f"{int(a.split('/')[0] == b.split('/')[0])} {a} {b}\n"
        for i, a in enumerate(entries)
        for b in entries[i + 1 :]
    ]
    trials = root / "voxceleb1_test_v2.txt"
    trials.write_text("".join(lines))
    sizes = {"train": 4 * 4, "test": len(entries), "pairs": len(lines)}
    return {"path": vox, "trials": trials, **sizes}


# ------------------------------------------------------------------- Libri2Mix for SD

SD_RECORDINGS = {"train": 4, "dev": 2, "test": 2}


def make_libri2mix_sd(root: pathlib.Path) -> dict:
    """libri2mix_sd/{train,dev,test}/ as s3prl's prepare_diarization.py writes them: wav.scp,
    segments, utt2spk, reco2dur, spk2utt and rttm, over 2-speaker mixtures in wav/.

    Speaker 1 talks from 0 s, speaker 2 starts half-way through speaker 1's sentence (overlap).
    """
    base = root / "libri2mix_sd"
    n = len(synth.SENTENCES)
    for split, count in SD_RECORDINGS.items():
        folder = base / split
        files = {k: [] for k in ("wav.scp", "segments", "utt2spk", "reco2dur", "rttm")}
        for i in range(count):
            s1, s2 = f"{100 + 2 * i}", f"{101 + 2 * i}"
            a = speak(synth.SENTENCES[i % n], 2 * i % 8)
            b = speak(synth.SENTENCES[(i + 3) % n], (2 * i + 1) % 8)
            offset = len(a) // 2
            mix = np.zeros(max(offset + len(b), len(a)), np.float32)
            mix[: len(a)] += a
            mix[offset : offset + len(b)] += b
            rec = f"{s1}-{i}_{s2}-{i}"
            wav = write(folder / "wav" / f"{rec}.wav", 0.5 * mix)
            files["wav.scp"].append(f"{rec} {wav}")
            files["reco2dur"].append(f"{rec} {len(mix) / audio.SAMPLE_RATE:.4f}")
            for spk, start, length in ((s1, 0, len(a)), (s2, offset, len(b))):
                st, et = start / audio.SAMPLE_RATE, (start + length) / audio.SAMPLE_RATE
                utt = f"{spk}_{rec}"
                files["segments"].append(f"{utt} {rec} {st:.2f} {et:.2f}")
                files["utt2spk"].append(f"{utt} {spk}")
                files["rttm"].append(
                    f"SPEAKER {rec} 1 {st:.2f} {et - st:.2f} <NA> <NA> {spk} <NA> <NA>"
                )
        for name, lines in files.items():
            (folder / name).write_text("\n".join(sorted(lines)) + "\n")
    return {"path": base, "sizes": dict(SD_RECORDINGS)}
