"""The paper's run: HuBERT Base -> 12 x 384 student, interleaved stacking 3 -> 6 -> 9 -> 12.

  python -m stackdistill.main --config=configs/hubert_base.py --workdir=gs://BUCKET/runs/hb \
      --config.data.path=/data/LibriSpeech

Variants: `--config=configs/hubert_base.py:stacking=top` (or middle, none), `:runlocal` for
a smoke test. Meant for a TPU v4-8 / 8 x A100 host (bfloat16); LibriSpeech 960 h, 200k steps
at batch 24 of <= 15.6 s crops. The paper gives the method, not every hyper-parameter: the
learning rate, schedule, batch and crop are DistilHuBERT's (s3prl: AdamW 2e-4, 7% warmup,
linear decay); betas, eps, clipping (10) and weight decay (none) are optax's defaults, not
s3prl's (optim.distilhubert_config has those). Cost: one teacher forward + one student step
per batch; the measured time per step and per run on a GPU is in benchmarks/RESULTS.md
("GPU").
"""

from stackdistill.config import apply_arg, base_config


def get_config(arg=None):
    c = base_config()
    c.teacher.name = "facebook/hubert-base-ls960"
    c.data.source = "librispeech"
    c.data.path = "/data/LibriSpeech"
    c.dtype = "bfloat16"
    return apply_arg(c, arg)
