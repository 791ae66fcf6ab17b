"""The ARMHuBERT repo's students: their CNN front-end, no projection, published sizes, configs."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from stackdistill import config as config_lib
from stackdistill import stacking, teacher
from stackdistill.models import student as student_lib
from stackdistill.models.config import EncoderConfig
from stackdistill.models.encoder import Encoder, FeatureExtractor, FeatureProjection
from stackdistill.recipes import arm_family

ROOT = pathlib.Path(__file__).resolve().parents[1]
# README.md of sungnyun/ARMHuBERT (model table): published parameter counts.
PUBLISHED = {"maskhubert": 26.64e6, "armhubert": 26.45e6, "armwavlm_s": 22.39e6}
TEACHERS = {"maskhubert": EncoderConfig(), "armhubert": EncoderConfig()}
TEACHERS["armwavlm_s"] = EncoderConfig(model_type="wavlm")


def recipe_config(name: str, arg: str | None = None):
    return config_lib.load_file(ROOT / "configs" / f"{name}.py", arg)


def torch_frontend(conv_layers, params):
    """fairseq's ConvFeatureExtractionModel, mode "default" (models/armhubert/module.py L25-103):
    Conv1d without bias, Fp32GroupNorm(dim, dim) on the first conv only, GELU; our weights."""
    blocks, c_in = [], 1
    for i, (dim, k, stride) in enumerate(conv_layers):
        conv = torch.nn.Conv1d(c_in, dim, k, stride=stride, bias=False)
        kernel = np.asarray(params[f"conv_layers_{i}"]["conv"]["kernel"])  # (K, C_in, C_out)
        conv.weight.data = torch.tensor(kernel.transpose(2, 1, 0))
        layers = [conv]
        if i == 0:
            norm = torch.nn.GroupNorm(dim, dim, affine=True)
            norm.weight.data = torch.tensor(
                np.asarray(params["conv_layers_0"]["layer_norm"]["scale"])
            )
            norm.bias.data = torch.tensor(np.asarray(params["conv_layers_0"]["layer_norm"]["bias"]))
            layers.append(norm)
        blocks.append(torch.nn.Sequential(*layers, torch.nn.GELU()))
        c_in = dim
    return torch.nn.Sequential(*blocks)


def test_small_cnn_with_128_channel_group_norm_matches_fairseq():
    conv_layers = arm_family.conv_layers(48)
    dims, kernels, strides = zip(*conv_layers, strict=True)
    cfg = EncoderConfig(conv_dim=dims, conv_kernel=kernels, conv_stride=strides)
    wav = np.asarray(jax.random.normal(jax.random.key(0), (2, 4000)), np.float32)
    module = FeatureExtractor(cfg)
    params = module.init(jax.random.key(1), wav)["params"]
    params = jax.tree_util.tree_map(  # GroupNorm affine away from (1, 0), to be tested
        lambda x: x + 0.1 * jax.random.normal(jax.random.key(2), x.shape) if x.ndim == 1 else x,
        params,
    )
    got = np.asarray(module.apply({"params": params}, wav))
    with torch.no_grad():
        want = torch_frontend(conv_layers, params)(torch.tensor(wav)[:, None]).numpy()
    assert got.shape == want.transpose(0, 2, 1).shape == (2, cfg.num_frames(4000), 48)
    np.testing.assert_allclose(got, want.transpose(0, 2, 1), atol=2e-5, rtol=1e-4)
    assert cfg.hop == 320 and cfg.receptive_field == 400  # frames line up with the teacher's


def test_no_projection_keeps_the_layer_norm_only():
    cfg = EncoderConfig(hidden_size=32, num_heads=4, conv_dim=(32,) * 7, feat_proj=False)
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 5, 32)))
    module = FeatureProjection(cfg)
    params = module.init(jax.random.key(1), x)["params"]
    assert set(params) == {"layer_norm"}
    got = module.apply({"params": params}, x)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(got, (x - mu) / np.sqrt(var + 1e-5), atol=1e-5)
    with pytest.raises(ValueError, match="feat_proj=False"):
        EncoderConfig(hidden_size=32, num_heads=4, conv_dim=(16,) * 7, feat_proj=False)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts(name):
    """Full-size students by jax.eval_shape, counted as the repo counts (README table):
    encoder + 12 layer-wise heads (width -> 768, model.py L320-330) + mask_emb (L288) + the
    positional conv's weight-norm g."""
    c = recipe_config(name, "stacking=none")
    cfg = student_lib.student_encoder_config(c.student, TEACHERS[name])
    wav = jax.ShapeDtypeStruct((1, 16000), jnp.float32)
    lengths = jax.ShapeDtypeStruct((1,), jnp.int32)
    encoder = jax.eval_shape(Encoder(cfg).init, jax.random.key(0), wav, lengths)["params"]
    assert "projection" not in encoder["feature_projection"]
    d, n = cfg.hidden_size, cfg.num_layers
    heads = {"layers": {"kernel": np.empty((n, d, 768)), "bias": np.empty((n, 768))}}
    tree = {"encoder": encoder, "heads": heads, "mask_emb": np.empty((d,))}
    count = student_lib.paper_param_count(tree, cfg)
    assert abs(count / PUBLISHED[name] - 1) < 0.005, (name, count)
    reuse = c.student.reuse_pattern is not None
    assert ("reuse" in encoder["encoder"]["layers"]) == reuse


@pytest.mark.parametrize("name", sorted(PUBLISHED))
@pytest.mark.parametrize("method", ["none", "interleaved", "top", "middle"])
def test_recipe_configs_plan_their_stages(name, method):
    c = recipe_config(name, f"stacking={method}")
    block = student_lib.layers_per_block(c.student)
    assert block == (2 if name.startswith("arm") else 1)
    stages = stacking.plan_stages(c.stacking, c.total_steps, c.student.num_layers, block)
    assert stages[-1].depth == 12 and all(s.depth % block == 0 for s in stages)
    assert c.batch_size == 144 and c.total_steps == arm_family.published_steps(
        100 if name == "armwavlm_s" else 200
    )
    local = recipe_config(name, f"runlocal,stacking={method}")
    assert local.teacher.name == "tiny_teacher" and local.data.source == "synthetic"
    s_cfg = student_lib.student_encoder_config(local.student, EncoderConfig(**teacher.DEMO_ARCH))
    assert s_cfg.hop == 320 and not s_cfg.feat_proj


def test_published_steps_by_hand():
    """281,241 utterances / 18 = 15,624 full batches + one of 9 -> 15,625; // 2 GPUs = 7,812;
    x 200 epochs // 4 accumulation = 390,600 (train.py L364-366)."""
    assert arm_family.LIBRISPEECH_960H_UTTERANCES == 281_241
    assert arm_family.published_steps(200) == 200 * 7_812 // 4 == 390_600
    assert arm_family.published_steps(100) == 195_300
    assert arm_family.published_steps(4, utterances=56) == 2  # 3 full + a last of 2: 4 batches
    assert arm_family.published_steps(4, utterances=55) == 1  # a last batch of 1 is dropped


def test_fairseq_init_draws_their_scales():
    """init_bert_params N(0, 0.02) in the layers, sqrt(4 / (k D)) for the positional conv,
    kaiming sqrt(2 / fan_in) for the CNN; every other tensor (biases, norms) untouched."""
    c = recipe_config("armhubert", "stacking=none")
    cfg = student_lib.student_encoder_config(c.student, EncoderConfig()).replace(num_layers=2)
    wav = jax.ShapeDtypeStruct((1, 16000), jnp.float32)
    lengths = jax.ShapeDtypeStruct((1,), jnp.int32)
    shapes = jax.eval_shape(Encoder(cfg).init, jax.random.key(0), wav, lengths)["params"]
    before = jax.tree_util.tree_map(lambda x: jnp.full(x.shape, 7.0), shapes)
    enc = jax.jit(lambda p: student_lib.fairseq_init(p, cfg, jax.random.key(1)))(before)
    layers = enc["encoder"]["layers"]
    for kernel in (layers["attend"]["attention"]["q_proj"]["kernel"],
                   layers["reuse"]["feed_forward"]["intermediate_dense"]["kernel"]):  # fmt: skip
        assert abs(float(np.mean(kernel))) < 0.002 and abs(float(np.std(kernel)) / 0.02 - 1) < 0.02
    pos = enc["encoder"]["pos_conv_embed"]["conv"]["kernel"]
    assert abs(float(np.std(pos)) / np.sqrt(4 / (128 * 480)) - 1) < 0.02
    conv = enc["feature_extractor"]["conv_layers_2"]["conv"]["kernel"]  # (3, 256, 256)
    assert abs(float(np.std(conv)) / np.sqrt(2 / (3 * 256)) - 1) < 0.02
    for path, leaf in jax.tree_util.tree_leaves_with_path(enc):
        if getattr(path[-1], "key", None) != "kernel":
            np.testing.assert_array_equal(leaf, 7.0)


def test_reuse_flops_and_export_refusal():
    """A reuse layer drops q/k (2 D^2 per frame) and q k^T (T D); HubertModel cannot hold it."""
    from stackdistill import flops
    from stackdistill.export import transformers as hf_export

    full = EncoderConfig(hidden_size=48, num_heads=4, intermediate_size=96, conv_dim=(48,) * 7)
    reuse = full.replace(layers_per_block=2, feat_proj=False)
    b, t, d = 2, 50, 48
    saved = 12 // 2 * 2.0 * b * t * (2 * d * d + t * d) + 2.0 * b * t * 48 * d  # + projection
    np.testing.assert_allclose(
        flops.transformer_flops(full, b, t) - flops.transformer_flops(reuse, b, t), saved
    )
    with pytest.raises(ValueError, match="attention-map reuse"):
        hf_export.hf_config(reuse, 12)
    with pytest.raises(ValueError, match="feat_proj=False"):
        hf_export.hf_config(full.replace(feat_proj=False), 12)
