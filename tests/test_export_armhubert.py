"""The ARMHuBERT repository's .ckpt + yaml: names and shapes from their code, round trip.

fairseq is not installed, so their CustomStudentModel cannot load the files here; the
expected state-dict keys below are written by hand from their module code (sungnyun/ARMHuBERT,
cited per entry) for the `:runlocal` demo students.
"""

import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import yaml

from stackdistill import config as config_lib
from stackdistill import teacher
from stackdistill.export import FORMATS, armhubert, armhubert_read
from stackdistill.models import student
from stackdistill.models.config import EncoderConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
MIRROR = pathlib.Path("/work/.mirror/sungnyun+ARMHuBERT/repo")
D, FFN, L, TEACHER_D = 32, 64, 4, 48  # arm_family.demo_size, teacher.DEMO_ARCH
CONVS = [(16, 10, 5), (32, 1, 1), *[(32, 3, 2)] * 4, (32, 1, 1), (32, 2, 2), (32, 2, 2)]
POS_K, POS_G = 16, 4


def expected_keys(reuse_pattern: list[bool]) -> dict[str, tuple[int, ...]]:
    """CustomStudentModel's state dict for the demo student, by hand from their code."""
    keys = {}
    c_in = 1
    for i, (dim, k, _) in enumerate(CONVS):
        # module.py L47: Conv1d(n_in, n_out, k, bias=conv_bias=False), index 0 of the block
        keys[f"feature_extractor.conv_layers.{i}.0.weight"] = (dim, c_in, k)
        c_in = dim
    # module.py L66-71: mode "default", i == 0 only: Fp32GroupNorm(dim, dim, affine) at index 2
    keys["feature_extractor.conv_layers.0.2.weight"] = (16,)
    keys["feature_extractor.conv_layers.0.2.bias"] = (16,)
    # model.py L270-274: no post_extract_proj (CNN width 32 == encoder_embed_dim 32);
    # L286: layer_norm = LayerNorm(embed); L288-290: mask_emb (encoder_embed_dim,)
    keys["layer_norm.weight"] = keys["layer_norm.bias"] = (D,)
    keys["mask_emb"] = (D,)
    # reusing_module.py L1172-1186 (module.py L187-201): Sequential(weight_norm(Conv1d(D, D,
    # conv_pos, groups=conv_pos_groups), dim=2), SamePad, GELU): weight_g (1, 1, k)
    keys["encoder.pos_conv.0.weight_g"] = (1, 1, POS_K)
    keys["encoder.pos_conv.0.weight_v"] = (D, D // POS_G, POS_K)
    keys["encoder.pos_conv.0.bias"] = (D,)
    # reusing_module.py L1254 (module.py L252): the encoder's LayerNorm
    keys["encoder.layer_norm.weight"] = keys["encoder.layer_norm.bias"] = (D,)
    for i, attends in enumerate(reuse_pattern):
        p = f"encoder.layers.{i}."
        # fairseq MultiheadAttention (multihead_attention.py L123-141): k/v/q/out_proj;
        # MultiheadAttentionReuse (reusing_module.py L158-179): v_proj and out_proj only
        projs = ("k_proj", "v_proj", "q_proj", "out_proj") if attends else ("v_proj", "out_proj")
        for proj in projs:
            keys[p + f"self_attn.{proj}.weight"] = (D, D)
            keys[p + f"self_attn.{proj}.bias"] = (D,)
        # module.py L518-523, reusing_module.py L1021-1026
        keys[p + "self_attn_layer_norm.weight"] = keys[p + "self_attn_layer_norm.bias"] = (D,)
        keys[p + "fc1.weight"], keys[p + "fc1.bias"] = (FFN, D), (FFN,)
        keys[p + "fc2.weight"], keys[p + "fc2.bias"] = (D, FFN), (D,)
        keys[p + "final_layer_norm.weight"] = keys[p + "final_layer_norm.bias"] = (D,)
    for i in range(len(reuse_pattern)):
        # model.py L320-330: one LayerWiseProjHead per layer; module.py L649-654: lin_proj
        # Linear(in_dim, pred_head_final_dim) as in_dim != out_dim
        keys[f"proj_head.{i}.lin_proj.weight"] = (TEACHER_D, D)
        keys[f"proj_head.{i}.lin_proj.bias"] = (TEACHER_D,)
    return keys


# CustomStudentModelConfig's fields (armhubert/model.py L25-246; maskhubert/model.py has all
# but reuse_pattern), minus the two "_"-prefixed ones utils.py dump_yaml L146-148 skips.
CONFIG_FIELDS = """extractor_mode encoder_layers encoder_embed_dim encoder_ffn_embed_dim
encoder_attention_heads activation_fn layer_grad_scale layer_type dropout attention_dropout
activation_dropout encoder_layerdrop dropout_input final_dim layer_norm_first
conv_feature_layers conv_bias feature_grad_mult freeze_student_mask update_teacher_mask
conv_pos conv_pos_groups pos_conv_depth max_positions checkpoint_activations
required_seq_len_multiple crop_seq_to_multiple depthwise_conv_kernel_size attn_type
pos_enc_type fp16 init_conv_layers init_encoder_layers pred_head_inter_dim pred_head_final_dim
pred_layer_id layerwise_proj enable_tr_layer tr_reduce_factor tr_layer_type tr_conv1d_kernel
tr_layer_index""".split()


def _student(recipe: str):
    """A demo-size student of the recipe's `:runlocal` config, every tensor made distinct."""
    c = config_lib.load_file(ROOT / "configs" / f"{recipe}.py", "runlocal")
    t_cfg = EncoderConfig(**teacher.DEMO_ARCH)
    cfg = student.student_encoder_config(c.student, t_cfg)
    params = student.init_student(
        cfg, jax.random.key(0), t_cfg, None, c.distill.teacher_layers, False, head="layerwise"
    )
    rng = np.random.default_rng(1)
    leaves, tree = jax.tree_util.tree_flatten(params)
    leaves = [np.asarray(x) + rng.normal(0, 0.1, x.shape).astype(np.float32) for x in leaves]
    return c, cfg, jax.tree_util.tree_unflatten(tree, leaves)


@pytest.fixture(scope="module", params=["maskhubert", "armhubert"])
def written(request, tmp_path_factory):
    c, cfg, params = _student(request.param)
    out = tmp_path_factory.mktemp(request.param)
    ckpt, yaml_path = armhubert.export_checkpoint(cfg, params, out, c, step=7)
    return request.param, c, cfg, params, ckpt, yaml_path


def test_keys_and_shapes_equal_their_modules(written):
    recipe, _, _, _, ckpt, _ = written
    pattern = [True, False] * 2 if recipe == "armhubert" else [True] * 4
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert all(k.startswith("student_model.") for k in state)
    got = {k[14:]: tuple(v.shape) for k, v in state.items() if "student_model" in k}
    assert got == expected_keys(pattern)
    # their count (README sizes) is every tensor of this state dict: paper_param_count's rule
    _, _, cfg, params, _, _ = written
    assert sum(v.numel() for v in state.values()) == student.paper_param_count(params, cfg)


def test_file_loads_with_plain_torch_and_holds_tensors(written):
    _, _, _, _, ckpt, yaml_path = written
    data = torch.load(ckpt, map_location="cpu", weights_only=True)  # no pickled classes
    assert {"epoch", "global_step", "pytorch-lightning_version", "state_dict"} <= set(data)
    assert data["global_step"] == 7
    assert all(
        type(v) is torch.Tensor and v.dtype == torch.float32 for v in data["state_dict"].values()
    )
    assert data["hyper_parameters"]["cfg"] == yaml.safe_load(yaml_path.read_text())


def test_yaml_distiller_has_every_field_their_config_reads(written):
    recipe, c, cfg, _, _, yaml_path = written
    y = yaml.safe_load(yaml_path.read_text())
    assert {"teacher", "train", "distiller", "optimizer", "data"} <= set(y)
    dist = y["distiller"]
    reuse = recipe == "armhubert"
    assert set(dist) == set(CONFIG_FIELDS) | ({"reuse_pattern"} if reuse else set())
    assert y["model"] == ("armhubert" if reuse else "maskhubert")  # models/__init__.py
    # model.py L261: eval(conv_feature_layers); reusing_module.py L1231: eval(reuse_pattern)
    assert eval(dist["conv_feature_layers"]) == CONVS  # noqa: S307 (their own parser)
    if reuse:
        assert eval(dist["reuse_pattern"]) == [True, False, True, False]  # noqa: S307
    assert (dist["encoder_layers"], dist["encoder_embed_dim"], dist["encoder_ffn_embed_dim"]) == (
        L,
        D,
        FFN,
    )
    assert dist["layer_grad_scale"] is reuse and dist["layerwise_proj"] is True
    assert dist["enable_tr_layer"] is False and dist["pred_head_final_dim"] == TEACHER_D
    assert (dist["conv_pos"], dist["conv_pos_groups"]) == (POS_K, POS_G)
    assert dist["dropout_input"] == pytest.approx(0.05)
    assert y["teacher"]["mask_prob"] == pytest.approx(0.8)


@pytest.mark.skipif(not MIRROR.exists(), reason="their repository is not mirrored here")
def test_hand_field_list_matches_their_dataclass():
    for pkg, extra in (("armhubert", {"reuse_pattern"}), ("maskhubert", set())):
        src = subprocess.run(
            ["git", "-C", str(MIRROR), "show", f"HEAD:models/{pkg}/model.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        body = src.split("class CustomStudentModelConfig")[1].split("\nclass ")[0]
        import re

        fields = set(re.findall(r"^    (\w+): \w+ = field\(", body, re.M))
        assert fields - {"_teacher_task_agnostic", "_cnn_weight"} == set(CONFIG_FIELDS) | extra


def test_round_trip_gives_identical_params_and_hidden_states(written):
    _, _, cfg, params, ckpt, yaml_path = written
    got_cfg, got = armhubert_read.read(ckpt, yaml_path)
    assert got_cfg.layers_per_block == cfg.layers_per_block
    assert got_cfg.replace(dtype=cfg.dtype) == cfg
    want_leaves = jax.tree_util.tree_leaves_with_path(params)
    got_leaves = dict(jax.tree_util.tree_leaves_with_path(got))
    assert len(got_leaves) == len(want_leaves)
    for path, x in want_leaves:
        np.testing.assert_array_equal(
            np.asarray(got_leaves[path]), np.asarray(x), err_msg=str(path)
        )
    wav = np.asarray(jax.random.normal(jax.random.key(3), (2, 4000)), np.float32)
    lengths = np.array([4000, 3000], np.int32)
    a = student.apply_encoder(cfg, params["encoder"], wav, lengths)
    b = student.apply_encoder(got_cfg, got["encoder"], wav, lengths)
    np.testing.assert_array_equal(np.asarray(a.hidden_states), np.asarray(b.hidden_states))


def test_weight_norm_parts_rebuild_the_kernel_in_torch(written):
    _, _, cfg, params, ckpt, _ = written
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    conv = torch.nn.Conv1d(D, D, POS_K, padding=POS_K // 2, groups=POS_G)
    conv = torch.nn.utils.weight_norm(conv, name="weight", dim=2)  # reusing_module.py L1185
    conv.load_state_dict(
        {k.split("pos_conv.0.")[1]: v for k, v in state.items() if "pos_conv.0" in k}
    )
    with torch.no_grad():
        conv(torch.zeros(1, D, POS_K))  # the pre-forward hook recomputes weight = g v / ||v||
        weight = conv.weight.numpy()
    kernel = np.asarray(params["encoder"]["encoder"]["pos_conv_embed"]["conv"]["kernel"])
    np.testing.assert_allclose(weight, kernel.transpose(2, 1, 0), atol=1e-6, rtol=0)
    # and the reader folds a general (g, v) as torch does
    g, v = torch.rand(1, 1, POS_K) + 0.5, torch.randn(D, D // POS_G, POS_K)
    want = torch._weight_norm(v, g, 2).numpy()
    np.testing.assert_allclose(armhubert_read._fold(g.numpy(), v.numpy()), want, atol=1e-6)


def test_spec_teacher_load_and_the_yaml_kept_in_the_checkpoint(written, tmp_path):
    import ml_collections

    from stackdistill.superb import upstream

    recipe, _, cfg, params, ckpt, yaml_path = written
    spec = f"arm:{ckpt},{yaml_path}"
    assert upstream.parse_spec(spec, ".") == ("arm-student", "arm", f"{ckpt},{yaml_path}", None)
    up = upstream.load(spec, ml_collections.ConfigDict({"dtype": "float32"}), ".")
    assert up.num_layers * cfg.layers_per_block == L and up.cfg.dropout == 0.0
    lone = tmp_path / f"{recipe}.ckpt"  # no yaml beside it: the checkpoint's hyper_parameters
    lone.write_bytes(ckpt.read_bytes())
    for got in (up.params, teacher.load(str(lone), use_cache=False)[1]):
        for path, x in jax.tree_util.tree_leaves_with_path(params["encoder"]):
            np.testing.assert_array_equal(
                np.asarray(dict(jax.tree_util.tree_leaves_with_path(got))[path]), x
            )
    with pytest.raises(ValueError, match="arm:"):
        upstream.parse_spec("arm:", ".")


def test_reads_a_checkpoint_whose_hyper_parameters_pickle_lightning_classes(written, tmp_path):
    """Lightning 1.7 pickles hyper_parameters as its AttributeDict; Lightning is not installed."""
    import types

    _, _, _, params, ckpt, _ = written
    data = torch.load(ckpt, map_location="cpu", weights_only=True)
    names = (
        "pytorch_lightning",
        "pytorch_lightning.utilities",
        "pytorch_lightning.utilities.parsing",
    )
    mods = {n: types.ModuleType(n) for n in names}
    attribute_dict = type("AttributeDict", (dict,), {"__module__": names[-1]})
    mods[names[-1]].AttributeDict = attribute_dict
    sys.modules.update(mods)
    try:
        data["hyper_parameters"] = attribute_dict(data["hyper_parameters"])
        torch.save(data, tmp_path / "theirs.ckpt")
    finally:
        for n in names:
            del sys.modules[n]
    with pytest.raises(Exception, match="AttributeDict|pytorch_lightning|Unsupported"):
        torch.load(tmp_path / "theirs.ckpt", weights_only=True)
    _, got = armhubert_read.read(tmp_path / "theirs.ckpt")
    np.testing.assert_array_equal(
        got["encoder"]["masked_spec_embed"], params["encoder"]["masked_spec_embed"]
    )


def test_format_registered_and_refusals_name_the_reason(written):
    from stackdistill.export import transformers as hf_export

    recipe, c, cfg, params, _, _ = written
    assert "armhubert" in FORMATS and c.export.format == "armhubert"
    if cfg.layers_per_block > 1:
        with pytest.raises(ValueError, match="attention-map reuse.*format='armhubert'"):
            hf_export.hf_config(cfg, L)
    linear = {"encoder": params["encoder"], "heads": {"layer_12": params["heads"]["layers"]}}
    with pytest.raises(armhubert.NotExpressible, match="layer-wise heads"):
        armhubert.export_checkpoint(cfg, linear, "/nonexistent")
    with pytest.raises(armhubert.NotExpressible, match="relative position bias"):
        armhubert.export_checkpoint(cfg.replace(model_type="wavlm"), params, "/nonexistent")
