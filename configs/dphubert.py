"""DPHuBERT (Peng et al., Interspeech 2023, arXiv 2305.17651): joint distillation and structured
pruning of HuBERT Base to 75% sparsity, then final distillation of the pruned model.

  python -m stackdistill.main --config=configs/dphubert.py --workdir=DIR \
      --config.data.path=/data/LibriSpeech

Reproduces pyf98/DPHuBERT run.sh (every value cited in stackdistill/recipes/dp.py): teacher
and student init facebook/hubert-base-ls960; distill layers 0.4,8,12 (layer2layer heads,
L1 + raw cosine); 50k steps at lr 2e-4 (15k warmup, linear decay), gates of conv channels,
heads and FFN units at reg_lr 0.02, target sparsity 0.75 reached at step 5k; prune; final
distillation 25k steps at lr 1e-4 (5k warmup). Writes prune/, pruned/, final/ and
summary.json in DIR (stackdistill/pruning/pipeline.py). `:runlocal`: offline, demo-size
(random 12 x 48 teacher, espeak-ng speech), 24 + 16 steps, about a CPU minute or two.
"""

from stackdistill.recipes import dp


def get_config(arg=None):
    return dp.get_config("dphubert", arg)
