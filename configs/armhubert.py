"""ARMHuBERT (Jang et al., Interspeech 2023, arXiv 2305.11685): attention-map reuse + masking
distillation from HuBERT Base, trained with interleaved stacking 4 -> 8 -> 12.

  python -m stackdistill.main --config=configs/armhubert.py --workdir=gs://BUCKET/runs/arm \
      --config.data.path=/data/LibriSpeech

Reproduces sungnyun/ARMHuBERT conf/armhubert/armhubert-960.yaml (every value cited in
stackdistill/recipes/arm_family.py): 12 layers x 480 (FFN 864, 12 heads), pattern
[attend, reuse] x 6 (reuse layers have no q/k), per-layer gradient scaling, their small CNN
(128 -> 256 -> 480 channels) with no projection Linear, dropouts 0.1 (input 0.05), masking
distillation (mask prob 0.8, span 10; hints 0.1, reconstruction MSE 1.0), layer-wise heads,
AdamW 5e-3 (betas 0.9/0.98, eps 1e-6, 5% warmup, linear decay), 390,600 steps of 144
utterances (200 epochs of LibriSpeech 960 h at 18 x 4 accumulation x 2 GPUs). 26.45M params
as the repo counts them (models.student.paper_param_count). Stacking grows whole
[attend, reuse] blocks (stackdistill/stacking.py). Variants: `:stacking=none` (the published
schedule: full depth from step 0), `:stacking=top|middle`, `:runlocal` (offline, demo-size).
"""

from stackdistill.recipes import arm_family


def get_config(arg=None):
    return arm_family.get_config("armhubert", arg)
