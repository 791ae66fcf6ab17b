"""export: trained demo students in transformers PyTorch as s3prl loads them, heads, card, guard."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import DEMO, ROOT, demo_config
from hf_fixtures import hf_hidden_states, padded_batch

from stackdistill import checkpoint, export, models, optim, teacher, train
from stackdistill.data import audio
from stackdistill.export import model_card
from stackdistill.export import s3prl as export_s3prl
from stackdistill.models import student

POS_CONV = ("encoder", "pos_conv_embed", "conv", "kernel")


def _max_rel_err(ours, ref, mask):
    err = np.abs(np.asarray(ours, np.float64) - ref) / np.maximum(1.0, np.abs(ref))
    return float(err[np.asarray(mask)].max())


@pytest.fixture(scope="module")
def run(demo_shared, tmp_path_factory):
    """A demo run of 3 steps (depths 3, 6, 12), checkpoints at steps 2 (depth 6) and 3."""
    workdir = tmp_path_factory.mktemp("run")
    config = demo_config(
        demo_shared, total_steps=3, checkpoint_every=2, **{"stacking.num_new": (3, 6)}
    )
    train.train_and_evaluate(config, str(workdir))
    return config, workdir


@pytest.fixture(scope="module")
def distil_run(demo_shared, tmp_path_factory):
    """A DistilHuBERT-shaped demo run (configs/distilhubert.py's student and optimizer), 2 steps."""
    workdir = tmp_path_factory.mktemp("run_dh")
    config = demo_config(demo_shared, total_steps=2, checkpoint_every=2)
    dh = student.distilhubert_config()
    dh.update(num_layers=2, hidden_size=48, intermediate_size=96, num_heads=4)
    config.student = dh
    config.optim = optim.distilhubert_config()
    config.optim.learning_rate = 2e-3
    config.stacking.method = "none"
    config.distill.update(loss="l1_cos", heads_on="last")
    config.data.normalize = True
    train.train_and_evaluate(config, str(workdir))
    return config, workdir


def _load_as_s3prl_does(export_dir: pathlib.Path, monkeypatch, **overrides):
    """Wav2Vec2FeatureExtractor + HubertModel.from_pretrained offline, with the loading info."""
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(export_dir)
    model, loading = transformers.HubertModel.from_pretrained(
        export_dir, output_loading_info=True, **overrides
    )
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not loading.get(kind), (kind, loading[kind])
    return extractor, model


def _check_as_s3prl_loads_it(export_dir, cfg, params, normalize, monkeypatch):
    """hf_hubert_custom's path: the extractor's padded batch into HubertModel = the JAX student."""
    import torch

    extractor, model = _load_as_s3prl_does(export_dir, monkeypatch)
    assert extractor.sampling_rate == 16000 and extractor.do_normalize == normalize
    assert extractor.return_attention_mask is (cfg.feat_extract_norm == "layer")
    wav, lengths = padded_batch(12_000, fraction=0.6)
    wavs = [wav[i, :n] for i, n in enumerate(lengths)]
    inputs = extractor(
        wavs, sampling_rate=16000, padding=True, return_attention_mask=True, return_tensors="pt"
    )
    with torch.no_grad():
        ref = model.eval()(**inputs, output_hidden_states=True).hidden_states
    ours_wav = np.zeros_like(wav)
    for i, w in enumerate(wavs):  # the data pipeline's per-utterance normalisation
        ours_wav[i, : len(w)] = audio.normalize(w) if normalize else w
    out = models.encode(cfg, params["encoder"], ours_wav, lengths)
    assert int(out.mask.sum()) < out.mask.size  # padding is exercised
    for i, ref_i in enumerate(ref):
        assert _max_rel_err(out.hidden_states[i], ref_i.numpy(), out.mask) < 1e-4, f"state {i}"

    # Train mode (fine-tuning in s3prl) with the dropouts off is eval mode: no SpecAugment,
    # no random masked_spec_embed.
    no_dropout = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    _, train_model = _load_as_s3prl_does(export_dir, monkeypatch, **no_dropout)
    with torch.no_grad():
        trained = train_model.train()(**inputs, output_hidden_states=True).hidden_states
    for a, b in zip(trained, ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)


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


def test_export_loads_as_s3prl_loads_it(run, monkeypatch):
    config, workdir = run
    out = export.run(config, str(workdir))
    hf = json.loads((out / "config.json").read_text())
    assert hf["apply_spec_augment"] is False and hf["mask_time_prob"] == 0.0
    cfg, params, _ = checkpoint.load_student(workdir)
    _check_as_s3prl_loads_it(out, cfg, params, bool(config.data.normalize), monkeypatch)


def test_distilhubert_export_loads_as_s3prl_loads_it(distil_run, monkeypatch):
    config, workdir = distil_run
    out = export.run(config, str(workdir))
    cfg, params, _ = checkpoint.load_student(workdir)
    assert not cfg.feat_proj_layer_norm and cfg.dropout == 0.1
    hf = json.loads((out / "config.json").read_text())
    assert hf["feat_proj_layer_norm"] is False
    assert (hf["hidden_dropout"], hf["attention_dropout"], hf["activation_dropout"]) == (0.1,) * 3
    _check_as_s3prl_loads_it(out, cfg, params, True, monkeypatch)
    heads, info = export.load_heads(out)
    assert info["head"] == "mlp"
    jax.tree_util.tree_map(np.testing.assert_array_equal, heads, jax.device_get(params["heads"]))


def test_model_card(run, tmp_path):
    config, workdir = run
    superb = workdir / "superb"
    superb.mkdir(exist_ok=True)
    (superb / "results.md").write_text("| task | metric |\n|---|---|\n| PR | 0.5 |\n")
    try:
        c = config.copy_and_resolve_references()
        c.export.out_dir = str(tmp_path / "card")
        out = export.run(c, str(workdir))
    finally:
        (superb / "results.md").unlink()
    card = (out / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: transformers" in front and "- stackdistill" in front
    assert "base_model" not in front  # the demo teacher is a local directory
    summary = json.loads((workdir / "summary.json").read_text())
    assert f"| loss | {summary['final_metrics']['loss']:.4g} |" in body
    assert "interleaved: depth 3 (steps 0-1) -> 6 (steps 1-2) -> 12 (steps 2-3)" in body
    assert "| PR | 0.5 |" in body and "## mini-SUPERB" in body
    _, params, _ = checkpoint.load_student(workdir)
    assert f"{student.encoder_param_count(params) / 1e6:.1f} M" in body
    # A hub teacher becomes base_model; LibriSpeech the dataset.
    c.teacher.name = "facebook/hubert-base-ls960"
    c.data.source = "librispeech"
    cfg, _, _ = checkpoint.load_student(workdir)
    card = model_card.render(c, workdir, cfg, 1, {"step": 3})
    assert "base_model: facebook/hubert-base-ls960" in card
    assert "datasets:\n- openslr/librispeech_asr" in card


def test_export_guard(run, tmp_path):
    config, workdir = run
    c = config.copy_and_resolve_references()
    c.export.out_dir = str(tmp_path / "out")
    export.run(c, str(workdir))
    export.run(c, str(workdir))  # the same run and step again: fine
    c.export.step = 2
    with pytest.raises(export.ExportMismatch, match=r"step: 3 -> 2"):
        export.run(c, str(workdir))
    c.export.overwrite = True
    export.run(c, str(workdir))
    manifest = json.loads((tmp_path / "out" / export.EXPORT_INFO).read_text())
    assert manifest["step"] == 2 and manifest["depth"] == 6
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    c.export.update(out_dir=str(tmp_path / "other"), overwrite=False)
    with pytest.raises(export.ExportMismatch, match="holds no stackdistill export"):
        export.run(c, str(workdir))


def test_push_to_hub_offline_names_the_hub(run, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config, workdir = run
    c = config.copy_and_resolve_references()
    c.export.update(out_dir=str(tmp_path / "hub"), push_to_hub="someone/student")
    with pytest.raises(export.HubUploadError, match="Hugging Face hub") as err:
        export.run(c, str(workdir))
    assert "someone/student" in str(err.value) and "hf upload" in str(err.value)
    assert (tmp_path / "hub" / "model.safetensors").exists()  # the export itself is complete


def test_s3prl_distiller_format(run, distil_run, tmp_path):
    import torch

    config, workdir = run
    c = config.copy_and_resolve_references()
    c.export.update(out_dir=str(tmp_path / "paper"), format="s3prl_distiller")
    with pytest.raises(export_s3prl.NotExpressible, match="middle layers"):
        export.run(c, str(workdir))
    config, workdir = distil_run
    c = config.copy_and_resolve_references()
    c.export.update(out_dir=str(tmp_path / "dh"), format="s3prl_distiller")
    out = export.run(c, str(workdir))
    ckpt = torch.load(out / export_s3prl.CKPT_NAME, map_location="cpu", weights_only=False)
    distiller = ckpt["Config"]["distiller"]
    assert distiller["encoder_layers"] == 2 and distiller["pred_layer_id"] == [4, 8, 12]
    assert distiller["dropout"] == 0.1 and distiller["feature_grad_mult"] == 0.1
    assert ckpt["Step"] == 2
    try:
        from s3prl.upstream.distiller.model import DistillerConfig, DistillerModel
    except ImportError:
        return  # the key/shape check against s3prl's source is in test_export_s3prl.py
    model = DistillerModel(DistillerConfig(distiller))
    model.load_state_dict(ckpt["Distiller"], strict=True)
