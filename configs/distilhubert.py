"""DistilHuBERT (Chang et al., 2022), the classic baseline: 2 x 768 layers, 3 heads (4, 8, 12).

  python -m stackdistill.main --config=configs/distilhubert.py --workdir=gs://BUCKET/runs/dh \
      --config.data.path=/data/LibriSpeech

No stacking; every head reads the last layer; L1 + cosine loss; the student starts from the
teacher's front-end and first two layers. s3prl's recipe: 200k steps, batch 24, AdamW 2e-4;
0.13 s per batch on one H200 in bfloat16 (benchmarks/RESULTS.md). Variants: `:runlocal`.
"""

from stackdistill.config import apply_arg, base_config
from stackdistill.models import student


def get_config(arg=None):
    c = base_config()
    c.teacher.name = "facebook/hubert-base-ls960"
    c.data.source = "librispeech"
    c.data.path = "/data/LibriSpeech"
    c.dtype = "bfloat16"
    c.student = student.distilhubert_config()
    c.stacking.method = "none"
    c.distill.loss = "l1_cos"
    c.distill.heads_on = "last"
    return apply_arg(c, arg)
