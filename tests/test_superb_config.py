"""Every s3prl hyper-parameter in superb/config.py against the yaml values it cites."""

import pytest

from stackdistill.superb import config as superb_config

# Read from s3prl 0.4.18 (github.com/s3prl/s3prl, commit ec8064b5889f81ca460fbe2c094ce576a6f120b7),
# s3prl/downstream/<file>: runner.{total_steps, gradient_clipping, gradient_accumulate_steps,
# eval_step}, optimizer.lr, the training batch size of the downstream's data section, and the
# model's projector/project_dim (plus the RNNs' dim and dropout where the head is a BiLSTM).
S3PRL_VERSION = "0.4.18"
YAML = {
    "ctc/libriphone.yaml": dict(total_steps=100_000, gradient_clipping=1,
        gradient_accumulate_steps=2, eval_step=1_000, lr=1.0e-2, batch_size=16, project_dim=256),
    "asr/config.yaml": dict(total_steps=200_000, gradient_clipping=1,
        gradient_accumulate_steps=1, eval_step=2_000, lr=1.0e-4, batch_size=32, project_dim=1024,
        rnn_dim=[1024, 1024], rnn_dropout=[0.2, 0.2]),
    "speech_commands/config.yaml": dict(total_steps=200_000, gradient_clipping=1,
        gradient_accumulate_steps=1, eval_step=5_000, lr=1.0e-4, batch_size=32, project_dim=256),
    "voxceleb1/config.yaml": dict(total_steps=200_000, gradient_clipping=1,
        gradient_accumulate_steps=4, eval_step=5_000, lr=1.0e-4, batch_size=8, project_dim=256),
    "fluent_commands/config.yaml": dict(total_steps=200_000, gradient_clipping=1,
        gradient_accumulate_steps=1, eval_step=5_000, lr=1.0e-4, batch_size=32, project_dim=256),
    "emotion/config.yaml": dict(total_steps=30_000, gradient_clipping=1,
        gradient_accumulate_steps=8, eval_step=1_000, lr=1.0e-4, batch_size=4, project_dim=256),
    "ctc/snips.yaml": dict(total_steps=200_000, gradient_clipping=1,
        gradient_accumulate_steps=1, eval_step=2_000, lr=1.0e-4, batch_size=32, project_dim=1024,
        rnn_dim=[1024, 1024], rnn_dropout=[0.2, 0.2]),
    # -> configs/amsoftmax.yaml; optimizer AdamW; modelrc.input_dim (the connector) as project_dim
    "sv_voxceleb1/config.yaml": dict(total_steps=200_000, gradient_clipping=1.0e3,
        gradient_accumulate_steps=5, eval_step=10_000, lr=1.0e-4, batch_size=10, project_dim=512,
        optimizer="AdamW", agg_dim=1500, am_s=30.0, am_m=0.4),
    # no projection; modelrc rnn_layers 1, hidden_size 512 (a unidirectional LSTM)
    "diarization/config.yaml": dict(total_steps=30_000, gradient_clipping=1,
        gradient_accumulate_steps=4, eval_step=500, lr=1.0e-4, batch_size=8, rnn_layers=1,
        hidden_size=512, chunk_size=2000, num_speakers=2),
}  # fmt: skip


def _expected(y: dict) -> dict:
    """Our fields from s3prl's: one optimizer step sees batch x accumulate utterances."""
    out = dict(
        lr=y["lr"],
        total_steps=y["total_steps"],
        batch_size=y["batch_size"] * y["gradient_accumulate_steps"],
        eval_every=y["eval_step"],
        clip_norm=float(y["gradient_clipping"]),
    )
    if "project_dim" in y:
        out["proj_dim"] = y["project_dim"]
    if "hidden_size" in y:  # diarization's LSTM
        out.update(lstm_dim=y["hidden_size"], lstm_layers=y["rnn_layers"])
    if "rnn_dim" in y:
        assert len(set(y["rnn_dim"])) == 1 and len(set(y["rnn_dropout"])) == 1
        out.update(
            lstm_dim=y["rnn_dim"][0], lstm_layers=len(y["rnn_dim"]), dropout=y["rnn_dropout"][0]
        )
    return out


@pytest.mark.parametrize("task", sorted(superb_config.S3PRL))
def test_s3prl_entries_match_the_yaml_they_cite(task):
    file = superb_config.S3PRL_FILES[task].removeprefix("s3prl/downstream/")
    assert superb_config.S3PRL[task] == _expected(YAML[file]), f"{task}: {file} @ {S3PRL_VERSION}"
    defaults = superb_config.default_config()[task]
    assert {k: defaults[k] for k in superb_config.S3PRL[task]} == superb_config.S3PRL[task]


def test_asv_and_sd_extras_match_their_yaml():
    c = superb_config.default_config()
    sv, sd = YAML["sv_voxceleb1/config.yaml"], YAML["diarization/config.yaml"]
    assert (c.asv.optimizer, c.asv.agg_dim) == (sv["optimizer"].lower(), sv["agg_dim"])
    assert (c.asv.am_scale, c.asv.am_margin) == (sv["am_s"], sv["am_m"])
    assert (c.sd.chunk_frames, c.sd.num_speakers) == (sd["chunk_size"], sd["num_speakers"])
