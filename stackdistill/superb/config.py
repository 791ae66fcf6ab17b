"""The `superb` config section: upstreams, tasks, and each task's data and hyper-parameters.

A SUPERB task needs only its paths (`config.superb.<task>.path` and the fields below); every
head hyper-parameter that SUPERB fixes comes from s3prl's task config (`S3PRL`, each entry
citing its yaml under s3prl/downstream/). `batch_size` is s3prl's effective batch (its batch
times gradient_accumulate_steps: one optimizer step here sees as many utterances). Any field
changed from s3prl's value is listed as a deviation in results.json and the report's notes.
The mini-SUPERB tasks (`*_synth`) use the same heads with a larger lr and few steps, sized
for 2 CPU cores.
"""

from __future__ import annotations

import ml_collections

# ASR's and SF's recipe: batch 32, eval_step 2000, project_dim 1024, 2-layer bidirectional
# LSTM 1024 per direction, dropout 0.2 (downstream/asr/config.yaml, downstream/ctc/snips.yaml).
_BILSTM_CTC = dict(
    lr=1e-4,
    total_steps=200_000,
    batch_size=32,
    eval_every=2_000,
    proj_dim=1024,
    lstm_dim=1024,
    lstm_layers=2,
    dropout=0.2,
)
# s3prl's runner/optimizer/model settings per task (all: Adam, gradient clipping 1), read from
# the yaml files of s3prl 0.4.18 (s3prl/s3prl commit ec8064b5889f81ca460fbe2c094ce576a6f120b7);
# tests/test_superb_config.py keeps the values read there and checks every entry against them.
S3PRL: dict[str, dict] = {
    # downstream/ctc/libriphone.yaml: batch 16 x 2 accumulated, eval_step 1000,
    # model.select FrameLevel (project_dim 256, then a linear CTC layer)
    "pr": dict(lr=1e-2, total_steps=100_000, batch_size=32, eval_every=1_000, proj_dim=256),
    # downstream/asr/config.yaml: batch 32, eval_step 2000, project_dim 1024, RNNs: 2-layer
    # bidirectional LSTM 1024 per direction, dropout 0.2, no layer norm / projection
    "asr": _BILSTM_CTC,
    # downstream/speech_commands/config.yaml: batch 32, eval_step 5000, projector_dim 256,
    # UtteranceLevel MeanPooling
    "ks": dict(lr=1e-4, total_steps=200_000, batch_size=32, eval_every=5_000, proj_dim=256),
    # downstream/voxceleb1/config.yaml: train batch 8 x 4 accumulated, eval_step 5000
    "sid": dict(lr=1e-4, total_steps=200_000, batch_size=32, eval_every=5_000, proj_dim=256),
    # downstream/fluent_commands/config.yaml: batch 32, eval_step 5000
    "ic": dict(lr=1e-4, total_steps=200_000, batch_size=32, eval_every=5_000, proj_dim=256),
    # downstream/emotion/config.yaml: batch 4 x 8 accumulated, 30k steps, eval_step 1000
    "er": dict(lr=1e-4, total_steps=30_000, batch_size=32, eval_every=1_000, proj_dim=256),
    # downstream/ctc/snips.yaml: batch 32, eval_step 2000, project_dim 1024, RNNs as ASR
    "sf": _BILSTM_CTC,
}
S3PRL_FILES = {
    "pr": "s3prl/downstream/ctc/libriphone.yaml",
    "asr": "s3prl/downstream/asr/config.yaml",
    "ks": "s3prl/downstream/speech_commands/config.yaml",
    "sid": "s3prl/downstream/voxceleb1/config.yaml",
    "ic": "s3prl/downstream/fluent_commands/config.yaml",
    "er": "s3prl/downstream/emotion/config.yaml",
    "sf": "s3prl/downstream/ctc/snips.yaml",
    "qbe": "s3prl/downstream/quesst14_dtw/config.yaml",
}
for _hp in S3PRL.values():
    _hp["clip_norm"] = 1.0  # runner.gradient_clipping
# downstream/sv_voxceleb1/config.yaml (-> configs/amsoftmax.yaml): train batch 10 x 5
# accumulated, eval_step 10000, gradient_clipping 1000, AdamW lr 1e-4, modelrc.input_dim 512
# (the connector's width); XVector agg_dim 1500; AMSoftmaxLoss s 30, m 0.4.
S3PRL["asv"] = dict(
    lr=1e-4, total_steps=200_000, batch_size=50, eval_every=10_000, proj_dim=512, clip_norm=1000.0
)
S3PRL_FILES["asv"] = "s3prl/downstream/sv_voxceleb1/config.yaml"
# downstream/diarization/config.yaml: train batch 8 x 4 accumulated, 30k steps, eval_step 500,
# gradient_clipping 1, Adam lr 1e-4; modelrc rnn_layers 1, hidden_size 512; datarc chunk_size
# 2000, num_speakers 2.
S3PRL["sd"] = dict(
    lr=1e-4, total_steps=30_000, batch_size=32, eval_every=500, clip_norm=1.0, lstm_dim=512,
    lstm_layers=1,
)  # fmt: skip
S3PRL_FILES["sd"] = "s3prl/downstream/diarization/config.yaml"
LAYER_SELECTIONS = ("weighted", "last", "both")


def head_config(lr: float, total_steps: int, batch_size: int = 32, **extra):
    """Optimiser, head and checkpoint fields shared by every task."""
    c = ml_collections.ConfigDict()
    c.lr = lr
    c.total_steps = total_steps
    c.batch_size = batch_size
    c.clip_norm = 1.0
    c.proj_dim = 256  # SUPERB's projection before the utterance/PR heads
    c.eval_every = 1_000  # dev evaluations (the best dev step is tested) when there is a dev split
    c.log_every = 100
    c.checkpoint_every = 1_000  # the head's orbax checkpoint (resumed after an interruption)
    c.max_samples = 480_000  # training utterances are cropped to this (deterministically)
    c.eval_max_samples = 480_000  # dev/test (0: whole utterances)
    c.crop_views = 1  # records s3prl crops at random on every read: crops extracted per record
    c.standardize = False  # z-score each layer's features with train statistics (not SUPERB)
    c.update(extra)
    return c


def _s3prl(task: str, **extra) -> ml_collections.ConfigDict:
    return head_config(**{**S3PRL[task], **extra})


def default_config() -> ml_collections.ConfigDict:
    """Every field of `config.superb` with its default."""
    c = ml_collections.ConfigDict()
    # "teacher" | "student[:WORKDIR[@STEP]]" | "hf:DIR_OR_HUB_ID", each optionally "NAME=...".
    c.upstreams = ("teacher", "student")
    # mini: "ks_synth", "sid_synth", "pr_synth"; SUPERB: "pr", "asr", "ks", "qbe", "sid", "asv",
    # "sd", "er", "ic", "sf"
    c.tasks = ("ks_synth", "sid_synth", "pr_synth")
    c.layer_selection = "weighted"  # "weighted" | "last" (the last hidden state) | "both"
    c.seed = 0
    c.normalize_layers = False  # s3prl Featurizer(normalize=...): LayerNorm each hidden state
    c.extract_batch_size = 16
    c.pad_ratio = 1.25  # utterances are padded to the next length of a geometric series
    c.max_feature_gb = 4.0  # CTC tasks store frame features up to this, else run live
    c.reuse_results = True  # --mode=compare: reuse an upstream's results.json for the same tasks
    c.progress = True  # a progress bar per task's head training
    c.cka = True  # student upstreams: linear CKA of every layer against every teacher layer
    c.cka_manifest = ""  # held-out audio for CKA ("" = the test split of the synthetic corpus)
    c.cka_utterances = 64
    c.cka_frames = 4_000  # frames drawn (the same for both encoders) from those utterances

    c.synth = ml_collections.ConfigDict()
    c.synth.path = ""  # "" = WORKDIR/superb/synth_<num>_seed<seed>; generated on first use
    c.synth.num = 1_000
    c.synth.seed = 1  # not the demo's distillation corpus (seed 0)
    c.synth.test_fraction = 0.25

    # Mini-SUPERB heads standardise the features: the demo's briefly distilled students carry
    # an offset shared by every utterance, which SUPERB's plain heads do not resolve in a few
    # thousand steps (benchmarks/RESULTS.md, "Mini-SUPERB").
    c.ks_synth = head_config(3e-3, 1_500, standardize=True)
    c.sid_synth = head_config(3e-3, 1_500, standardize=True)
    # PR-synth: lr 3e-3 (SUPERB's PR uses 1e-2, which here makes the PER swing from one
    # evaluation to the next).
    c.pr_synth = head_config(3e-3, 1_000, standardize=True)

    c.pr = _s3prl("pr")
    c.pr.path = ""  # LibriSpeech root holding train-clean-100/, dev-clean/, test-clean/
    # s3prl's librispeech-lexicon-200k-g2p.txt,librispeech-lexicon-allothers-g2p.txt (comma
    # separated, first pronunciation wins). "" = espeak-ng phones (not comparable with SUPERB).
    c.pr.lexicon = ""
    c.pr.stress = True  # s3prl's phone set keeps ARPAbet stress digits (71 tokens)
    c.pr.voice = "en-us"  # the espeak-ng fallback's voice
    c.asr = _s3prl("asr")
    c.asr.path = ""  # LibriSpeech root
    c.ks = _s3prl("ks", crop_views=64)  # 64 random 1 s crops of each _background_noise_ file
    c.ks.source = "folders"  # "folders" (Speech Commands v0.01, SUPERB's) | "tfds" (v0.02)
    c.ks.path = ""  # the unpacked speech_commands_v0.01 folder
    c.ks.test_path = ""  # the unpacked speech_commands_test_set_v0.01 folder
    c.ks.tfds_name = "speech_commands"
    c.ks.tfds_dir = ""  # TFDS data_dir ("" = TFDS's default)
    c.sid = _s3prl("sid", eval_max_samples=0)  # s3prl tests whole utterances (up to 145 s)
    c.sid.path = ""  # VoxCeleb1 root holding wav/idXXXXX/<video>/<n>.wav (or dev/wav, test/wav)
    c.sid.split_file = ""  # iden_split.txt
    c.ic = _s3prl("ic")
    c.ic.path = ""  # fluent_speech_commands_dataset folder
    c.er = _s3prl("er")
    c.er.path = ""  # IEMOCAP_full_release
    c.er.folds = (1, 2, 3, 4, 5)  # leave-one-session-out; the mean accuracy is reported
    c.sf = _s3prl("sf")
    c.sf.path = ""  # SNIPS folder as s3prl/preprocess/snips_prepare_data.sh leaves it
    # ASV: x-vector head, AM-softmax; torch AdamW's weight decay 0.01 (the yaml sets none)
    c.asv = _s3prl("asv", eval_max_samples=0, checkpoint_every=10_000)
    c.asv.update(optimizer="adamw", weight_decay=0.01, agg_dim=1500, am_scale=30.0, am_margin=0.4)
    c.asv.path = ""  # VoxCeleb1 root holding dev/wav/ and test/wav/ (s3prl's layout)
    c.asv.trials = ""  # voxceleb1_test_v2.txt (s3prl/downstream/sv_voxceleb1/ ships it)
    # SD: an LSTM on whole recordings (chunks of 2000 frames), never cropped at random
    c.sd = _s3prl("sd", max_samples=2**31 - 1, eval_max_samples=0, checkpoint_every=500)
    c.sd.update(chunk_frames=2000, num_speakers=2)
    c.sd.path = ""  # the folder s3prl's prepare_diarization.py wrote (train/, dev/, test/)
    # QbE: no head; DTW over one hidden state (s3prl/downstream/quesst14_dtw/config.yaml).
    c.qbe = ml_collections.ConfigDict()
    c.qbe.path = ""  # the quesst14Database folder (QUESST 2014)
    c.qbe.layer = "best"  # "best": every hidden state on dev, the best on test; or "6", "-1"
    # TWV's false-alarm weight C_fa / C_miss * (1 / P_target - 1) (superb/detection.py says
    # where 124.9 comes from and that it could not be checked against the scoring jar here)
    c.qbe.twv_beta = 124.9
    # Alternative to the datasets' own layouts for sid/ic/er: a labelled JSONL manifest
    # (path, the label fields, optionally a train/dev/test or 1/2/3 split field).
    for name, keys in (("sid", ("speaker",)), ("ic", ("action", "object", "location"))):
        c[name].manifest = ""
        c[name].label_keys = keys
    c.er.manifest, c.er.label_keys = "", ("emotion",)
    for name in ("sid", "ic", "er"):
        c[name].split_key = "split"  # absent from the records: a hash split
        c[name].test_fraction = 0.2
    return c


def deviations(task: str, hp: ml_collections.ConfigDict) -> list[str]:
    """Every head hyper-parameter of `hp` that differs from s3prl's, as `field value (s3prl x)`."""
    return [
        f"{field} {hp[field]:g} (s3prl {value:g}, {S3PRL_FILES[task]})"
        for field, value in S3PRL.get(task, {}).items()
        if hp[field] != value
    ]
