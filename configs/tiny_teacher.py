"""A tiny HuBERT teacher (6 x 192) trained offline: phoneme CTC on top, speaker ID low in the
middle (layer 2), and voice pushed out of the top layer by a speaker adversary and a penalty on
the between-speaker share of its variance -- so voice peaks in the middle and phonemes on top.

  python -m stackdistill.tiny_teacher --config=configs/tiny_teacher.py --workdir=/tmp/tiny_teacher

Needs no network: speaks a 1000-utterance espeak-ng corpus into the workdir (seed 0) and a
480-utterance held-out one for the probes (seed 1), trains for exactly `total_steps` steps
(no wall-clock cap: the weights depend on the seed only; 800 steps took 288 s on 2 quiet
cores, 6 minutes in all with corpora and probes), writes the teacher to WORKDIR/teacher in
transformers format and the layer-wise probe table to WORKDIR/probe.md.
Times and probe tables: benchmarks/RESULTS.md, "Tiny teacher".
Variants: `:quick` (a few steps on a small corpus, for smoke tests), `:wavlm` (the same teacher
as a WavLM: gated relative position bias, for recipes distilled from WavLM such as ARMwavLM-S),
both (`:quick,wavlm`), or `--config.field=value`.
"""

import ml_collections

from stackdistill.data import config as data_config

ARCH = dict(
    model_type="hubert",
    hidden_size=192,
    num_layers=6,
    num_heads=4,
    intermediate_size=768,
    conv_dim=(64,) * 7,
    num_conv_pos_embeddings=32,
    num_conv_pos_embedding_groups=8,
    # HuBERT Large's layout (pre-LN layers, LayerNorm in every conv): from scratch, post-LN
    # Base's layout sat on the CTC plateau (benchmarks/RESULTS.md, "Tiny teacher").
    do_stable_layer_norm=True,
    feat_extract_norm="layer",
    conv_bias=True,
)


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.arch = ARCH
    c.ctc_layer = 6  # phoneme CTC head on the top layer
    c.speaker_layer = 2  # speaker head (mean-pooled frames) below the middle
    c.speaker_weight = 1.0
    # Weight of the confusion loss against a speaker adversary on the top layer (0: off):
    # without it the residual stream carries voice up to the output (probes rise to the top).
    c.speaker_adversary_weight = 3.0
    # Weight of the between-speaker share of the pooled top layer's variance in the batch
    # (tiny_teacher.between_speaker_share; 0: off): removes voice along every direction.
    c.speaker_invariance_weight = 1.0
    c.max_label_length = 64  # phonemes per utterance, padded (sentences have about 20)
    c.total_steps = 800
    c.learning_rate = 1e-3
    c.warmup_fraction = 0.08
    c.weight_decay = 0.01
    c.clip_norm = 1.0
    c.log_every = 25

    c.data = data_config.default_config()
    c.data.source = "synthetic"
    c.data.path = "synth"  # under the workdir unless absolute
    c.data.synth_num = 1000
    c.data.max_samples = 40_000  # longer than any utterance: CTC labels need uncropped audio
    c.data.min_samples = 1_600
    c.data.bucket_boundaries = (16_000, 24_000, 40_000)
    c.data.batch_size = 16
    c.data.label_keys = ("speaker", "phonemes")

    c.probe = ml_collections.ConfigDict()
    c.probe.num = 480  # held-out utterances (0: no probes): 320 to fit, 160 to score
    c.probe.seed = 1
    c.probe.train_fraction = 2 / 3
    c.probe.ridge_alpha = 10.0
    c.probe.ctc_steps = 300
    c.probe.ctc_batch = 32
    c.probe.ctc_learning_rate = 1e-2

    args = {a.strip() for a in (arg or "").split(",") if a.strip()}
    if args - {"quick", "wavlm"}:
        raise ValueError(
            f"configs/tiny_teacher.py: unknown argument {arg!r} (quick, wavlm, or quick,wavlm)"
        )
    if "wavlm" in args:
        # WavLM's layers with its bucketed relative position bias (320 buckets, distance 800 as
        # microsoft/wavlm-base), in the same pre-LN layout as the HuBERT teacher.
        c.arch = {**ARCH, "model_type": "wavlm", "num_buckets": 320, "max_bucket_distance": 800}
    if "quick" in args:
        c.total_steps = 20
        c.log_every = 5
        c.data.synth_num = 48
        c.probe.num = 48
        c.probe.ctc_steps = 20
    return c
