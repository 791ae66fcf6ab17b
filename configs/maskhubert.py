"""MaskHuBERT (Jang et al., arXiv 2305.11685): masking distillation from HuBERT Base into a
12 x 480 student, trained with interleaved stacking 3 -> 6 -> 9 -> 12.

  python -m stackdistill.main --config=configs/maskhubert.py --workdir=gs://BUCKET/runs/mask \
      --config.data.path=/data/LibriSpeech

Reproduces sungnyun/ARMHuBERT conf/maskhubert/maskhubert-960.yaml (values cited in
stackdistill/recipes/arm_family.py): 12 layers x 480 (FFN 640, 12 heads), every layer
attends, no gradient scaling, the small CNN (128 -> 256 -> 480) with no projection, dropouts
0.1 (input 0.05), masking distillation, layer-wise heads, AdamW 5e-4, 390,600 steps of 144
utterances (200 epochs). 26.64M params as the repo counts them. Variants:
`:stacking=none|top|middle`, `:runlocal`.
"""

from stackdistill.recipes import arm_family


def get_config(arg=None):
    return arm_family.get_config("maskhubert", arg)
