"""STaRHuBERT-L (Jang, Kim & Kim, ICASSP 2024, arXiv 2312.09040): HuBERT Base -> 12 x 480 student
distilled with STaR's layer-wise + intra-layer temporal Gram matrix losses, no heads.

  python -m stackdistill.main --config=configs/starhubert.py --workdir=gs://BUCKET/runs/star \
      --config.data.path=/data/LibriSpeech
  python -m stackdistill.main --config=configs/starhubert.py:stacking=interleaved ...
  python -m stackdistill.main --config=configs/starhubert.py:runlocal --workdir=/tmp/star

Variants: `:stacking=none` (the default: the published recipe, every student layer i paired
with teacher layer i), `:stacking=interleaved|top|middle` (3 -> 6 -> 9 -> 12; the initial
layers pair with teacher layers 4, 8, 12 and those pairs follow their lineage through growth:
distill.target_sources). `:runlocal` is offline and demo-size, as the ARMHuBERT recipes'
(arm_family.demo_size): the random 12 x 48 teacher, espeak-ng speech, a 4 x 32 student with
the small CNN's shape, 8 steps; its pairs are scaled the same way (`none`: student layer i
with teacher layer 3(i+1); stacked 2 -> 4: the initial 2 with teacher 6, 12). Cost: one
HuBERT Base forward and one student step per batch, plus 4 T x T Gram matrices per supervised
layer (T <= 780 frames).

Sources (sungnyun/ARMHuBERT; STaR has no official training code and its yaml is on Google
Drive, not readable here; README L200-201 says STaR is built on this repository):
- Student (models/starhubert/model.py, module.py): post-LN fairseq layers (module.py
  L310-423, no attention reuse), the CNN front-end of conf/maskhubert/maskhubert-960.yaml L32
  (1 x 1 convs, conv dim 480 = width, so no projection: model.py L180-184), LayerNorm after
  the CNN (model.py L195, L255), conv positional embedding 128 / 16 groups (yaml L37-38),
  12 layers x 480, 12 heads; FFN 1024 is derived, not read: it is the width that gives the
  published 26.63M with no heads (tests/test_star.py counts it by hand; 640 gives MaskHuBERT's
  22.20M backbone). No final projection, no prediction heads (model.py L208-210).
- Dropouts 0.1 / 0.1 / 0.1 and dropout_input 0.05: maskhubert-960.yaml L59-63. No init from
  the teacher: yaml L75-76.
- Optimizer: s3prl's AdamW_with_schedule (train.py L12, L360-373) as maskhubert-960.yaml
  L95-100 sets it: lr 5e-4, 5% warmup, linear decay, betas (0.9, 0.98), eps 1e-6 (decay as
  optim.distilhubert_config explains: 0.01 on all but biases); no gradient clipping
  (Lightning's Trainer, train.py L455-466, is given no gradient_clip_val).
- Steps: 200 epochs (yaml L14) of LibriSpeech 960 h (281,241 utterances) in batches of 18
  on 2 GPUs with 4 accumulations (yaml L15-17): 144 utterances and 1,953 updates an epoch,
  390,625 updates. They batch whole utterances by length; we crop at data.max_samples.
- Loss: config.distill.star (recipes/star.py): layer-wise and intra-layer TGM, 1 : 1.
"""

from stackdistill import optim
from stackdistill.config import apply_arg, base_config
from stackdistill.recipes import arm_family

NUM_LAYERS = 12
TEACHER_LAYERS = 12  # HuBERT Base's, and the demo teacher's (teacher.DEMO_ARCH)


def _items(arg: str | None) -> dict[str, str]:
    """The items of the config argument: `stacking=METHOD` -> {"stacking": METHOD}, `runlocal`."""
    return dict(item.partition("=")[::2] for item in (arg or "").split(",") if item)


def get_config(arg=None):
    c = base_config()
    c.teacher.name = "facebook/hubert-base-ls960"
    c.data.source = "librispeech"
    c.data.path = "/data/LibriSpeech"
    c.dtype = "bfloat16"  # their use_fp16: True
    c.total_steps = 390_625
    c.batch_size = 144

    s = c.student
    s.num_layers, s.hidden_size, s.intermediate_size, s.num_heads = NUM_LAYERS, 480, 1024, 12
    s.dropout = s.attention_dropout = s.activation_dropout = 0.1
    s.init_from_teacher = False
    s.feat_proj_layer_norm = True
    # Fields of the attention-reuse branch (config.student in models/): the smaller CNN
    # front-end and no projection between it and the transformer.
    s.conv_layers = arm_family.conv_layers(480)
    s.conv_norm, s.conv_bias = "group", False  # maskhubert-960.yaml L31, L34
    s.feat_proj = False
    s.dropout_input = 0.05  # field of the masking branch (fairseq dropout_input)

    c.optim = optim.distilhubert_config()
    c.optim.update(learning_rate=5e-4, warmup_fraction=0.05, clip_norm=float("inf"))

    c.distill.loss = "star"
    c.stacking.method = "none"
    items = _items(arg)
    if "runlocal" in items:
        arm_family.demo_size(c)
    n = c.student.num_layers
    if items.get("stacking", "none") == "none":  # the paper: every layer i <-> teacher layer i
        c.distill.teacher_layers = tuple((i + 1) * TEACHER_LAYERS // n for i in range(n))
        c.distill.student_layers = tuple(range(n))
    else:  # the initial layers <-> teacher 4, 8, 12 (demo: 6, 12), following their lineage
        start = c.stacking.start_depth
        c.distill.teacher_layers = tuple((i + 1) * TEACHER_LAYERS // start for i in range(start))
    return apply_arg(c, arg)
