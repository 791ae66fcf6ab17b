"""XLS-R 300M (multilingual wav2vec2, 24 x 1024) -> 12 x 384 student, interleaved 3-6-9-12.

  python -m stackdistill.main --config=configs/xlsr.py --workdir=gs://BUCKET/runs/xlsr \
      --config.data.path=/data/multilingual/train.tsv

`facebook/wav2vec2-xls-r-300m` (pre-trained on 436k h in 128 languages) is a
`Wav2Vec2ForPreTraining` checkpoint in the "stable layer norm" layout (pre-LN layers, a
LayerNorm after every conv of the front-end, conv biases); `teacher.load` reads its encoder
and ignores the quantizer and projection heads. The data are a fairseq-style manifest
(`data.source="manifest"`: a .tsv or .jsonl, `python -m stackdistill.data.manifest DIR`
writes one) of the multilingual corpus, e.g. the MLS / Common Voice / VoxPopuli / BABEL mix
XLS-R was pre-trained on. `data.normalize=True`: XLS-R's feature extractor normalises
every utterance to zero mean and unit variance (`do_normalize=True`), HuBERT Base's does not.

Targets: teacher layers 8, 16, 24, the same relative depths (1/3, 2/3, 3/3) as the paper's
4, 8, 12 of HuBERT Base, so the initial 3-layer stack and every stage pair each student layer
with the teacher layer at its relative depth and the run differs from configs/hubert_base.py
only in its teacher and data. For a pre-LN teacher transformers' `hidden_states` are the
residual stream; the final LayerNorm only enters `last_hidden_state`, so the layer-24 target
is not normalised either. wav2vec2's top layers specialise in its contrastive pre-training
task (its phonetic and word content peaks below the top: Pasad et al., 2021); to distil those
instead, pick them: `--config.distill.teacher_layers='(8, 16, 20)'`.

Cost: the teacher forward is 2.6x HuBERT Base's FLOPs on 15.6 s crops (stackdistill/flops.py;
the CNN front-end is the same), the student the same as in configs/hubert_base.py; not run
here (no hub access). Variants: `:stacking=top` (middle, none), `:runlocal`.
"""

from stackdistill.config import apply_arg, base_config


def get_config(arg=None):
    c = base_config()
    c.teacher.name = "facebook/wav2vec2-xls-r-300m"
    c.distill.teacher_layers = (8, 16, 24)
    c.data.source = "manifest"
    c.data.path = "/data/multilingual/train.tsv"
    c.data.normalize = True
    c.dtype = "bfloat16"
    return apply_arg(c, arg)
