"""SUPERB on the datasets as they are unpacked, every path under one root folder.

  python -m stackdistill.main --config=configs/superb_demo.py:/data/superb --workdir=/tmp/sd \
      --mode=eval --config.superb.upstreams="('hf:/models/distilled',)"

ROOT holds the releases under their own names (any task may be missing: drop it from
`--config.superb.tasks`, or point its fields elsewhere with `--config.superb.<task>.path=`):
  speech_commands_v0.01/, speech_commands_test_set_v0.01/            KS
  LibriSpeech/ and librispeech-lexicon-200k-g2p.txt,
    librispeech-lexicon-allothers-g2p.txt (s3prl/downstream/ctc/lexicon/)  PR, ASR
  VoxCeleb1/ and iden_split.txt                                       SID
    (VoxCeleb1/dev/wav/ and test/wav/ as s3prl lays them out) and voxceleb1_test_v2.txt  ASV
  IEMOCAP_full_release/                                               ER
  fluent_speech_commands_dataset/                                     IC
  SNIPS/ (s3prl/preprocess/snips_prepare_data.sh)                     SF
  quesst14Database/ (quesst14Database.tgz, scoring/ included)         QbE
  libri2mix_sd/ (s3prl's LibriMix/scripts/prepare_diarization.py --target_dir: train/, dev/,
    test/ with wav.scp, segments, utt2spk, reco2dur, rttm)            SD
Every head hyper-parameter is s3prl's (stackdistill/superb/config.py); both the weighted-sum
and the last-layer heads are trained. The upstream defaults to the demo's tiny random teacher.
"""

import os

from stackdistill.config import base_config, load_file

TASKS = ("pr", "asr", "ks", "qbe", "sid", "asv", "sd", "er", "ic", "sf")  # SUPERB's ten


def get_config(root=None):
    c = base_config()
    root = os.path.abspath(root or ".")
    join = lambda *names: os.path.join(root, *names)
    c.teacher.name = "tiny_teacher"  # under the workdir
    demo = load_file(os.path.join(os.path.dirname(__file__), "demo.py"))
    c.teacher.random_arch = demo.teacher.random_arch  # the demo's random 12 x 48 HuBERT
    s = c.superb
    s.upstreams = ("teacher",)
    s.tasks = TASKS
    s.layer_selection = "both"
    s.cka = False
    s.pr.path = s.asr.path = join("LibriSpeech")
    lexicons = ("librispeech-lexicon-200k-g2p.txt", "librispeech-lexicon-allothers-g2p.txt")
    s.pr.lexicon = ",".join(join(f) for f in lexicons)
    s.ks.path = join("speech_commands_v0.01")
    s.ks.test_path = join("speech_commands_test_set_v0.01")
    s.sid.path, s.sid.split_file = join("VoxCeleb1"), join("iden_split.txt")
    s.er.path = join("IEMOCAP_full_release")
    s.ic.path = join("fluent_speech_commands_dataset")
    s.sf.path = join("SNIPS")
    s.qbe.path = join("quesst14Database")
    s.asv.path, s.asv.trials = join("VoxCeleb1"), join("voxceleb1_test_v2.txt")
    s.sd.path = join("libri2mix_sd")
    return c
