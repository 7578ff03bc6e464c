"""Tests of jaxkd.losses.methods.rkd against independent NumPy float64 references."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.losses import rkd_angle_loss, rkd_distance_loss
from jaxkd.losses.methods import rkd
from relation_refs import (_angle_batches, _assert_gradients_close, _features, _S_SHAPE, _T_SHAPE,
                           jit, jnp_direct_rkd_angle, np_direct_rkd_angle, ref_rkd_angle,
                           ref_rkd_distance, rkd_default)


def test_rkd_scale_invariance():
  student, teacher = _features(9, _S_SHAPE), _features(10, _T_SHAPE)
  rkd = jit(rkd_default)
  base = rkd(student, teacher)
  assert base > 0
  for s_scale, t_scale in [(3.7, 3.7), (0.2, 1.0), (1.0, 11.0)]:
    np.testing.assert_allclose(rkd(s_scale * student, t_scale * teacher), base, rtol=1e-5)
  # Translating either side changes neither distances nor angles.
  np.testing.assert_allclose(rkd(student + 5.0, teacher - 2.0), base, rtol=1e-4)


def test_rkd_hand_made_and_edge_cases():
  # A right isosceles triangle (vertex 0) against an equilateral one.
  student = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
  teacher = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]], np.float32)
  angle, distance = jit(rkd_angle_loss), jit(rkd_distance_loss)
  np.testing.assert_allclose(angle(student, teacher), ref_rkd_angle(student, teacher),
                             rtol=1e-5)
  np.testing.assert_allclose(distance(student, teacher), ref_rkd_distance(student, teacher),
                             rtol=1e-5)
  # Two examples form no triangle, and one pair's normalised distance is 1: both are 0.
  pair_s, pair_t = student[:2], 3.0 * teacher[:2]
  np.testing.assert_allclose(angle(pair_s, pair_t), 0.0, atol=1e-7)
  np.testing.assert_allclose(distance(pair_s, pair_t), 0.0, atol=1e-6)


def test_rkd_angle_matches_the_direct_formulation_with_equal_rows():
  # The loss works from pairwise squared distances; the direct [B, B, D] formulation is
  # the reference for the value (NumPy) and the gradient (jax.grad of it in jnp).
  grad = jax.jit(jax.value_and_grad(rkd_angle_loss, argnums=(0, 1)))
  grad_direct = jax.jit(jax.value_and_grad(jnp_direct_rkd_angle, argnums=(0, 1)))
  for student, teacher in _angle_batches():
    with jax.enable_x64(True):
      value, grads = grad(student, teacher)
      want_value, want_grads = grad_direct(student, teacher)
      assert value.dtype == jnp.float64
      np.testing.assert_allclose(value, np_direct_rkd_angle(student, teacher), rtol=1e-10)
      np.testing.assert_allclose(want_value, np_direct_rkd_angle(student, teacher), rtol=1e-10)
      _assert_gradients_close(grads, want_grads, 1e-10)
    value32, grads32 = grad(np.float32(student), np.float32(teacher))
    assert value32.dtype == jnp.float32
    np.testing.assert_allclose(value32, np_direct_rkd_angle(student, teacher), rtol=1e-5)
    _assert_gradients_close(grads32, want_grads, 1e-5)
    # Equal rows meet zero differences: the gradient stays finite.
    assert all(np.all(np.isfinite(g)) for g in grads32)


def test_rkd_angle_accelerator_formulation_agrees():
  # GPUs and TPUs take the direct [B, B, D] formulation: the same values and gradients.
  student, teacher = _angle_batches()[0]
  direct = lambda s, t: rkd._smooth_l1(rkd._angles(s), rkd._angles(t))  # noqa: E731
  with jax.enable_x64(True):
    value, grad = jax.jit(jax.value_and_grad(rkd_angle_loss))(student, teacher)
    want_value, want_grad = jax.jit(jax.value_and_grad(direct))(student, teacher)
    np.testing.assert_allclose(value, want_value, rtol=1e-10)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-8, atol=1e-12)


def test_rkd_angle_steps_agree():
  # CPU runs the vertices a few per loop step (step 0: all at once): the same values,
  # whatever the step and remainder.
  student, teacher = _angle_batches()[1]
  value = jax.jit(rkd._angle_huber_sum, static_argnums=2)
  grad = jax.jit(rkd._angle_gradient, static_argnums=3)
  with jax.enable_x64(True):
    want = value(student, teacher, rkd._CPU_ANGLE_ROWS)
    want_grad = grad(student, teacher, 1.0, rkd._CPU_ANGLE_ROWS)
    for step in [0, 1, 3, 7]:
      np.testing.assert_allclose(value(student, teacher, step), want, rtol=1e-12)
      np.testing.assert_allclose(grad(student, teacher, 1.0, step), want_grad, rtol=1e-12,
                                 atol=1e-12 * np.max(np.abs(want_grad)))
