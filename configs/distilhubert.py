"""DistilHuBERT (Chang et al., 2022) as s3prl trains it: 2 x 768 layers, heads for 4, 8, 12.

  python -m stackdistill.main --config=configs/distilhubert.py --workdir=gs://BUCKET/runs/dh \
      --config.data.path=/data/LibriSpeech

The released `distilhubert_ls960_4-8-12`: s3prl's pretrain/distiller/config_model.yaml
(student.distilhubert_config: no LayerNorm before the projection, dropouts 0.1,
feature_grad_mult 0.1, Linear -> GELU -> Linear heads that all read the last layer, init
from the teacher's front-end, projection, positional conv and first two layers; L1 + cosine
loss) and config_runner.yaml (optim.distilhubert_config: AdamW 2e-4, 7% warmup, linear
decay, betas (0.9, 0.98), eps 1e-6, clip 5, the weight decay s3prl actually applies;
200k steps, batch 24). No stacking. `--config.export.format=s3prl_distiller` writes the
.ckpt s3prl's `distiller_local` upstream loads. Time per batch on one H200 in bfloat16:
benchmarks/RESULTS.md. Variants: `:runlocal`.
"""

from stackdistill import optim
from stackdistill.config import apply_arg, base_config
from stackdistill.models import student


def get_config(arg=None):
    c = base_config()
    c.teacher.name = "facebook/hubert-base-ls960"
    c.data.source = "librispeech"
    c.data.path = "/data/LibriSpeech"
    c.dtype = "bfloat16"
    c.student = student.distilhubert_config()
    c.optim = optim.distilhubert_config()
    c.stacking.method = "none"
    c.distill.loss = "l1_cos"
    c.distill.heads_on = "last"
    c.distill.teacher_layers = (4, 8, 12)
    return apply_arg(c, arg)
