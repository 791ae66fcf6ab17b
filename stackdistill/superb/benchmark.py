"""SUPERB's tasks on the datasets' own layouts: readers (superb/datasets) wired to heads.

Each builder turns `config.superb.<task>` (paths only, for a user) into a `Task` with the split,
label, head and metric rules of s3prl's recipe, its protocol written out for results.json and
every known deviation listed:
- PR: LibriSpeech + lexicon phones, linear CTC (libriphone.yaml `FrameLevel`), PER;
- ASR: LibriSpeech characters, 2-layer BiLSTM CTC, WER without a language model;
- KS: Speech Commands v0.01, 12 classes, class-balanced sampling, accuracy;
- SID: VoxCeleb1 iden_split, accuracy;  IC: Fluent Speech Commands, all three slots right;
- ER: IEMOCAP, one head per fold (leave one session out), mean accuracy;
- SF: Audio SNIPS, characters + slot tags, BiLSTM CTC, slot-type F1 and slot-value CER;
- QbE: QUESST 2014 English queries, DTW on one hidden state, MTWV (superb/qbe.py, no head);
- ASV: VoxCeleb1 dev speakers, x-vector + AM-softmax, EER of the trial list (superb/asv.py);
- SD: Libri2Mix as s3prl prepares it, LSTM + PIT, DER (superb/sd.py).
CTC vocabularies are the reader's tokens after the blank (id 0); PR and SF targets end with
`<eos>`, as s3prl's text encoders add it, and decoding stops there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from stackdistill.data.labels import BLANK
from stackdistill.superb import tasks
from stackdistill.superb.config import S3PRL_FILES, deviations
from stackdistill.superb.datasets import (
    Dataset,
    fluent_commands,
    iemocap,
    libri2mix,
    librispeech,
    quesst14,
    snips,
    speech_commands,
    voxceleb1,
)
from stackdistill.superb.sf_metrics import EOS
from stackdistill.superb.tasks import Task

# Shared by every SUPERB task here (not options of s3prl's recipes that we follow).
COMMON_DEVIATIONS = (
    "batches padded to a geometric series of lengths, sorted within windows "
    "(s3prl pads to the longest utterance)",
)


def _utterance_task(
    name: str, data: Dataset, hp: ml_collections.ConfigDict, extra: Sequence[str] = ()
) -> Task:
    """Mean-pool + linear per label group, accuracy (an utterance is right if all are)."""
    index = [{label: i for i, label in enumerate(names)} for names in data.classes]
    keys = data.label_keys
    return Task(
        name,
        "utterance",
        "accuracy",
        data.splits,
        lambda r: [idx[r[k]] for idx, k in zip(index, keys)],
        data.classes,
        notes=f"{', '.join(keys)}: {', '.join(str(len(c)) for c in data.classes)} classes",
        protocol=data.protocol,
        deviations=(*deviations(name, hp), *COMMON_DEVIATIONS, *extra),
    )


def _ctc_task(
    name: str,
    data: Dataset,
    hp: ml_collections.ConfigDict,
    metric: str,
    head: str,
    eos: bool,
    extra: Sequence[str] = (),
) -> Task:
    """CTC over the reader's token field: blank first, then its vocabulary (then <eos>)."""
    vocab = (BLANK, *data.classes[0], *((EOS,) if eos else ()))
    index = {t: i for i, t in enumerate(vocab)}
    (key,) = data.label_keys
    end = [index[EOS]] if eos else []
    target_fn: Callable[[dict[str, Any]], list[int]] = lambda r: [index[t] for t in r[key]] + end
    return Task(
        name,
        "ctc",
        metric,
        data.splits,
        target_fn,
        (vocab,),
        head=head,
        notes=f"{len(vocab)} CTC tokens (blank{' and <eos>' if eos else ''} included)",
        protocol=data.protocol,
        deviations=(*deviations(name, hp), *COMMON_DEVIATIONS, *extra),
        eos=index[EOS] if eos else None,
    )


def pr(c: ml_collections.ConfigDict) -> Task:
    """PR: LibriSpeech phones from the lexicon (ctc/libriphone.yaml), linear CTC, PER."""
    t = c.pr
    lexicon = [f.strip() for f in t.lexicon.split(",") if f.strip()]
    data = librispeech.read_pr(t.path, lexicon, stress=t.stress)
    extra = () if t.stress else ("stress digits dropped (s3prl's PR keeps them)",)
    return _ctc_task("pr", data, t, "per", "linear", eos=True, extra=extra)


def asr(c: ml_collections.ConfigDict) -> Task:
    """ASR: characters, 2-layer BiLSTM CTC (asr/config.yaml), WER, greedy without an LM."""
    data = librispeech.read_asr(c.asr.path)
    extra = ("no SpecAugment on the features (asr/config.yaml applies it)",)
    return _ctc_task("asr", data, c.asr, "wer", "bilstm", eos=False, extra=extra)


def ks(c: ml_collections.ConfigDict) -> Task:
    """KS: Speech Commands v0.01 folders, 12 classes, class-balanced sampling."""
    t = c.ks
    if t.source != "folders":
        raise ValueError(f"config.superb.ks.source is {t.source!r}, not 'folders' or 'tfds'")
    data = speech_commands.read(t.path, t.test_path)
    extra = (
        f"_silence_: {t.crop_views} fixed random 1 s crops per noise file, drawn at random "
        "(s3prl: a fresh crop per read); dev accuracy weighted by s3prl's sampling weights "
        "(its expectation, s3prl draws a weighted sample)",
    )
    task = _utterance_task("ks", data, t, extra)
    task.weight_fn = speech_commands.sample_weights
    return task


def sid(c: ml_collections.ConfigDict) -> Task:
    """SID: VoxCeleb1 with iden_split.txt; 8 s random training crops (voxceleb1/config.yaml)."""
    t = c.sid
    data = voxceleb1.read(t.path, t.split_file)
    extra = [
        f"training crops: {t.crop_views} fixed random 8 s crop(s) per utterance "
        "(s3prl: a fresh crop per read)"
    ]
    if t.eval_max_samples:
        extra.append(f"dev/test cropped to {t.eval_max_samples} samples (s3prl: whole)")
    return _utterance_task("sid", data, t, extra)


def ic(c: ml_collections.ConfigDict) -> Task:
    """IC: Fluent Speech Commands, three label groups, right when all three are."""
    return _utterance_task("ic", fluent_commands.read(c.ic.path), c.ic)


def er(c: ml_collections.ConfigDict) -> Task:
    """ER: IEMOCAP, one head per fold; the reported accuracy is the mean over folds."""
    t = c.er
    folds = tuple(int(f) for f in t.folds)
    datasets = iemocap.read_folds(t.path, folds)
    first = datasets[folds[0]]
    extra = [
        "dev split drawn with numpy from sorted label files (s3prl: torch.manual_seed(0) on "
        "its shipped meta_data order); test and train+dev as s3prl"
    ]
    if folds != iemocap.FOLDS:
        extra.append(f"folds {list(folds)} only (SUPERB averages folds 1-5)")
    task = _utterance_task("er", first, t, extra)
    task.folds = {f"fold{k}": d.splits for k, d in datasets.items()}
    task.protocol = "; ".join(d.protocol for d in datasets.values())
    return task


def sf(c: ml_collections.ConfigDict) -> Task:
    """SF: SNIPS characters + slot tags, BiLSTM CTC (ctc/snips.yaml), slot-type F1, CER."""
    data = snips.read(c.sf.path)
    extra = ("no SpecAugment on the features (ctc/snips.yaml applies it)",)
    return _ctc_task("sf", data, c.sf, "slot_type_f1", "bilstm", eos=True, extra=extra)


def qbe(c: ml_collections.ConfigDict) -> Task:
    """QbE: QUESST 2014 English queries, DTW over one hidden state, MTWV (no head trained)."""
    t = c.qbe
    data = quesst14.read(t.path)
    english = quesst14.sizes(data)
    return Task(
        "qbe",
        "qbe",
        "mtwv",
        data.splits,
        lambda r: r,
        ((),),
        head="dtw",
        notes=(
            f"{english['dev']} dev / {english['test']} test English queries, "
            f"{english['docs']} English utterances; layer {t.layer}"
        ),
        protocol=data.protocol,
        deviations=(
            "trials: every line of the language_key lists (QUESST's scorer reads its ecf/tlist "
            "XML); MTWV computed here, not by the scoring jar",
            f"TWV beta {t.twv_beta:g} (P_target 0.0008, C_miss 1, C_fa 0.1 as recalled from "
            "QUESST 2014's evaluation plan; not checked against its scoring jar)",
        ),
    )


def asv(c: ml_collections.ConfigDict) -> Task:
    """ASV: VoxCeleb1 dev speakers, x-vector + AM-softmax (sv_voxceleb1), trial EER."""
    t = c.asv
    data, trials = voxceleb1.read_verification(t.path, t.trials)
    index = {speaker: i for i, speaker in enumerate(data.classes[0])}
    train, test = data.splits["train"], data.splits["test"]
    splits = {"train": train, "dev": test, "test": test}
    extra = (
        "no sox trimming of silences (s3prl reads VoxCeleb1 with `silence 1 0.1 0.1% -1 0.1 "
        "0.1%` and `gain -3`; the 2 s minimum is applied to the untrimmed files)",
        f"training crops: {t.crop_views} fixed random 8 s crop(s) per utterance (s3prl: a "
        "fresh crop per read)",
        "the kept head is the best test EER of the evaluations every eval_every steps, as "
        "s3prl's sv_voxceleb1/report.sh picks the best of its checkpoints on test",
    )
    return Task(
        "asv",
        "asv",
        "eer",
        splits,
        lambda r: [index.get(r["label"], 0)],
        data.classes,
        head="xvector",
        notes=f"{len(data.classes[0])} training speakers, {len(trials)} trials",
        protocol=data.protocol,
        deviations=(*deviations("asv", t), *COMMON_DEVIATIONS, *extra),
        trials=trials,
    )


def sd(c: ml_collections.ConfigDict) -> Task:
    """SD: Libri2Mix as s3prl prepares it, LSTM + PIT BCE (diarization), DER of RTTMs."""
    t = c.sd
    data = libri2mix.read(t.path)
    extra = (
        f"training reads each recording's first {t.chunk_frames} frames (s3prl cuts every "
        f"recording into {t.chunk_frames}-frame chunks)",
        "dev selection by the best DER of score.sh's threshold/median grid (s3prl: frame DER "
        "at threshold 0.5)",
        "DER computed here (optimal speaker mapping, collar 0), not by dscore",
    )
    keep = ("name", "segments", "speakers", "reference")
    return Task(
        "sd",
        "sd",
        "der",
        data.splits,
        lambda r: {k: r[k] for k in keep},
        data.classes,
        head="lstm",
        notes=f"{t.num_speakers} speakers per recording; labels at the upstream's stride",
        protocol=data.protocol,
        deviations=(*deviations("sd", t), *COMMON_DEVIATIONS, *extra),
    )


BUILDERS: dict[str, Callable[[ml_collections.ConfigDict], Task]] = {
    "pr": pr,
    "asr": asr,
    "ks": ks,
    "qbe": qbe,
    "asv": asv,
    "sd": sd,
    "sid": sid,
    "er": er,
    "ic": ic,
    "sf": sf,
}


def build(name: str, c: ml_collections.ConfigDict, workdir: str) -> Task:
    """The task called `name` (mini-SUPERB, an alternative source, or SUPERB's) from `c`."""
    if name in tasks.MINI:
        return tasks.MINI[name](c, workdir)
    if name in ("sid", "ic", "er") and c[name].manifest:
        return tasks.manifest_task(name, c[name])
    if name == "ks" and c.ks.source == "tfds":
        return tasks.ks_tfds(c, workdir)
    if name == "pr" and not c.pr.lexicon:
        return tasks.pr_espeak(c, workdir)
    if name in BUILDERS:
        return BUILDERS[name](c)
    raise ValueError(f"unknown SUPERB task {name!r}: {sorted([*tasks.MINI, *BUILDERS])}")


def head_protocol(task: Task, hp: ml_collections.ConfigDict) -> dict[str, Any]:
    """What results.json records of a task's head and training, with s3prl's file."""
    if task.kind == "qbe":
        return {"kind": "qbe", "head": "dtw", "metric": task.metric, "layer": hp.layer,
                "twv_beta": hp.twv_beta, "s3prl_config": S3PRL_FILES["qbe"]}  # fmt: skip
    fields = ("lr", "total_steps", "batch_size", "clip_norm", "eval_every", "proj_dim")
    out: dict[str, Any] = {k: hp[k] for k in fields}
    out.update(optimizer="adam", kind=task.kind, head=task.head, metric=task.metric)
    if task.kind == "sd":
        out.update(lstm_dim=hp.lstm_dim, lstm_layers=hp.lstm_layers, chunk_frames=hp.chunk_frames)
    if task.head == "bilstm":
        out.update(lstm_dim=hp.lstm_dim, lstm_layers=hp.lstm_layers, dropout=hp.dropout)
    if task.kind == "asv":
        out.update(optimizer=hp.optimizer, weight_decay=hp.weight_decay, agg_dim=hp.agg_dim,
                   am_scale=hp.am_scale, am_margin=hp.am_margin)  # fmt: skip
    out["crop_views"] = hp.crop_views
    out["class_balanced"] = task.weight_fn is not None
    out["s3prl_config"] = S3PRL_FILES.get(task.name)
    return out
