"""ARMwavLM-S (Jang et al., arXiv 2305.11685): ARMHuBERT's student, smaller, distilled from
WavLM Base, trained with interleaved stacking 4 -> 8 -> 12.

  python -m stackdistill.main --config=configs/armwavlm_s.py --workdir=gs://BUCKET/runs/armw \
      --config.data.path=/data/LibriSpeech

Reproduces sungnyun/ARMHuBERT conf/armwavlm/armwavlm-s-960.yaml (values cited in
stackdistill/recipes/arm_family.py): teacher './wavlm_base.pt' = microsoft/wavlm-base;
12 layers x 432 (FFN 816, 12 heads), [attend, reuse] x 6, gradient scaling, the small CNN
ending at 432 channels with no projection; the student is ARMHuBERT's model, so it keeps
none of WavLM's gated relative position bias (conv positions only). Masking distillation,
AdamW 5e-3, 195,300 steps (100 epochs at 144 utterances). 22.39M params as the repo counts
them. Variants: `:stacking=none|top|middle`, `:runlocal` (offline, demo-size: a random
12 x 48 WavLM teacher, arm_family.demo_size).
"""

from stackdistill.recipes import arm_family


def get_config(arg=None):
    return arm_family.get_config("armwavlm_s", arg)
