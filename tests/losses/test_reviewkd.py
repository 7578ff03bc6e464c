"""Tests of jaxkd.losses.methods.reviewkd against independent NumPy float64 references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.losses import abf_combine, hcl_loss, nearest_upsample
from map_refs import _features, _STAGES, ref_adaptive_pool, ref_hcl, ref_nearest


def test_nearest_upsample_matches_reference():
  x = _features(31, (2, 2, 3, 4))
  got = jax.jit(nearest_upsample, static_argnums=(1, 2))(x, 4, 6)
  np.testing.assert_array_equal(got, np.repeat(np.repeat(x, 2, axis=1), 2, axis=2))
  for out in [(5, 7), (1, 2), (2, 3), (1, 1), (6, 1), (3, 9)]:  # whole factors up and down
    np.testing.assert_allclose(jax.jit(nearest_upsample, static_argnums=(1, 2))(x, *out),
                               ref_nearest(x, *out), rtol=1e-6)
  # The gradient of a whole-factor upsampling sums each block of the output's cotangent.
  w = _features(32, (2, 4, 6, 4))
  grad = jax.jit(jax.grad(lambda a: jnp.sum(nearest_upsample(a, 4, 6) * w)))(x)
  np.testing.assert_allclose(grad, w.reshape(2, 2, 2, 3, 2, 4).sum(axis=(2, 4)), rtol=1e-6)
  with pytest.raises(ValueError, match='width'):
    nearest_upsample(x, 2, 2.0)


def test_abf_combine_matches_reference_and_extremes():
  x = _features(32, (2, 4, 4, 3))
  residual = _features(33, (2, 2, 2, 3))
  attention = jax.nn.sigmoid(_features(34, (2, 4, 4, 2)))
  combine = jax.jit(abf_combine)
  got = combine(x, residual, attention)
  assert got.shape == (2, 4, 4, 3) and got.dtype == jnp.float32
  up = ref_nearest(residual, 4, 4)
  a = np.asarray(attention, np.float64)
  want = x * a[..., :1] + up * a[..., 1:]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  ones, zeros = np.ones((2, 4, 4, 1), np.float32), np.zeros((2, 4, 4, 1), np.float32)
  np.testing.assert_array_equal(combine(x, residual, np.concatenate([ones, zeros], -1)), x)
  np.testing.assert_array_equal(combine(x, residual, np.concatenate([zeros, ones], -1)), up)
  with pytest.raises(ValueError, match='attention'):
    abf_combine(x, residual, attention[..., :1])
  with pytest.raises(ValueError, match='residual'):
    abf_combine(x, residual[..., :2], attention)


def test_hcl_matches_reference():
  student = [_features(40 + i, s) for i, s in enumerate(_STAGES)]
  teacher = [_features(50 + i, s) for i, s in enumerate(_STAGES)]
  got = jax.jit(hcl_loss)(student, teacher)
  assert got.shape == (2,) and got.dtype == jnp.float32
  want = ref_hcl(student, teacher)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # One 8x8 stage by hand: weights 1, 1/2, 1/4, 1/8 over 15/8.
  s8, t8 = student[0].astype(np.float64), teacher[0].astype(np.float64)
  mse = lambda a, b: np.mean((a - b)**2)
  batch_value = (mse(s8, t8) + sum(
      w * mse(ref_adaptive_pool(s8, l, l), ref_adaptive_pool(t8, l, l))
      for w, l in [(0.5, 4), (0.25, 2), (0.125, 1)])) / 1.875
  np.testing.assert_allclose(jnp.mean(jax.jit(hcl_loss)(student[:1], teacher[:1])),
                             batch_value, rtol=1e-5)
  np.testing.assert_allclose(jax.jit(lambda s, t: hcl_loss(s, t, levels=(2,)))(student, teacher),
                             ref_hcl(student, teacher, levels=(2,)), rtol=1e-5)


def test_hcl_zero_for_identical_features_with_finite_gradients():
  student = [_features(60 + i, s) for i, s in enumerate(_STAGES)]
  np.testing.assert_array_equal(jax.jit(hcl_loss)(student, student), 0.0)
  grads = jax.jit(jax.grad(lambda s: hcl_loss(s, [jnp.zeros(x.shape) for x in s]).sum()))(
      [np.zeros(s, np.float32) for s in _STAGES])
  for g in grads:
    assert np.all(np.isfinite(g))


def test_hcl_rejects_bad_inputs():
  a, b = _features(70, (2, 4, 4, 3)), _features(71, (2, 4, 4, 5))
  with pytest.raises(ValueError, match='student_features\\[0\\].*teacher_features\\[0\\]'):
    hcl_loss([a], [b])
  with pytest.raises(ValueError, match='stages'):
    hcl_loss([a, a], [a])
  with pytest.raises(ValueError, match='stages'):
    hcl_loss([], [])
  with pytest.raises(ValueError, match='batch size'):
    hcl_loss([a, a[:1]], [a, a[:1]])
  with pytest.raises(ValueError, match='sequences'):
    hcl_loss(a, a)
  with pytest.raises(ValueError, match='levels'):
    hcl_loss([a], [a], levels=(4, 0))
