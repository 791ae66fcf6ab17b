"""Data section of a run config: which corpus, how it is cropped, batched and sharded."""

import copy
import os

import ml_collections
from etils import epath

LIBRISPEECH_960H = ("train-clean-100", "train-clean-360", "train-other-500")


def default_config() -> ml_collections.ConfigDict:
    """Returns the data fields with their defaults (real LibriSpeech 960 h, cropped to 250k)."""
    cfg = ml_collections.ConfigDict()
    # "librispeech": openslr folders under `path` | "manifest": a .tsv/.jsonl file at `path` |
    # "tfds": `tfds_name` prepared in data_dir `path` ("" = TFDS default) |
    # "arrayrecord": shards written by `python -m stackdistill.data.pack` in `path` |
    # "synthetic": espeak-ng corpus in `path`, generated there first if it has no manifest.
    cfg.source = "librispeech"
    cfg.path = ""
    cfg.subsets = LIBRISPEECH_960H  # LibriSpeech folders read under `path`
    cfg.tfds_name = "librispeech"
    cfg.split = "train_clean100+train_clean360+train_other500"  # TFDS splits, joined by "+"
    cfg.synth_num = 1000  # utterances to generate for "synthetic" when `path` has none
    cfg.synth_seed = 0

    cfg.max_samples = 250_000  # longer utterances are randomly cropped to this many samples
    cfg.min_samples = 1_600  # shorter ones (after resampling to 16 kHz) are skipped
    cfg.normalize = False  # zero mean, unit variance per utterance (the teacher's do_normalize)
    cfg.label_keys = ()  # record fields copied into the batch, e.g. ("keyword", "speaker")

    cfg.batch_size = 8  # per process
    cfg.bucket_boundaries = ()  # padded lengths to choose from; () pads every batch to max_samples
    cfg.bucket_window = 8  # batches read, sorted by length and split, per bucketing window
    cfg.shuffle = True
    cfg.num_epochs = ml_collections.FieldReference(None, field_type=int)  # None: repeat forever
    cfg.drop_remainder = True  # a short last batch (finite epochs only) is dropped
    cfg.seed = 0

    cfg.num_workers = 0  # grain worker processes; 0 decodes in the training process
    cfg.read_threads = 2  # threads decoding ahead inside each process
    return cfg


def for_run(data_cfg: ml_collections.ConfigDict, workdir: str | os.PathLike):
    """A copy of the data section with a relative synthetic corpus path under the workdir.

    The offline espeak-ng corpus lives in the run's folder; every other source's path is
    the user's and is left as given.
    """
    data_cfg = copy.deepcopy(data_cfg)
    if data_cfg.source == "synthetic" and not epath.Path(data_cfg.path).is_absolute():
        data_cfg.path = str(epath.Path(workdir) / data_cfg.path)
    return data_cfg
