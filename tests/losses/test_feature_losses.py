"""Properties shared by several feature losses (one test over many methods)."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from feature_refs import _features
from jaxkd.losses import (abf_combine, adaptive_avg_pool, attention_map, attention_transfer_loss,
                          hcl_loss, hint_loss, kd_loss, multiscale_pooled_features,
                          nearest_upsample, ofd_loss, ofd_margin, sdd_loss, vid_loss)
from map_refs import _sdd_inputs


def test_gradients_finite_including_zero_features():
  student, teacher = _features(10, (2, 4, 4, 3)), _features(11, (2, 2, 2, 5))
  student[1] = 0.0  # an all-zero example
  for fn in [attention_transfer_loss, lambda s, t: hint_loss(s, jnp.zeros_like(s) + t.mean())]:
    grads = jax.grad(lambda s, t: jnp.mean(fn(s, t)), argnums=(0, 1))(student, teacher)
    for g in grads:
      assert np.all(np.isfinite(g))


def test_check_grads_float64():
  with jax.enable_x64(True):
    rng = np.random.default_rng(12)
    student = jnp.asarray(rng.standard_normal((2, 4, 4, 3)))
    teacher = jnp.asarray(rng.standard_normal((2, 2, 2, 5)))
    assert attention_transfer_loss(student, teacher).dtype == jnp.float64
    assert hint_loss(student, student).dtype == jnp.float64
    check_grads(jax.jit(attention_transfer_loss), (student, teacher), order=1, modes=('rev',),
                atol=1e-5, rtol=1e-5)
    check_grads(jax.jit(hint_loss), (student, 2 * student), order=1, modes=('rev',))


def test_bfloat16_inputs_give_float32_outputs():
  student, teacher = _features(13, (2, 4, 4, 3)), _features(14, (2, 4, 4, 6))
  s16, t16 = jnp.asarray(student, jnp.bfloat16), jnp.asarray(teacher, jnp.bfloat16)
  for fn in [attention_transfer_loss, lambda s, t: hint_loss(s, t[..., :3])]:
    got = fn(s16, t16)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, fn(s16.astype(jnp.float32), t16.astype(jnp.float32)),
                               rtol=1e-6)
    np.testing.assert_allclose(got, fn(student, teacher), rtol=5e-2, atol=1e-3)
  assert attention_map(s16).dtype == jnp.float32


def test_sdd_loss_special_cases():
  student, teacher, labels = _sdd_inputs(91)
  per_cell = jax.jit(lambda s, t: kd_loss(s, t, temperature=2.0))(student, teacher)
  loss = jax.jit(lambda s, t, w: sdd_loss(s, t, labels, temperature=2.0, complementary_weight=w))
  np.testing.assert_allclose(loss(student, teacher, 1.0), per_cell.mean(axis=-1), rtol=1e-6)
  # Only the global cell: plain KD (the authors' --M [1]).
  np.testing.assert_allclose(loss(student[:, :1], teacher[:, :1], 7.0), per_cell[:, 0],
                             rtol=1e-6)
  np.testing.assert_allclose(loss(teacher, teacher, 2.0), 0.0, atol=1e-6)
  # A teacher with zero-probability classes: finite values and gradients.
  teacher_inf = teacher.copy()
  teacher_inf[:, :, 0] = -np.inf
  value, grad = jax.jit(jax.value_and_grad(lambda s: loss(s, teacher_inf, 2.0).sum()))(student)
  assert np.isfinite(value) and np.all(np.isfinite(grad))


def test_check_grads_float64_map():
  with jax.enable_x64(True):
    rng = np.random.default_rng(100)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape))
    mean, teacher, log_scale = normal(2, 4, 4, 3), normal(2, 2, 2, 3), normal(3)
    vid = jax.jit(lambda m, t, a: vid_loss(m, t, log_scale=a))
    assert vid(mean, teacher, log_scale).dtype == jnp.float64
    check_grads(vid, (mean, teacher, log_scale), order=1, modes=('rev',))
    student, target = normal(2, 2, 2, 3), normal(2, 2, 2, 3)
    margin = jax.jit(ofd_margin)(jnp.ones(3), jnp.zeros(3))
    assert margin.dtype == jnp.float64
    check_grads(jax.jit(lambda s, t: ofd_loss(s, t, margin=margin)), (student, target), order=1,
                modes=('rev',))
    stages_s = [normal(2, 7, 7, 2), normal(2, 1, 1, 2)]  # overlapping pooling windows; 1x1
    stages_t = [normal(2, 7, 7, 2), normal(2, 1, 1, 2)]
    check_grads(jax.jit(hcl_loss), (stages_s, stages_t), order=1, modes=('rev',))
    s_logits, t_logits, labels = _sdd_inputs(101, b=4, n=5, k=3)
    sdd = lambda s, t: sdd_loss(s, t, labels, temperature=3.0, complementary_weight=2.0)
    check_grads(jax.jit(sdd), (jnp.asarray(s_logits, jnp.float64),
                               jnp.asarray(t_logits, jnp.float64)), order=1, modes=('rev',))


def test_bfloat16_inputs_give_float32_outputs_map():
  bf = lambda x: jnp.asarray(x, jnp.bfloat16)
  f = _features(110, (2, 4, 4, 3))
  g = _features(111, (2, 4, 4, 3))
  att = _features(112, (2, 4, 4, 2))
  s_logits, t_logits, labels = _sdd_inputs(113, b=2)
  losses = [
      (lambda a, b: vid_loss(a, b, log_scale=jnp.zeros(3, jnp.bfloat16)), (f, g)),
      (lambda a, b: ofd_loss(a, b, margin=jnp.full(3, -0.5, jnp.bfloat16)), (f, g)),
      (lambda a, b: hcl_loss([a], [b]), (f, g)),
      (lambda a, b: sdd_loss(a, b, labels, temperature=4.0, complementary_weight=2.0),
       (s_logits, t_logits)),
  ]
  for fn, args in losses:
    fn = jax.jit(fn)
    got = fn(*[bf(a) for a in args])
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, fn(*args), rtol=5e-2, atol=5e-2)
  # The helpers: output dtypes only (no compilation needed).
  helpers = [
      (lambda a, b: ofd_margin(a[0, 0, 0], b[0, 0, 0]), (f, g)),
      (abf_combine, (f, g[:, :2, :2], att)),
      (multiscale_pooled_features, (f,)),
      (lambda a: adaptive_avg_pool(a, 3, 3), (f,)),
      (lambda a: nearest_upsample(a, 8, 8), (f,)),
  ]
  for fn, args in helpers:
    assert jax.eval_shape(fn, *[bf(a) for a in args]).dtype == jnp.float32
