"""export/s3prl.py: the distiller .ckpt as s3prl's source reads it; s3prl itself when importable."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_fixtures import make_hf_model, padded_batch, save_hf_model

from stackdistill import export, models, teacher
from stackdistill.export import s3prl as export_s3prl
from stackdistill.models import student
from stackdistill.models.encoder import Encoder

HAS_S3PRL = importlib.util.find_spec("s3prl") is not None
TEACHER_LAYERS = (1, 2, 3)
# s3prl's upstreams assume HuBERT's 320-sample hop: the full 7-conv front-end, thin.
FRONTEND = dict(
    conv_dim=(16,) * 7,
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
    num_feat_extract_layers=7,
)

# Every field s3prl's DistillerConfig (upstream/distiller/model.py) reads from
# Config["distiller"], with the type it casts to.
DISTILLER_CONFIG_FIELDS = {
    "extractor_mode": str,
    "extractor_conv_feature_layers": str,
    "extractor_dropout": float,
    "feature_grad_mult": float,
    "conv_pos": int,
    "conv_pos_groups": int,
    "encoder_layers": int,
    "encoder_embed_dim": int,
    "encoder_ffn_embed_dim": int,
    "encoder_attention_heads": int,
    "activation_fn": str,
    "layer_norm_first": bool,
    "attention_type": str,
    "dropout": float,
    "attention_dropout": float,
    "activation_dropout": float,
    "encoder_layerdrop": float,
    "final_dim": int,
    "out_layer_type": str,
    "out_layer_inter_dim": int,
    "n_tasks": int,
    "task_emb_type": str,
    "task_emb_size": int,
    "layer_emb_size": int,
    "loss_type": str,
    "feat_pen_loss": float,
    "cosine_loss": float,
    "pred_layer_id": list,
    "init_teacher_conv_layers": bool,
    "init_teacher_encoder_layers": bool,
}


def expected_distiller_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    """DistillerModel(DistillerConfig(c)).state_dict() shapes, written from s3prl's source.

    upstream/distiller/model.py: feature_extractor = wav2vec2_model.ConvFeatureExtractionModel
    (each conv block nn.Sequential(Conv1d(bias=False), Dropout, [norm], GELU); mode "default":
    Fp32GroupNorm(dim, dim) on block 0 only), post_extract_proj = Linear(conv width, D) when
    they differ, encoder = module.TransformerEncoder, output_layer = Sequential(Linear(D,
    D * N), GELU, SplitLinear(D, N, final_dim)). module.py: pos_conv = Sequential(weight_norm(
    Conv1d(D, D, conv_pos, groups), dim=2), SamePad, GELU); each layer: self_attn (k/v/q/out
    _proj Linear(D, D)), self_attn_layer_norm, fc1, fc2, final_layer_norm; encoder.layer_norm.
    SplitLinear: weight (N, Din, Dout), bias (1, 1, N, Dout).
    """
    convs = eval(c["extractor_conv_feature_layers"])
    d, f, n = c["encoder_embed_dim"], c["encoder_ffn_embed_dim"], c["n_tasks"]
    k, g = c["conv_pos"], c["conv_pos_groups"]
    shapes = {}
    in_d = 1
    for i, (dim, kernel, _) in enumerate(convs):
        shapes[f"feature_extractor.conv_layers.{i}.0.weight"] = (dim, in_d, kernel)
        in_d = dim
    shapes["feature_extractor.conv_layers.0.2.weight"] = (convs[0][0],)
    shapes["feature_extractor.conv_layers.0.2.bias"] = (convs[0][0],)
    shapes["post_extract_proj.weight"] = (d, convs[-1][0])
    shapes["post_extract_proj.bias"] = (d,)
    shapes["encoder.pos_conv.0.bias"] = (d,)
    shapes["encoder.pos_conv.0.weight_g"] = (1, 1, k)
    shapes["encoder.pos_conv.0.weight_v"] = (d, d // g, k)
    for i in range(c["encoder_layers"]):
        p = f"encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes[p + f"self_attn.{proj}.weight"] = (d, d)
            shapes[p + f"self_attn.{proj}.bias"] = (d,)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes[p + f"{norm}.weight"] = (d,)
            shapes[p + f"{norm}.bias"] = (d,)
        shapes[p + "fc1.weight"], shapes[p + "fc1.bias"] = (f, d), (f,)
        shapes[p + "fc2.weight"], shapes[p + "fc2.bias"] = (d, f), (d,)
    shapes["encoder.layer_norm.weight"] = shapes["encoder.layer_norm.bias"] = (d,)
    shapes["output_layer.0.weight"], shapes["output_layer.0.bias"] = (d * n, d), (d * n,)
    shapes["output_layer.2.weight"] = (n, d, c["final_dim"])
    shapes["output_layer.2.bias"] = (1, 1, n, c["final_dim"])
    return shapes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A DistilHuBERT-shaped student (2 x 32, mlp heads on the last layer) of a tiny HuBERT."""
    model = make_hf_model("hubert", False, **FRONTEND)
    path = save_hf_model(model, tmp_path_factory.mktemp("t"))
    t_cfg, t_params = teacher.load(str(path), use_cache=False)
    c = student.distilhubert_config()
    c.update(num_layers=2, hidden_size=32, intermediate_size=64, num_heads=4)
    cfg = student.student_encoder_config(c, t_cfg)
    params = student.init_student(
        cfg,
        jax.random.key(0),
        t_cfg,
        t_params,
        TEACHER_LAYERS,
        head="mlp",
        copy_teacher_encoder_norm=False,
    )
    # Perturb every tensor: a transposed or misplaced one cannot go unnoticed.
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    sources = {str(k): cfg.num_layers for k in TEACHER_LAYERS}
    return cfg, params, sources, t_cfg


def _load_ckpt(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)  # as builder.py does


def test_keys_shapes_and_config_are_what_s3prl_reads(tiny, tmp_path):
    cfg, params, sources, t_cfg = tiny
    path = export_s3prl.export_distiller(cfg, params, tmp_path, sources, {"model": "tiny"})
    ckpt = _load_ckpt(path)
    assert {"Config", "Distiller"} <= set(ckpt)
    c = ckpt["Config"]["distiller"]
    assert set(c) == set(DISTILLER_CONFIG_FIELDS)
    for name, kind in DISTILLER_CONFIG_FIELDS.items():
        assert isinstance(c[name], kind), name
    assert c["extractor_mode"] == "default" and c["task_emb_type"] == "expand-last"
    assert c["encoder_layers"] == 2 and c["encoder_embed_dim"] == 32
    assert c["pred_layer_id"] == list(TEACHER_LAYERS) and c["n_tasks"] == 3
    assert c["final_dim"] == t_cfg.hidden_size and c["feature_grad_mult"] == 0.1
    assert (
        eval(c["extractor_conv_feature_layers"])
        == [(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2
    )
    shapes = {k: tuple(v.shape) for k, v in ckpt["Distiller"].items()}
    assert shapes == expected_distiller_shapes(c)


def test_heads_and_layers_land_where_s3prl_reads_them(tiny, tmp_path):
    cfg, params, sources, _ = tiny
    state = _load_ckpt(export_s3prl.export_distiller(cfg, params, tmp_path, sources))["Distiller"]
    enc = params["encoder"]
    np.testing.assert_array_equal(
        state["encoder.layers.1.fc1.weight"].numpy(),
        np.asarray(enc["encoder"]["layers"]["feed_forward"]["intermediate_dense"]["kernel"][1]).T,
    )
    # SplitLinear reads task j's input as block j of output_layer.0: head j is
    # fc2(gelu(fc1(x))) with fc1 = rows [j*D, (j+1)*D) of output_layer.0.
    x = np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32)
    w0, b0 = state["output_layer.0.weight"].numpy(), state["output_layer.0.bias"].numpy()
    w2, b2 = state["output_layer.2.weight"].numpy(), state["output_layer.2.bias"].numpy()
    hidden = np.asarray(jax.nn.gelu(x @ w0.T + b0, approximate=False)).reshape(5, 3, 32)
    theirs = np.einsum("tnd,nde->nte", hidden, w2) + b2[0, 0][:, None]
    for j, k in enumerate(TEACHER_LAYERS):
        ours = student.apply_head(params["heads"][f"layer_{k}"], jnp.asarray(x))
        np.testing.assert_allclose(ours, theirs[j], rtol=1e-5, atol=1e-5)


def test_students_that_do_not_fit_are_refused_with_reasons(tiny, tmp_path):
    cfg, params, sources, t_cfg = tiny
    lineage = {"1": 1, "2": 2, "3": 2}
    with pytest.raises(export_s3prl.NotExpressible, match="middle layers"):
        export_s3prl.export_distiller(cfg, params, tmp_path, lineage)
    paper = student.student_encoder_config(student.default_config(), t_cfg)
    paper = paper.replace(hidden_size=16, num_heads=4, intermediate_size=32)
    linear = student.init_student(
        paper,
        jax.random.key(0),
        t_cfg,
        None,
        TEACHER_LAYERS,
        init_from_teacher=False,
    )
    with pytest.raises(export_s3prl.NotExpressible) as err:
        export_s3prl.export_distiller(paper, linear, tmp_path, {"1": 1, "2": 2, "3": 12})
    for reason in ("LayerNorm", "post_extract_proj", "Linear -> GELU", "middle layers"):
        assert reason in str(err.value), reason
    assert not (tmp_path / export_s3prl.CKPT_NAME).exists()


def _assert_close(ours, theirs, lengths_t, what):
    for i, n in enumerate(lengths_t):
        a, b = np.asarray(ours[i, :n], np.float64), np.asarray(theirs[i, :n], np.float64)
        err = float((np.abs(a - b) / np.maximum(1.0, np.abs(b))).max())
        assert err < 1e-4, f"{what}, utterance {i}: rel. err {err}"


def _s3prl_forward(name, path, wav, lengths):
    import torch
    from s3prl.nn import S3PRLUpstream

    model = S3PRLUpstream(name, path_or_url=str(path)).eval()
    with torch.no_grad():
        hs, hs_len = model(torch.from_numpy(wav), torch.from_numpy(lengths.astype(np.int64)))
    return [h.numpy() for h in hs], [h.numpy() for h in hs_len]


@pytest.mark.skipif(not HAS_S3PRL, reason="s3prl is not installed (optional: README)")
def test_s3prl_distiller_local_matches_the_jax_student(tiny, tmp_path):
    cfg, params, sources, _ = tiny
    path = export_s3prl.export_distiller(cfg, params, tmp_path, sources)
    wav, lengths = padded_batch(16_000, fraction=0.6)
    hs, _ = _s3prl_forward("distiller_local", path, wav, lengths)
    out = models.encode(cfg, params["encoder"], wav, lengths)
    n_t = np.asarray(out.mask.sum(1))
    projected = Encoder(cfg).apply(
        {"params": params["encoder"]},
        out.features,
        method=lambda m, f: m.feature_projection(f),
    )
    preds = student.predict(params["heads"], out.hidden_states, {k: 2 for k in TEACHER_LAYERS})
    # distiller hidden_states: [post_extract_proj output, each layer, each head's prediction]
    assert len(hs) == 1 + cfg.num_layers + len(TEACHER_LAYERS)
    _assert_close(projected, hs[0], n_t, "projection")
    for i in range(1, cfg.num_layers + 1):
        _assert_close(out.hidden_states[i], hs[i], n_t, f"layer {i}")
    for j, k in enumerate(TEACHER_LAYERS):
        _assert_close(preds[k], hs[1 + cfg.num_layers + j], n_t, f"head of teacher layer {k}")


@pytest.mark.skipif(not HAS_S3PRL, reason="s3prl is not installed (optional: README)")
def test_s3prl_hf_hubert_custom_matches_the_jax_student(tiny, tmp_path, monkeypatch):
    from stackdistill.data import audio

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg, params, sources, _ = tiny
    export.export_student(cfg, params, tmp_path, sources, normalize=True)
    wav, lengths = padded_batch(16_000, fraction=0.6)
    hs, _ = _s3prl_forward("hf_hubert_custom", tmp_path, wav, lengths)
    normed = np.zeros_like(wav)
    for i, n in enumerate(lengths):  # the data pipeline's do_normalize, per utterance
        normed[i, :n] = audio.normalize(wav[i, :n])
    out = models.encode(cfg, params["encoder"], normed, lengths)
    n_t = np.asarray(out.mask.sum(1))
    assert len(hs) == cfg.num_layers + 1
    for i, h in enumerate(hs):
        _assert_close(out.hidden_states[i], h, n_t, f"hidden state {i}")
