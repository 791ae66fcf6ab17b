"""teacher.load against transformers in PyTorch: parity, weight-norm spellings, cache, errors."""

import json

import jax
import numpy as np
import pytest
from hf_fixtures import hf_hidden_states, make_hf_model, padded_batch, save_hf_model
from safetensors.numpy import load_file, save_file

from stackdistill import convert, models, teacher

CASES = [(m, stable) for m in ("hubert", "wavlm", "wav2vec2") for stable in (False, True)]


def _max_rel_err(ours, ref, mask):
    err = np.abs(np.asarray(ours, np.float64) - ref) / np.maximum(1.0, np.abs(ref))
    return float(err[np.asarray(mask)].max())


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("STACKDISTILL_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("model_type,stable", CASES)
def test_hidden_states_match_transformers(tmp_path, model_type, stable):
    model = make_hf_model(model_type, stable, conv_bias=stable)
    cfg, params = teacher.load(str(save_hf_model(model, tmp_path / "m")))
    assert (cfg.model_type, cfg.do_stable_layer_norm) == (model_type, stable)
    wav, lengths = padded_batch(4000)  # 199 frames: WavLM's log-spaced buckets are exercised
    ref = hf_hidden_states(model, wav, lengths)
    out = models.encode(cfg, params, wav, lengths)

    assert out.hidden_states.shape == (len(ref) - 1, 2, 199, 32)
    np.testing.assert_array_equal(out.mask.sum(1), [199, 139])
    for i, ref_i in enumerate(ref[:-1]):
        assert _max_rel_err(out.hidden_states[i], ref_i, out.mask) < 1e-4, f"hidden state {i}"
    assert _max_rel_err(out.last_hidden_state, ref[-1], out.mask) < 1e-4


def test_pytorch_bin_and_legacy_weight_norm_names(tmp_path):
    model = make_hf_model("hubert", False)
    wav, lengths = padded_batch(2000)
    ref = hf_hidden_states(model, wav, lengths)

    bin_dir = save_hf_model(model, tmp_path / "bin", safe=False)
    assert (bin_dir / "pytorch_model.bin").exists()
    cfg, params = teacher.load(str(bin_dir), use_cache=False)
    out = models.encode(cfg, params, wav, lengths)
    assert _max_rel_err(out.hidden_states[-1], ref[-2], out.mask) < 1e-4

    # The pre-parametrization spelling (weight_g / weight_v) of older checkpoints.
    legacy = save_hf_model(model, tmp_path / "legacy")
    state = load_file(legacy / "model.safetensors")
    prefix = "encoder.pos_conv_embed.conv."
    state[prefix + "weight_g"] = state.pop(prefix + "parametrizations.weight.original0")
    state[prefix + "weight_v"] = state.pop(prefix + "parametrizations.weight.original1")
    save_file(state, legacy / "model.safetensors", metadata={"format": "pt"})
    _, legacy_params = teacher.load(str(legacy), use_cache=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, legacy_params, params)


def test_second_load_reads_cache_without_conversion(tmp_path, monkeypatch):
    path = str(save_hf_model(make_hf_model("wavlm", False), tmp_path / "m"))
    cfg, params = teacher.load(path)
    assert list((tmp_path / "cache" / "teachers").iterdir())

    def no_reading(*_):
        raise AssertionError("the cached load must not read the checkpoint again")

    monkeypatch.setattr(teacher, "_read_state_dict", no_reading)
    cfg2, params2 = teacher.load(path)
    assert cfg2 == cfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)


def test_round_trip_state_dict(tmp_path):
    model = make_hf_model("wavlm", True)
    cfg, params = teacher.load(str(save_hf_model(model, tmp_path / "m")), use_cache=False)
    state = convert.params_to_state_dict(cfg, params)
    again = convert.state_dict_to_params(cfg, state)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), again, params
    )


def test_directory_without_weights(tmp_path):
    path = save_hf_model(make_hf_model("hubert", False), tmp_path / "m")
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no weights"):
        teacher.load(str(path))


def test_missing_tensor_is_named(tmp_path):
    path = save_hf_model(make_hf_model("hubert", False), tmp_path / "m")
    state = load_file(path / "model.safetensors")
    del state["encoder.layers.1.feed_forward.output_dense.bias"]
    state["encoder.extra.weight"] = np.zeros(3, np.float32)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing.*layers\.1\.feed_forward\.output_dense\.bias"):
        teacher.load(str(path))
    with pytest.raises(ValueError, match=r"unexpected.*encoder\.extra\.weight"):
        teacher.load(str(path))


def test_unknown_model_type_is_named(tmp_path):
    path = save_hf_model(make_hf_model("hubert", False), tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "data2vec-audio"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported model_type 'data2vec-audio'"):
        teacher.load(str(path))


def test_not_a_directory_or_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a model directory nor a hub id"):
        teacher.load(str(tmp_path / "nothing" / "here"))


@pytest.mark.parametrize("model_type", ["hubert", "wavlm", "wav2vec2"])
def test_written_random_teacher_loads_in_transformers(tmp_path, model_type):
    import torch
    import transformers
    from hf_fixtures import HF_CLASSES, TINY

    cfg = models.EncoderConfig.from_hf({**TINY, "model_type": model_type})
    path = teacher.write_random(tmp_path / "t", cfg, seed=3)
    cls = getattr(transformers, HF_CLASSES[model_type][1])
    torch_model = cls.from_pretrained(path).eval()
    cfg2, params = teacher.load(str(path))
    assert cfg2 == cfg
    wav, lengths = padded_batch(4000)
    ref = hf_hidden_states(torch_model, wav, lengths)
    out = models.encode(cfg, params, wav, lengths)
    for i in range(cfg.num_layers + 1):
        assert _max_rel_err(out.hidden_states[i], ref[i], out.mask) < 1e-4
    assert torch.is_tensor(torch_model.encoder.pos_conv_embed.conv.weight)


def test_hub_id_resolves_through_the_hf_cache_offline(tmp_path, monkeypatch):
    """A hub id is read from the Hugging Face cache layout; HF_HUB_OFFLINE forbids the network."""
    import huggingface_hub.constants

    model = make_hf_model("hubert", False)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--some-org--tiny-hubert"
    save_hf_model(model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg, params = teacher.load("some-org/tiny-hubert")
    wav, lengths = padded_batch(2000)
    out = models.encode(cfg, params, wav, lengths)
    ref = hf_hidden_states(model, wav, lengths)
    assert _max_rel_err(out.hidden_states[-1], ref[-2], out.mask) < 1e-4
    with pytest.raises(Exception, match="(?i)offline|cannot find|not found|connection"):
        teacher.load("some-org/not-in-the-cache")
