"""The paper's recipe with WavLM Base+ as teacher: 12 x 384 student, interleaved 3-6-9-12.

  python -m stackdistill.main --config=configs/wavlm_base.py --workdir=gs://BUCKET/runs/wlm \
      --config.data.path=/data/LibriSpeech

Same hardware, data and cost as configs/hubert_base.py (the WavLM teacher adds the gated
relative position bias, a few % of the teacher forward). Variants: `:stacking=top`, `:runlocal`.
"""

from stackdistill.config import apply_arg, base_config


def get_config(arg=None):
    c = base_config()
    c.teacher.name = "microsoft/wavlm-base-plus"
    c.data.source = "librispeech"
    c.data.path = "/data/LibriSpeech"
    c.dtype = "bfloat16"
    return apply_arg(c, arg)
