"""Run configs of pyf98/DPHuBERT's recipe (DPHuBERT, DPWavLM): prune, prune step, final distill.

One builder for `configs/dphubert.py` and `configs/dpwavlm.py`; `stackdistill/pruning/
pipeline.py` runs it (`config.recipe = "dp"`). Every value cites run.sh (commit c18093f) or
the script whose default it keeps (distill.py, final_distill.py, lightning.py).
"""

from __future__ import annotations

import ml_collections

from stackdistill import aot, export, fastpath, paths, sharding, teacher
from stackdistill.config import apply_overrides
from stackdistill.data import config as data_config

HUBERT, WAVLM_PLUS = "facebook/hubert-base-ls960", "microsoft/wavlm-base-plus"
TEACHERS = {"dphubert": HUBERT, "dpwavlm": WAVLM_PLUS}  # run.sh L19; README L115 (Base+)
GPUS, SECONDS_PER_BATCH = 4, 160  # run.sh L61, L51 (per GPU; their DDP sampler splits)
MAX_LEN = 250_000  # lightning.py L313: longer utterances are not batched


def dp_config() -> tuple[ml_collections.ConfigDict, ...]:
    """The recipe's own sections (dp, prune, final): distill loss, pruning, final distillation."""
    dp = ml_collections.ConfigDict()
    dp.layers = "0.4,8,12"  # run.sh L21 (groups by ".", a shared head per group)
    dp.mode = "layer2layer"  # run.sh L22
    dp.l2_weight = 0.0  # run.sh L23
    dp.l1_weight = 1.0  # run.sh L24
    dp.cos_weight = 1.0  # run.sh L25
    dp.cos_type = "raw"  # run.sh L26
    dp.weight_decay = 0.0  # run.sh L56, L95 (torch AdamW, betas 0.9/0.999, eps 1e-8)
    dp.clip_norm = 10.0  # run.sh L59, L98 (Lightning gradient_clip_val, distill.py L48)

    prune = ml_collections.ConfigDict()
    prune.steps = 50_000  # run.sh L31 max
    prune.learning_rate = 2e-4  # run.sh L29
    prune.warmup = 15_000  # run.sh L30 (LinearDecayLRScheduler, lightning.py L22-44)
    prune.units = "conv,head,interm"  # run.sh L32 pruning_units
    prune.reg_learning_rate = 0.02  # run.sh L33
    prune.target_sparsity = 0.75  # run.sh L34
    prune.sparsity_warmup = 5_000  # run.sh L35
    prune.conv = "remove"  # prune.py L32 (their model.prune() removes channels)
    # Ours, not theirs: d > 0 prunes a student of every (L/d)-th teacher layer and grows it
    # back to L by interleaved stacking after the prune step (pipeline.py); 0 = run.sh's
    # student, the whole teacher.
    prune.depth = 0

    final = ml_collections.ConfigDict()
    final.steps = 25_000  # run.sh L41 final_max
    final.learning_rate = 1e-4  # run.sh L39 final_lr
    final.warmup = 5_000  # run.sh L40 final_warmup
    return dp, prune, final


def get_config(recipe: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The run config of `recipe` ("dphubert" | "dpwavlm") with `--config=FILE:ARG` applied."""
    c = ml_collections.ConfigDict()
    c.recipe = "dp"  # train.run hands the run to stackdistill.pruning.pipeline
    c.seed = 2022  # distill.py L30, final_distill.py L25 (pl.seed_everything)
    # 4 GPUs x 160 s of audio per step (run.sh L51, L61) in rows of at most MAX_LEN samples:
    # 640 s / 15.6 s = 40 rows. Theirs count seconds (more, shorter rows, cropped to the
    # batch's shortest, lightning.py L308-321); ours pads every row to data.max_samples.
    c.batch_size = GPUS * SECONDS_PER_BATCH * 16_000 // MAX_LEN
    c.dtype = "bfloat16"  # run.sh L63, L102 precision 16
    c.teacher = teacher.default_config()
    c.teacher.name = TEACHERS[recipe]
    c.data = data_config.default_config()
    c.data.update(source="librispeech", path="/data/LibriSpeech")  # run.sh L17-18 train960
    c.data.max_samples = MAX_LEN  # lightning.py L313 max_len (theirs skips, ours crops)
    c.data.min_samples = 32_000  # lightning.py L312 min_len
    c.fastpath = fastpath.default_config()
    c.dp, c.prune, c.final = dp_config()
    c.export = export.default_config()  # --mode=export: final/ (export/dp.py)
    c.compile = aot.default_config()  # --mode=compile: both training steps (pipeline.py)
    c.mesh = sharding.default_config()  # the local devices: batch over ('data', 'fsdp')
    c.log_every = 50  # run.sh L54 log_interval
    c.checkpoint_every = 1_000
    c.keep_checkpoints = 2
    c.resume_changed = ""  # refused changes let through on purpose (resume.parse_allow)
    c.compilation_cache_dir = str(paths.cache_home() / "xla")
    items = [i for i in (arg or "").split(",") if i]
    for item in items:
        if item == "runlocal":
            runlocal(c, "wavlm" if recipe == "dpwavlm" else "hubert")
        elif "=" in item:
            apply_overrides(c, [item])
        else:
            raise ValueError(f"config argument {item!r}: expected runlocal or a.b=value")
    return c


def runlocal(c: ml_collections.ConfigDict, model_type: str = "hubert") -> None:
    """Offline and small (configs/demo.py's random 12 x 48 teacher, espeak-ng speech): a few
    dozen steps per stage, a couple of CPU minutes. The recipe's loss and stages are kept."""
    c.teacher.name = "tiny_teacher"  # under the workdir
    c.teacher.random_arch = dict(teacher.DEMO_ARCH, model_type=model_type)
    c.dtype = "float32"
    c.batch_size = 4
    c.data.update(source="synthetic", path="synth", synth_num=40, min_samples=4_000)
    c.data.max_samples = 16_000
    c.prune.update(steps=24, warmup=4, sparsity_warmup=12, reg_learning_rate=0.2)
    c.prune.learning_rate = 2e-3
    c.final.update(steps=16, warmup=2, learning_rate=1e-3)
    c.log_every = 4
    c.checkpoint_every = 8
