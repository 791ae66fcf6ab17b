"""Readers of the SUPERB datasets as their users have them on disk, with s3prl's split rules.

Each module is a pure reader (no JAX, no model): given the paths a user sets under
`config.superb.<task>`, it returns a `Dataset` whose splits ("train", "dev", "test") are lists
of small records (`path`, `name`, `speaker` and the task's labels) and whose `classes` name the
labels. The rules come from s3prl's downstream recipes (s3prl/s3prl at 0.4.18), cited in each
module:

    from stackdistill.superb import datasets
    ks = datasets.speech_commands.read(path, test_path)   # 12 classes
    pr = datasets.librispeech.read_pr(path, lexicon)      # lexicon phones
    asr = datasets.librispeech.read_asr(path)             # s3prl's characters
    sid = datasets.voxceleb1.read(path, split_file)
    ic = datasets.fluent_commands.read(path)
    er = datasets.iemocap.read(path, fold)                # fold 1..5 = test session
    sf = datasets.snips.read(path)
    qbe = datasets.quesst14.read(path)                    # queries + utterances searched
    asv, trials = datasets.voxceleb1.read_verification(path, trials)
    sd = datasets.libri2mix.read(path)                    # s3prl's prepared folders
"""

from stackdistill.superb.datasets import (
    fluent_commands,
    iemocap,
    libri2mix,
    librispeech,
    quesst14,
    snips,
    speech_commands,
    voxceleb1,
)
from stackdistill.superb.datasets.common import Dataset, MissingData

__all__ = [
    "Dataset",
    "MissingData",
    "fluent_commands",
    "iemocap",
    "libri2mix",
    "librispeech",
    "quesst14",
    "snips",
    "speech_commands",
    "voxceleb1",
]
