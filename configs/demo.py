"""Offline demo: a tiny random teacher and espeak-ng speech, interleaved stacking 3-6-9-12.

  python -m stackdistill.main --config=configs/demo.py --workdir=/tmp/demo

Needs no network: the teacher (12 x 48, HuBERT architecture, random) is written in
transformers format into the workdir and loaded through the real conversion path; the
data are 200 utterances synthesised with espeak-ng into the workdir. Meant for a laptop or
this project's CI machine (2 CPU cores): 3 stage transitions and a falling loss (run times:
benchmarks/RESULTS.md, "Persistent compilation cache").
Variants: `:stacking=top` (middle, none), or any `--config.field=value`.
"""

from stackdistill.config import apply_arg, base_config
from stackdistill.teacher import DEMO_ARCH


def get_config(arg=None):
    c = base_config()
    c.teacher.name = "tiny_teacher"  # under the workdir
    c.teacher.random_arch = dict(DEMO_ARCH)
    c.student.update(num_layers=12, hidden_size=32, intermediate_size=64, num_heads=2)
    c.data.source = "synthetic"
    c.data.path = "synth"  # under the workdir
    c.data.synth_num = 200
    c.data.max_samples = 32_000
    c.data.min_samples = 4_000
    c.total_steps = 160
    c.batch_size = 8
    c.optim.learning_rate = 2e-3
    c.optim.warmup_fraction = 0.05
    c.log_every = 10
    c.checkpoint_every = 40
    return apply_arg(c, arg)
