"""DPWavLM (pyf98/DPHuBERT's WavLM Base+ variant, README L115): DPHuBERT's recipe on
microsoft/wavlm-base-plus.

  python -m stackdistill.main --config=configs/dpwavlm.py --workdir=DIR \
      --config.data.path=/data/LibriSpeech

The same run.sh hyper-parameters as configs/dphubert.py (stackdistill/recipes/dp.py cites
each); only the teacher (and the student, its copy) changes. `:runlocal`: offline, demo-size,
a random WavLM-architecture 12 x 48 teacher.
"""

from stackdistill.recipes import dp


def get_config(arg=None):
    return dp.get_config("dpwavlm", arg)
