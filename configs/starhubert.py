"""STaRHuBERT-L (Jang, Kim & Kim, ICASSP 2024, arXiv 2312.09040): HuBERT Base -> 12 x 480 student
distilled with STaR's layer-wise + intra-layer temporal Gram matrix losses, no heads.

  python -m stackdistill.main --config=configs/starhubert.py --workdir=gs://BUCKET/runs/star \
      --config.data.path=/data/LibriSpeech
  python -m stackdistill.main --config=configs/starhubert.py:stacking=interleaved ...

Variants: `:stacking=none` (the default: the published recipe, every student layer i paired
with teacher layer i), `:stacking=interleaved|top|middle` (3 -> 6 -> 9 -> 12; the initial
layers pair with teacher layers 4, 8, 12 and those pairs follow their lineage through growth:
distill.target_sources), `:runlocal` for a smoke test. Cost: one HuBERT Base forward and one
student step per batch, plus 4 T x T Gram matrices per supervised layer (T <= 780 frames).

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

NUM_LAYERS = 12
CONV_LAYERS = ((128, 10, 5), (256, 1, 1)) + ((256, 3, 2),) * 4 + ((480, 1, 1),) + ((480, 2, 2),) * 2


def _stacking_method(arg: str | None) -> str:
    """The `stacking=METHOD` item of the config argument ("none" when absent)."""
    items = dict(item.partition("=")[::2] for item in (arg or "").split(",") if item)
    return items.get("stacking", "none")


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
    s.conv_layers = CONV_LAYERS
    s.conv_norm, s.conv_bias = "group", False  # maskhubert-960.yaml L31, L34
    s.feat_proj = False
    s.dropout_input = 0.05  # field of the masking branch (fairseq dropout_input)

    c.optim = optim.distilhubert_config()
    c.optim.update(learning_rate=5e-4, warmup_fraction=0.05, clip_norm=float("inf"))

    c.distill.loss = "star"
    c.stacking.method = "none"
    if _stacking_method(arg) == "none":  # the paper: every layer i <-> teacher layer i
        c.distill.teacher_layers = tuple(range(1, NUM_LAYERS + 1))
        c.distill.student_layers = tuple(range(NUM_LAYERS))
    else:  # 3 initial layers <-> teacher 4, 8, 12, following their lineage
        c.distill.teacher_layers = (4, 8, 12)
    return apply_arg(c, arg)
