"""optim: DistilHuBERT's recipe field by field against s3prl's yamls; decay masks; schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import ROOT, load_config

from stackdistill import optim, stacking

# (our config field, s3prl's value, where s3prl sets it). Transcribed from s3prl's
# s3prl/pretrain/distiller/config_model.yaml (M), config_runner.yaml (R) and the code that
# reads them; the released distilhubert_ls960_4-8-12 has pred_layer_id [4, 8, 12], n_tasks 3.
RECIPE = [
    ("student.num_layers", 2, "M distiller.encoder_layers"),
    ("student.hidden_size", 768, "M distiller.encoder_embed_dim"),
    ("student.intermediate_size", 3072, "M distiller.encoder_ffn_embed_dim"),
    ("student.num_heads", 12, "M distiller.encoder_attention_heads"),
    ("student.dropout", 0.1, "M distiller.dropout"),
    ("student.attention_dropout", 0.1, "M distiller.attention_dropout"),
    ("student.activation_dropout", 0.1, "M distiller.activation_dropout"),
    ("student.feature_grad_mult", 0.1, "M distiller.feature_grad_mult"),
    # upstream/distiller/model.py: no LayerNorm before post_extract_proj.
    ("student.feat_proj_layer_norm", False, "model.py DistillerModel (no front-end LN)"),
    ("student.head", "mlp", "M distiller.out_layer_type: expand-last (Linear-GELU-Linear)"),
    ("student.init_from_teacher", True, "M distiller.init_teacher_{conv,encoder}_layers"),
    # pretrain_expert.py copies pos_conv and layers[l] only, not encoder.layer_norm.
    ("student.copy_teacher_encoder_norm", False, "pretrain_expert.py DistillerForPretrain"),
    ("distill.teacher_layers", (4, 8, 12), "distilhubert_ls960_4-8-12 pred_layer_id"),
    ("distill.heads_on", "last", "M distiller.task_emb_type: expand-last"),
    ("distill.loss", "l1_cos", "M distiller.loss_type: l1 + cosine_loss"),
    ("distill.cos_weight", 1.0, "M distiller.cosine_loss"),
    ("stacking.method", "none", "(s3prl does not grow the student)"),
    ("total_steps", 200_000, "R runner.total_steps"),
    ("batch_size", 24, "R pretrain_expert.datarc.train_batch_size"),
    ("optim.learning_rate", 2e-4, "R optimizer.lr"),
    ("optim.warmup_fraction", 0.07, "R optimizer.warmup_proportion"),
    ("optim.decay", "linear", "optimizers.py WarmupLinearSchedule (to 0)"),
    ("optim.end_fraction", 0.0, "optimizers.py WarmupLinearSchedule (to 0)"),
    ("optim.b1", 0.9, "R optimizer.betas[0]"),
    ("optim.b2", 0.98, "R optimizer.betas[1]"),
    ("optim.eps", 1e-6, "R optimizer.eps"),
    ("optim.clip_norm", 5.0, "R runner.gradient_clipping"),
    # R optimizer.weight_decay is 1e-6, but get_grouped_parameters gives each param group its
    # own weight_decay (0.01 unless the name has "bias", then 0), which torch prefers to the
    # optimizer default: 0.01 on non-bias tensors is what s3prl trains with.
    ("optim.weight_decay", 0.01, "optimizers.py get_grouped_parameters"),
    ("optim.weight_decay_on", "not_bias", "optimizers.py get_grouped_parameters"),
]


@pytest.fixture(scope="module")
def distilhubert():
    return load_config(ROOT / "configs" / "distilhubert.py")


@pytest.mark.parametrize("field,value,source", RECIPE, ids=[r[0] for r in RECIPE])
def test_distilhubert_config_is_s3prls(distilhubert, field, value, source):
    node = distilhubert
    for key in field.split("."):
        node = node[key]
    assert (tuple(node) if isinstance(node, (list, tuple)) else node) == value, source


def test_weight_decay_masks():
    params = {
        "dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
        "ln": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
    }
    no_stacking = stacking.default_config()
    no_stacking.method = "none"
    stages = stacking.plan_stages(no_stacking, 10, 2)
    for decay_on, decayed in [("kernels", {"kernel"}), ("not_bias", {"kernel", "scale"})]:
        c = optim.default_config()
        c.update(weight_decay=0.5, weight_decay_on=decay_on, warmup_fraction=0.0, decay="constant")
        tx = optim.make_optimizer(c, optim.make_schedule(c, stages), frozen_frontend=False)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        updates, _ = tx.update(zeros, tx.init(params), params)
        # zero gradients: Adam's step is 0, so the update is the decay alone, -lr * wd * p
        for group in updates.values():
            for name, u in group.items():
                want = -c.learning_rate * 0.5 if name in decayed else 0.0
                np.testing.assert_allclose(u, want, rtol=1e-6, err_msg=f"{decay_on}: {name}")
    c = optim.default_config()
    c.weight_decay_on = "everything"
    with pytest.raises(ValueError, match="weight_decay_on"):
        optim.make_optimizer(c, optax.constant_schedule(1.0), frozen_frontend=False)


def test_schedule_is_s3prls_warmup_linear(distilhubert):
    c = distilhubert.optim
    total = 1000
    stages = stacking.plan_stages(distilhubert.stacking, total, distilhubert.student.num_layers)
    schedule = optim.make_schedule(c, stages)
    w = c.warmup_fraction

    def s3prl(step):  # optimizers.py WarmupLinearSchedule.get_lr_ at progress step / t_total
        p = step / total
        return p / w if p < w else max((p - 1.0) / (w - 1.0), 0.0)

    for step in (0, 1, 35, 69, 70, 71, 500, 999, 1000):
        np.testing.assert_allclose(float(schedule(step)), c.learning_rate * s3prl(step), atol=1e-10)
