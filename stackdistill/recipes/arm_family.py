"""Run configs of sungnyun/ARMHuBERT's recipes: MaskHuBERT, ARMHuBERT, ARMwavLM-S.

One builder for the three `configs/*.py` files, since their yamls differ only in a few
fields. Every value cites the yaml line (conf/<model>/<name>.yaml) or code line it follows.
The masking-distillation fields (`config.distill.loss = "masked"`, `masking`, `hint_weight`,
`rec_weight`, `rec_loss`, `targets`; `config.student.mask_emb`, `dropout_input`,
`head = "layerwise"`) belong to the masking recipe; they are set here with the yamls' values.
"""

from __future__ import annotations

import ml_collections

from stackdistill import teacher
from stackdistill.config import apply_arg, base_config

# LibriSpeech 960 h training utterances: train-clean-100 28,539 (the repo's
# data/len_for_bucket/train-clean-100.csv), train-clean-360 104,014, train-other-500 148,688.
LIBRISPEECH_960H_UTTERANCES = 28_539 + 104_014 + 148_688
BATCH, ACCUMULATE, GPUS = (
    18,
    4,
    2,
)  # yaml train: batch_size L16, accumulate_grad_batches L17, gpus L15


# conv_feature_layers (yaml L32): [(128, 10, 5)] + [(256, 1, 1)] + [(256, 3, 2)] * 4 +
# [(C, 1, 1)] + [(C, 2, 2)] * 2, with C the encoder width (so no post_extract_proj).
def conv_layers(width: int, narrow: int = 128, wide: int = 256) -> tuple[tuple[int, int, int], ...]:
    """The ARMHuBERT repo's smaller CNN front-end ending at `width` channels (hop 320); a
    smaller model keeps its shape with fewer `narrow` / `wide` channels."""
    return (
        (narrow, 10, 5),
        (wide, 1, 1),
        *((wide, 3, 2),) * 4,
        (width, 1, 1),
        *((width, 2, 2),) * 2,
    )


HUBERT, WAVLM = "facebook/hubert-base-ls960", "microsoft/wavlm-base"
RECIPES = {
    # conf/maskhubert/maskhubert-960.yaml: L2 teacher, L45-46 width/FFN, L50 no grad scale,
    # no reuse_pattern (models/maskhubert: every layer attends), L96 lr 5e-4, L14 200 epochs.
    "maskhubert": dict(teacher=HUBERT, width=480, ffn=640, reuse=False, lr=5e-4, epochs=200),
    # conf/armhubert/armhubert-960.yaml: L2, L45-46, L50 layer_grad_scale, L57 reuse_pattern,
    # L97 lr 5e-3, L14 200 epochs.
    "armhubert": dict(teacher=HUBERT, width=480, ffn=864, reuse=True, lr=5e-3, epochs=200),
    # conf/armwavlm/armwavlm-s-960.yaml: L2 './wavlm_base.pt' (WavLM Base, not Base+), L45-46,
    # L50, L57, L97 lr 5e-3, L14 100 epochs. The student is ARMHuBERT's model
    # (models/__init__.py: "ARMwavLM shares the same student model"): no relative position bias.
    "armwavlm_s": dict(teacher=WAVLM, width=432, ffn=816, reuse=True, lr=5e-3, epochs=100),
}


def published_steps(num_epochs: int, utterances: int = LIBRISPEECH_960H_UTTERANCES) -> int:
    """Optimizer steps of their schedule: train.py L364-366 on utils/dataset.py's batches.

    LibriDataset (dataset.py L41-52) makes full batches of 18 sorted utterances plus the last
    one if it holds more than one; the schedule counts len(dataloader) // gpus batches per
    epoch and divides epochs x that by the accumulation (960 h: 15,625 batches -> 7,812 per GPU
    -> 200 epochs: 390,600 steps of 144 utterances).
    """
    batches = utterances // BATCH + (1 if utterances % BATCH > 1 else 0)
    return num_epochs * (batches // GPUS) // ACCUMULATE


def get_config(recipe: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The run config of `recipe` (a key of RECIPES) with `--config=FILE:ARG` applied."""
    r = RECIPES[recipe]
    teacher_id, width, ffn, reuse, lr = r["teacher"], r["width"], r["ffn"], r["reuse"], r["lr"]
    c = base_config()
    c.teacher.name = teacher_id
    c.data.source = "librispeech"
    c.data.path = "/data/LibriSpeech"
    c.dtype = "bfloat16"  # yaml L18 use_fp16
    c.batch_size = BATCH * ACCUMULATE * GPUS  # 144 utterances per optimizer step
    # Whole utterances (dataset.py L61-72 crops nothing; LibriSpeech segments are <= 35 s),
    # padded to a few lengths rather than all to 35 s (theirs: batches of similar length).
    c.data.max_samples = 560_000
    c.data.bucket_boundaries = (160_000, 240_000, 320_000, 400_000, 560_000)
    c.total_steps = published_steps(r["epochs"])

    s = c.student
    s.update(num_layers=12, hidden_size=width, intermediate_size=ffn, num_heads=12)  # L44-47
    s.conv_layers = conv_layers(width)  # L32
    s.conv_norm, s.conv_bias = "group", False  # L31 extractor_mode default, L34 conv_bias
    s.feat_proj = False  # model.py L270-274: no post_extract_proj when the CNN width == width
    s.feat_proj_layer_norm = True  # model.py L286, L405: LayerNorm on the CNN output
    s.update(dropout=0.1, attention_dropout=0.1, activation_dropout=0.1)  # L60-62
    s.feature_grad_mult = 1.0  # L33
    s.init_from_teacher = False  # L76-77 init_conv_layers False, init_encoder_layers 0
    s.fairseq_init = True  # their fresh init (models.student.fairseq_init)
    s.reuse_pattern = (True, False) * 6 if reuse else None  # L57
    s.layer_grad_scale = reuse  # L50 (True for ARM*, False for MaskHuBERT)
    # Masking distillation (the masking recipe's fields), yaml values:
    s.mask_emb = True  # model.py L288-290
    s.dropout_input = 0.05  # L64
    s.head = "layerwise"  # L72 layerwise_proj, L67 pred_head_final_dim 768 (the teacher's)
    # What their upstreams load (transformers cannot hold reuse layers or a student without a
    # projection): the Lightning .ckpt + yaml of export/armhubert.py.
    c.export.format = "armhubert"
    d = c.distill
    d.loss = "masked"
    d.masking = ml_collections.ConfigDict(  # yaml teacher: block L3-8
        dict(prob=0.8, length=10, selection="uniform", other=0.0, no_overlap=True, min_space=1)
    )
    d.hint_weight = 0.1  # L24 random_layer_weight
    d.rec_weight = 1.0  # L21 rec_loss_weight
    d.rec_loss = "mse"  # L22 rec_loss_type
    d.targets = "every_layer"  # L23 distil_random_layer 11: all 11 hint layers + the last
    d.teacher_layers = tuple(range(1, 13))

    o = c.optim  # L95-101 AdamW_with_schedule = s3prl's Lamb(adam=True, correct_bias=True)
    o.update(learning_rate=lr, warmup_fraction=0.05, decay="linear", b1=0.9, b2=0.98, eps=1e-6)
    # s3prl get_grouped_parameters: 0.01 on every tensor whose name has no "bias", overriding
    # the yaml's 1e-6 (see optim.distilhubert_config); no clipping (no gradient_clip_val).
    o.update(weight_decay=0.01, weight_decay_on="not_bias", clip_norm=1e9)

    # Stacking (ours): reuse blocks of 2 layers grow whole, 4 -> 8 -> 12; MaskHuBERT 3-6-9-12.
    if reuse:
        c.stacking.update(start_depth=4, num_new=4)
    items = [i for i in (arg or "").split(",") if i]
    if "runlocal" in items:
        demo_size(c, "wavlm" if teacher_id == WAVLM else "hubert")
        c.student.reuse_pattern = (True, False) * 2 if reuse else None
    return apply_arg(c, arg)


# The demo-size student's CNN: conv_layers' shape (hop 320) at 16 / 32 channels.
DEMO_CONV_LAYERS = conv_layers(32, narrow=16, wide=32)


def demo_size(c: ml_collections.ConfigDict, model_type: str = "hubert") -> None:
    """`:runlocal` of these recipes, offline and small as configs/demo.py: a random 12 x 48
    teacher (teacher.DEMO_ARCH) of the recipe teacher's `model_type`, espeak-ng speech, a
    4 x 32 student with the small CNN's shape (DEMO_CONV_LAYERS), stacking 2 -> 4. The recipe
    keeps its losses and layer layout."""
    c.teacher.name = "tiny_teacher"  # under the workdir
    c.teacher.random_arch = dict(teacher.DEMO_ARCH, model_type=model_type)
    c.dtype = "float32"
    c.data.update(source="synthetic", path="synth", synth_num=200, min_samples=4_000)
    c.data.bucket_boundaries = ()
    c.student.update(num_layers=4, hidden_size=32, intermediate_size=64, num_heads=2)
    c.student.conv_layers = DEMO_CONV_LAYERS
    c.stacking.update(start_depth=2, num_new=2)
    c.optim.learning_rate = 2e-3
