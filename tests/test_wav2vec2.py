"""wav2vec2 / XLS-R teachers: task-model checkpoints, published sizes, adapters, configs/xlsr.py.

The parity of bare `Wav2Vec2Model`s of both layouts with transformers is in test_teacher.py
(its CASES); here: the `wav2vec2.`-prefixed checkpoints, full-size parameter counts against
transformers' own, and the XLS-R run config.
"""

import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest
from hf_fixtures import XLSR_300M, hf_hidden_states, make_hf_model, padded_batch, save_hf_model
from safetensors.numpy import load_file

from stackdistill import convert, models, stage, teacher
from stackdistill.config import base_config
from stackdistill.models import EncoderConfig, student

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("STACKDISTILL_CACHE", str(tmp_path / "cache"))


def _max_rel_err(ours, ref, mask):
    err = np.abs(np.asarray(ours, np.float64) - ref) / np.maximum(1.0, np.abs(ref))
    return float(err[np.asarray(mask)].max())


def _meta_model(cls_name: str, **config):
    """A transformers wav2vec2 model on the meta device: shapes only, no memory, no download."""
    import torch
    import transformers

    with torch.device("meta"):
        return getattr(transformers, cls_name)(transformers.Wav2Vec2Config(**config))


@pytest.mark.parametrize("head,stable", [("ForPreTraining", True), ("ForCTC", False)])
def test_task_checkpoint_converts_as_its_encoder(tmp_path, head, stable):
    model = make_hf_model("wav2vec2", stable, conv_bias=stable, head=head, vocab_size=11)
    path = save_hf_model(model, tmp_path / "task")
    names = load_file(path / "model.safetensors").keys()
    heads = sorted({n.split(".")[0] for n in names if not n.startswith("wav2vec2.")})
    assert heads == (["project_hid", "project_q", "quantizer"] if stable else ["lm_head"])

    cfg, params = teacher.load(str(path))
    assert (cfg.model_type, cfg.do_stable_layer_norm, cfg.conv_bias) == ("wav2vec2", stable, stable)
    wav, lengths = padded_batch(4000)
    ref = hf_hidden_states(model.wav2vec2, wav, lengths)
    out = models.encode(cfg, params, wav, lengths)
    assert out.hidden_states.shape[0] == len(ref) - 1
    for i, ref_i in enumerate(ref[:-1]):
        assert _max_rel_err(out.hidden_states[i], ref_i, out.mask) < 1e-4, f"hidden state {i}"
    assert _max_rel_err(out.last_hidden_state, ref[-1], out.mask) < 1e-4

    # The same encoder saved as a bare Wav2Vec2Model converts to the very same params.
    cfg_bare, bare = teacher.load(str(save_hf_model(model.wav2vec2, tmp_path / "bare")))
    assert cfg_bare == cfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, bare)


def _count_converted(cls_name: str, **config) -> tuple[int, int]:
    """(params we convert a full-size checkpoint to, transformers' count for its encoder)."""
    model = _meta_model(cls_name, **config)
    cfg = EncoderConfig.from_hf(model.config)
    # Every tensor as a broadcast view of 1.0: the real shapes at no memory until stacked.
    state = {
        k: np.broadcast_to(np.float32(1), tuple(v.shape)) for k, v in model.state_dict().items()
    }
    encoder = model.wav2vec2 if cls_name != "Wav2Vec2Model" else model
    torch_count = sum(p.numel() for p in encoder.parameters())
    # torch counts the weight-norm g of the positional conv (num_conv_pos_embeddings values,
    # folded into the kernel here); masked_spec_embed is kept (masking distillation).
    expected = torch_count - cfg.num_conv_pos_embeddings
    return models.param_count(convert.state_dict_to_params(cfg, state)), expected


def test_wav2vec2_base_pretraining_checkpoint_converts_with_the_published_size():
    # Wav2Vec2Config()'s defaults are facebook/wav2vec2-base's architecture (group norm, post-LN).
    n, expected = _count_converted("Wav2Vec2ForPreTraining")
    assert n == expected
    assert abs(n - 94.4e6) <= 0.1e6  # "wav2vec 2.0 Base, 95M parameters"


def test_xlsr_300m_config_reads_as_the_stable_layer_norm_layout():
    cfg = EncoderConfig.from_hf(XLSR_300M)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.intermediate_size) == (
        24,
        1024,
        16,
        4096,
    )
    assert (cfg.feat_extract_norm, cfg.do_stable_layer_norm, cfg.conv_bias) == ("layer", True, True)
    model = _meta_model("Wav2Vec2Model", **XLSR_300M)
    abstract = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
    torch_count = sum(p.numel() for p in model.parameters())
    assert models.param_count(abstract) == torch_count - 1024 - 128
    assert abs(torch_count - 315.4e6) <= 0.1e6  # "XLS-R 300M"


@pytest.mark.parametrize(
    "overrides,message",
    [(dict(add_adapter=True), "add_adapter=True"), (dict(adapter_attn_dim=8), "adapter_attn_dim")],
)
def test_adapters_are_refused_naming_the_field(tmp_path, overrides, message):
    path = save_hf_model(make_hf_model("wav2vec2", True, **overrides), tmp_path / "m")
    with pytest.raises(ValueError, match=f"config.json: .*{message}.*not supported"):
        teacher.load(str(path))


def _xlsr_config(arg=None):
    spec = importlib.util.spec_from_file_location("xlsr_config", ROOT / "configs" / "xlsr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_xlsr_config_loads_validates_and_fits_the_teacher():
    c = _xlsr_config()
    stages = stage.validate_config(c, num_devices=8)
    assert [s.depth for s in stages] == [3, 6, 9, 12]
    assert c.teacher.name == "facebook/wav2vec2-xls-r-300m"
    assert c.data.normalize  # XLS-R's feature extractor: do_normalize=True
    teacher_cfg = EncoderConfig.from_hf(XLSR_300M)
    # The paper's targets at the same relative depths of the 24-layer teacher.
    paper = base_config().distill.teacher_layers
    assert [k / teacher_cfg.num_layers for k in c.distill.teacher_layers] == [k / 12 for k in paper]
    assert max(c.distill.teacher_layers) == teacher_cfg.num_layers

    student_cfg = student.student_encoder_config(c.student, teacher_cfg)
    assert (student_cfg.num_layers, student_cfg.hidden_size) == (12, 384)
    assert (student_cfg.feat_extract_norm, student_cfg.conv_bias) == ("layer", True)
    shapes = jax.eval_shape(
        lambda: student.init_student(
            student_cfg, jax.random.key(0), teacher_cfg, None, c.distill.teacher_layers, False
        )
    )
    assert {k: v["kernel"].shape for k, v in shapes["heads"].items()} == {
        f"layer_{k}": (384, 1024) for k in (8, 16, 24)
    }
    stage.validate_config(_xlsr_config("runlocal,stacking=top"), num_devices=1)


def test_student_of_a_stable_wav2vec2_teacher_starts_from_its_front_end(tmp_path):
    model = make_hf_model("wav2vec2", True, conv_bias=True)
    teacher_cfg, teacher_params = teacher.load(str(save_hf_model(model, tmp_path / "t")))
    c = student.default_config()
    c.update(num_layers=2, hidden_size=16, intermediate_size=32, num_heads=2)
    student_cfg = student.student_encoder_config(c, teacher_cfg)
    params = student.init_student(
        student_cfg, jax.random.key(0), teacher_cfg, teacher_params, (1, 3)
    )
    jax.tree_util.tree_map(
        np.testing.assert_array_equal,
        params["encoder"]["feature_extractor"],
        teacher_params["feature_extractor"],
    )
    # The projection's LayerNorm (over the CNN width) is the teacher's too.
    np.testing.assert_array_equal(
        params["encoder"]["feature_projection"]["layer_norm"]["scale"],
        teacher_params["feature_projection"]["layer_norm"]["scale"],
    )
    wav, lengths = padded_batch(2000)
    out = models.encode(student_cfg, params["encoder"], wav, lengths)
    assert np.isfinite(np.asarray(out.hidden_states)).all()


def test_written_config_json_names_the_architecture(tmp_path):
    cfg = EncoderConfig.from_hf(XLSR_300M).replace(num_layers=1, hidden_size=32, num_heads=2)
    cfg = cfg.replace(intermediate_size=64, conv_dim=(8,) * 7, num_conv_pos_embedding_groups=4)
    path = teacher.write_random(tmp_path / "r", cfg)
    written = json.loads((path / "config.json").read_text())
    assert written["architectures"] == ["Wav2Vec2Model"]
    assert EncoderConfig.from_hf(written) == cfg
