"""Tests of jaxkd.losses.methods.ofd against independent NumPy float64 references."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.losses import OFD_CIFAR_WEIGHT, OFD_IMAGENET_WEIGHT, ofd_loss, ofd_margin
from feature_refs import assert_finite_gradients
from map_refs import _features, ref_ofd, ref_ofd_margin, ref_ofd_mdistiller


def test_ofd_margin_matches_reference():
  scale = np.array([1.0, -0.5, 2.0, 0.3, 1.5, 1e-3], np.float32)  # negative: abs, as authors
  bias = np.array([0.0, -1.0, 5.0, 2.0, -0.7, 0.002], np.float32)  # 2.0/0.3: cdf < 0.001
  got = jax.jit(ofd_margin)(scale, bias)
  assert got.shape == (6,) and got.dtype == jnp.float32
  want = ref_ofd_margin(scale, bias)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(got[3], -0.9, rtol=1e-6)  # the -3 s fallback
  np.testing.assert_allclose(got[0], -math.sqrt(2 / math.pi), rtol=1e-6)  # E[x | x < 0], N(0,1)
  assert np.all(np.asarray(got) <= 0)


def test_ofd_margin_zero_scale_is_finite_limit():
  margin = jax.jit(ofd_margin)
  got = margin(np.array([0.0, 0.0, 0.0, 1e-4], np.float32),
               np.array([-2.0, 0.0, 3.0, -2.0], np.float32))
  np.testing.assert_allclose(got, [-2.0, 0.0, 0.0, -2.0], rtol=1e-6)  # last: small-scale limit
  grads = jax.jit(jax.grad(lambda s, b: margin(s, b).sum(), argnums=(0, 1)))(
      np.zeros(3, np.float32), np.array([-2.0, 0.0, 3.0], np.float32))
  for g in grads:
    assert np.all(np.isfinite(g))
  with pytest.raises(ValueError, match='bn_scale'):
    ofd_margin(np.ones(3), np.ones(4))


def test_ofd_loss_matches_references():
  student, teacher = _features(20, (3, 4, 4, 5)), _features(21, (3, 4, 4, 5))
  margin = jax.jit(ofd_margin)(np.abs(_features(22, (5,))) + 0.5, _features(23, (5,)))
  got = jax.jit(lambda s, t, m: ofd_loss(s, t, margin=m))(student, teacher, margin)
  assert got.shape == (3,) and got.dtype == jnp.float32
  want = ref_ofd(student, teacher, margin)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(got, ref_ofd_mdistiller(student, teacher, margin), rtol=1e-5)
  # Authors' term: sum over the batch / batch size / 1000 on CIFAR-100.
  assert OFD_CIFAR_WEIGHT == 1e-3 and OFD_IMAGENET_WEIGHT == 1e-4
  np.testing.assert_allclose(OFD_CIFAR_WEIGHT * np.mean(got), want.sum() / 3 / 1000, rtol=1e-5)


def test_ofd_loss_hand_made_and_zero_cases():
  margin = np.array([-1.0], np.float32)
  teacher = np.array([[[[2.0], [-0.5], [-3.0], [-3.0]]]], np.float32)  # clipped: 2, -.5, -1, -1
  student = np.array([[[[1.0], [-2.0], [0.0], [-5.0]]]], np.float32)
  # 2 > 0: counted (1); -2 < -.5 <= 0: not; 0 > -1: counted (1); -5 < -1: not.
  loss = jax.jit(lambda s, t: ofd_loss(s, t, margin=margin))
  np.testing.assert_allclose(loss(student, teacher), [2.0])
  clipped = np.maximum(teacher, margin)
  np.testing.assert_array_equal(loss(clipped, teacher), 0.0)
  # Below a non-positive clipped teacher, the student is free.
  np.testing.assert_array_equal(loss(clipped - 4.0 * (clipped <= 0), teacher), 0.0)
  zeros = np.zeros((2, 2, 2, 3), np.float32)
  assert_finite_gradients(lambda s, t: ofd_loss(s, t, margin=np.zeros(3)), zeros, zeros)


def test_ofd_loss_rejects_bad_inputs():
  student = _features(24, (2, 3, 3, 4))
  with pytest.raises(ValueError, match='student_features.*teacher_features'):
    ofd_loss(student, _features(25, (2, 3, 3, 5)), margin=np.zeros(4))
  with pytest.raises(ValueError, match='margin'):
    ofd_loss(student, student, margin=np.zeros(3))


def test_ofd_pools_a_larger_teacher_map_after_the_margin():
  """Hardening II: mdistiller's OFD clips the teacher at the margin, then adaptively pools it
  to the student's size; ofd_loss and the term refused a larger teacher map."""
  from map_refs import ref_adaptive_pool, ref_conv_batch_norm, run_map_term
  student, teacher = _features(30, (2, 3, 3, 4)), _features(31, (2, 7, 7, 4))  # 7 -> 3
  margin = -np.abs(_features(32, (4,)))
  got = jax.jit(lambda s, t: ofd_loss(s, t, margin=margin))(student, teacher)
  clipped = np.maximum(np.asarray(teacher, np.float64), margin)
  np.testing.assert_allclose(got, ref_ofd(student, ref_adaptive_pool(clipped, 3, 3), margin),
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='pool the student'):
    ofd_loss(teacher, student, margin=margin)
  # The term: the connector on the student, the teacher pooled after its batch margin.
  small_teacher = _features(33, (2, 6, 6, 5))
  value, params = run_map_term('ofd', {'s': student}, {'t': small_teacher})
  p = params['pair0']
  connected = ref_conv_batch_norm(student, p['conv']['kernel'], p['bn_scale'], p['bn_bias'])
  t64 = np.asarray(small_teacher, np.float64)
  batch_margin = ref_ofd_margin(np.sqrt(t64.var(axis=(0, 1, 2)) + 1e-5), t64.mean(axis=(0, 1, 2)))
  want = ref_ofd(connected, ref_adaptive_pool(np.maximum(t64, batch_margin), 3, 3),
                 batch_margin)
  np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-4)
