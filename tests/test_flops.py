"""stackdistill.flops: the analytic FLOP count against XLA's cost analysis of the same code.

XLA counts a while loop's body once, whatever its trip count, so the scanned layer stack is
compared with one layer; the analytic count leaves elementwise work out, so it may sit below
XLA's by a few percent: at these Base-proportioned widths the bound is 10%.
"""

import jax
import jax.numpy as jnp
import pytest

from stackdistill import distill, flops, models, optim, stacking
from stackdistill.models import EncoderConfig, student

TEACHER = EncoderConfig(
    hidden_size=256, num_layers=1, num_heads=4, intermediate_size=1024, conv_dim=(256,) * 7
)
STUDENT = TEACHER.replace(hidden_size=128, intermediate_size=512, num_heads=2)
BATCH, SAMPLES = 1, 16000


def _audio():
    return (
        jax.ShapeDtypeStruct((BATCH, SAMPLES), jnp.float32),
        jax.ShapeDtypeStruct((BATCH,), jnp.int32),
    )


def _xla_step_flops(loss: str, shared: bool) -> float:
    distill_cfg = distill.default_config()
    distill_cfg.teacher_layers, distill_cfg.loss = (1,), loss
    teacher_params = jax.eval_shape(lambda: models.init_params(TEACHER, jax.random.key(0)))
    params = jax.eval_shape(
        lambda: student.init_student(
            STUDENT, jax.random.key(0), TEACHER, None, distill.head_layers(distill_cfg), False
        )
    )
    stacking_cfg = stacking.default_config()
    stacking_cfg.method = "none"
    schedule = optim.make_schedule(optim.default_config(), stacking.plan_stages(stacking_cfg, 8, 1))
    tx = optim.make_optimizer(optim.default_config(), schedule, shared)
    state = jax.eval_shape(lambda p: distill.init_state(p, tx, 0), params)
    fn = distill.make_train_step(distill_cfg, TEACHER, STUDENT, {1: 1}, tx, schedule, shared)
    wav, lengths = _audio()
    lowered = jax.jit(fn).lower(state, teacher_params, {"audio": wav, "lengths": lengths})
    return flops.xla_flops(lowered)


def test_encoder_forward_matches_xla():
    params = jax.eval_shape(lambda: models.init_params(TEACHER, jax.random.key(0)))
    forward = jax.jit(lambda p, w, n: models.encode(TEACHER, p, w, n).hidden_states)
    xla = flops.xla_flops(forward.lower(params, *_audio()))
    analytic = flops.encoder_flops(TEACHER, BATCH, SAMPLES)
    assert 0.97 <= xla / analytic <= 1.10, (xla, analytic)


@pytest.mark.parametrize("loss", ["mse", "l1_cos", "star"])
@pytest.mark.parametrize("shared", [False, True])
def test_train_step_matches_xla(loss, shared):
    xla = _xla_step_flops(loss, shared)
    star = loss == "star"  # no head; two Gram matrices per side instead
    analytic = flops.step_flops(
        TEACHER, STUDENT, BATCH, SAMPLES, 0 if star else 1, shared, gram_layers=int(star)
    )
    assert 0.97 <= xla / analytic <= 1.10, (xla, analytic)


def test_hand_counts():
    cfg = EncoderConfig(
        conv_dim=(4, 8),
        conv_kernel=(3, 2),
        conv_stride=(2, 2),
        hidden_size=6,
        num_heads=2,
        intermediate_size=10,
        num_layers=2,
        num_conv_pos_embeddings=3,
        num_conv_pos_embedding_groups=3,
    )
    # 11 samples -> 5 frames (k3 s2) -> 2 frames (k2 s2)
    assert flops.frontend_flops(cfg, 1, 11) == 2 * (5 * 3 * 1 * 4 + 2 * 2 * 4 * 8)
    per_layer = 2 * 2 * (4 * 36 + 2 * 60 + 2 * 2 * 6)
    expected = 2 * 2 * 8 * 6 + 2 * 2 * 3 * 2 * 6 + 2 * per_layer
    assert flops.transformer_flops(cfg, 1, 2) == expected
    assert flops.mfu(2e9, 0.5, 8e9) == 0.5


def test_masked_distillation_step_counts_two_teacher_passes():
    # loss="masked" (recipes/masking.py): the teacher runs unmasked and masked.
    distill_cfg = distill.default_config()
    distill_cfg.teacher_layers, distill_cfg.loss = (1,), "masked"
    s_cfg = STUDENT.replace(mask_emb=True)
    t_params = jax.eval_shape(
        lambda: models.init_params(TEACHER.replace(mask_emb=True), jax.random.key(0))
    )
    params = jax.eval_shape(
        lambda: student.init_student(s_cfg, jax.random.key(0), TEACHER, None, (1,), False)
    )
    tx = optim.make_optimizer(optim.default_config(), lambda step: 1e-3, False)
    state = jax.eval_shape(lambda p: distill.init_state(p, tx, 0), params)
    fn = distill.make_train_step(distill_cfg, TEACHER, s_cfg, {1: 1}, tx, lambda s: 1e-3, False)
    lowered = jax.jit(fn).lower(state, t_params, dict(zip(("audio", "lengths"), _audio())))
    xla = flops.xla_flops(lowered)
    analytic = flops.step_flops(TEACHER, s_cfg, BATCH, SAMPLES, 1, teacher_passes=2)
    assert 0.97 <= xla / analytic <= 1.10, (xla, analytic)
