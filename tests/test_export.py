"""export: a trained demo student in transformers PyTorch (HubertModel), heads, round trip."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import DEMO, ROOT, demo_config
from hf_fixtures import hf_hidden_states, padded_batch

from stackdistill import checkpoint, export, models, teacher, train
from stackdistill.models import student

POS_CONV = ("encoder", "pos_conv_embed", "conv", "kernel")


def _max_rel_err(ours, ref, mask):
    err = np.abs(np.asarray(ours, np.float64) - ref) / np.maximum(1.0, np.abs(ref))
    return float(err[np.asarray(mask)].max())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A demo run of 3 steps (depths 3, 6, 12), checkpoints at steps 2 (depth 6) and 3."""
    shared = tmp_path_factory.mktemp("shared")
    workdir = tmp_path_factory.mktemp("run")
    config = demo_config(shared, total_steps=3, checkpoint_every=2, **{"stacking.num_new": (3, 6)})
    train.train_and_evaluate(config, str(workdir))
    return config, workdir


def _check_in_transformers(export_dir: pathlib.Path, cfg, params) -> None:
    """Every hidden state of HubertModel.from_pretrained equals the JAX student's, padded batch."""
    import transformers

    hf_model = transformers.HubertModel.from_pretrained(export_dir).eval()
    wav, lengths = padded_batch(12_000, fraction=0.6)
    ref = hf_hidden_states(hf_model, wav, lengths)
    out = models.encode(cfg, params["encoder"], wav, lengths)
    assert len(ref) - 1 == out.hidden_states.shape[0] == cfg.num_layers + 1
    assert int(out.mask.sum()) < out.mask.size  # padding is exercised
    for i, ref_i in enumerate(ref[:-1]):
        assert _max_rel_err(out.hidden_states[i], ref_i, out.mask) < 1e-4, f"hidden state {i}"
    assert _max_rel_err(out.last_hidden_state, ref[-1], out.mask) < 1e-4


def test_latest_student_loads_in_transformers(run):
    config, workdir = run
    out = export.run(config, str(workdir))
    assert out == workdir / "export"
    cfg, params, meta = checkpoint.load_student(workdir)
    assert meta["step"] == 3 and cfg.num_layers == 12
    hf = json.loads((out / "config.json").read_text())
    assert hf["architectures"] == ["HubertModel"] and hf["num_hidden_layers"] == 12
    assert hf["hidden_size"] == config.student.hidden_size
    _check_in_transformers(out, cfg, params)


def test_cli_exports_an_earlier_shallower_checkpoint(run, tmp_path):
    config, workdir = run
    args = [
        sys.executable,
        "-m",
        "stackdistill.main",
        f"--config={DEMO}",
        f"--workdir={workdir}",
        "--mode=export",
        "--config.export.step=2",
        f"--config.export.out_dir={tmp_path / 'step2'}",
        f"--config.teacher.name={config.teacher.name}",
    ]
    subprocess.run(args, check=True, cwd=ROOT, capture_output=True)
    cfg, params, meta = checkpoint.load_student(workdir, step=2)
    assert cfg.num_layers == 6
    _check_in_transformers(tmp_path / "step2", cfg, params)
    info = json.loads((tmp_path / "step2" / export.HEADS_INFO).read_text())
    assert info["step"] == 2 and info["depth"] == 6
    assert info["target_sources"] == meta["target_sources"]


def test_heads_predict_as_in_training(run, tmp_path):
    config, workdir = run
    cfg, params, meta = checkpoint.load_student(workdir)
    export.export_student(cfg, params, tmp_path, meta["target_sources"])
    heads, info = export.load_heads(tmp_path)
    assert info["teacher_layers"] == list(config.distill.teacher_layers)
    jax.tree_util.tree_map(np.testing.assert_array_equal, heads, jax.device_get(params["heads"]))

    # The documented recipe, in PyTorch: hidden_states[s] @ weight.T + bias.
    import torch
    import transformers
    from safetensors.torch import load_file

    hf_model = transformers.HubertModel.from_pretrained(tmp_path).eval()
    tensors = load_file(tmp_path / export.HEADS_WEIGHTS)
    wav, lengths = padded_batch(8000)
    ref = hf_hidden_states(hf_model, wav, lengths)
    out = models.encode(cfg, params["encoder"], wav, lengths)
    sources = {int(k): s for k, s in info["target_sources"].items()}
    ours = student.predict(params["heads"], out.hidden_states, sources)
    for k, s in sources.items():
        linear = torch.nn.Linear(cfg.hidden_size, tensors[f"layer_{k}.weight"].shape[0])
        linear.load_state_dict(
            {"weight": tensors[f"layer_{k}.weight"], "bias": tensors[f"layer_{k}.bias"]}
        )
        with torch.no_grad():
            theirs = linear(torch.from_numpy(ref[s])).numpy()
        assert _max_rel_err(ours[k], theirs, out.mask) < 1e-4, f"head of teacher layer {k}"


def test_round_trip_through_teacher_load(run, tmp_path):
    _, workdir = run
    cfg, params, meta = checkpoint.load_student(workdir)
    export.export_student(cfg, params, tmp_path, meta["target_sources"])
    cfg_back, params_back = teacher.load(str(tmp_path), use_cache=False)
    assert cfg_back == cfg
    flat = dict(jax.tree_util.tree_flatten_with_path(jax.device_get(params["encoder"]))[0])
    flat_back = dict(jax.tree_util.tree_flatten_with_path(params_back)[0])
    assert flat.keys() == flat_back.keys()
    for path, x in flat.items():
        names = tuple(k.key for k in path)
        if names == POS_CONV:
            # transformers stores this kernel weight-normed (g, v): folding g * v / ||v|| back
            # rounds once in float32, so it comes back within one unit in the last place.
            np.testing.assert_array_max_ulp(np.asarray(flat_back[path]), np.asarray(x), 1)
        else:
            np.testing.assert_array_equal(np.asarray(flat_back[path]), np.asarray(x), str(names))


def test_inconsistent_target_sources_are_refused(run, tmp_path):
    _, workdir = run
    cfg, params, _ = checkpoint.load_student(workdir)
    with pytest.raises(ValueError, match="do not name the heads"):
        export.export_student(cfg, params, tmp_path, {"4": 4, "12": 12})
    with pytest.raises(ValueError, match="beyond depth"):
        export.export_student(cfg, params, tmp_path, {"4": 4, "8": 8, "12": 13})
