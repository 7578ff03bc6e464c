"""Tests of jaxkd.losses.methods.kd against independent NumPy float64 references."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from classic_refs import _logits, np_kd, np_kd_probs, np_softmax
from jaxkd.losses import cross_entropy, kd_loss, kd_loss_from_probs


@pytest.mark.parametrize('temperature', [1.0, 4.0, 20.0])
@pytest.mark.parametrize('shape', [(8, 10), (10,), (3, 4, 10)], ids=['BC', 'C', 'ABC'])
def test_kd_loss_matches_numpy(temperature, shape):
  student, teacher = _logits(0, shape), _logits(1, shape)
  got = jax.jit(functools.partial(kd_loss, temperature=temperature))(student, teacher)
  assert got.shape == shape[:-1] and got.dtype == jnp.float32
  want = np_kd(student, teacher, temperature)
  assert np.all(want > 0)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


def test_kd_loss_traced_temperature():
  student, teacher = _logits(0, (4, 6)), _logits(1, (4, 6))
  got = jax.jit(lambda s, t, temp: kd_loss(s, t, temperature=temp))(student, teacher, 3.0)
  np.testing.assert_allclose(got, np_kd(student, teacher, 3.0), rtol=2e-4)


@pytest.mark.parametrize('temperature', [0.5, 1.0, 4.0, 20.0])
def test_kd_loss_of_identical_logits_is_zero(temperature):
  x = _logits(2, (5, 7), scale=10.0)
  np.testing.assert_allclose(kd_loss(x, x, temperature=temperature), 0.0, atol=1e-6)
  probs = jax.nn.softmax(x / temperature)
  np.testing.assert_allclose(kd_loss_from_probs(x, probs, temperature=temperature), 0.0,
                             atol=1e-4 * temperature**2)


def test_kd_loss_extreme_logits_finite_values_and_gradients():
  rng = np.random.default_rng(3)
  student = (1e4 * rng.choice([-1.0, 1.0], size=(4, 6))).astype(np.float32)
  teacher = (1e4 * rng.choice([-1.0, 1.0], size=(4, 6))).astype(np.float32)
  teacher[0] = student[0]
  fn = jax.jit(lambda s, t: kd_loss(s, t, temperature=0.1))
  value = fn(student, teacher)
  assert np.all(np.isfinite(value))
  np.testing.assert_allclose(value, np_kd(student, teacher, 0.1), rtol=1e-5, atol=1e-6)
  grads = jax.grad(lambda s, t: fn(s, t).sum(), argnums=(0, 1))(student, teacher)
  for g in grads:
    assert np.all(np.isfinite(g))


def test_kd_loss_teacher_with_zero_probability_classes():
  student = _logits(4, (3, 5))
  teacher = _logits(5, (3, 5))
  teacher[:, 1] = -np.inf
  teacher[2, 3] = -np.inf
  fn = lambda s, t: kd_loss(s, t, temperature=2.0)
  value = jax.jit(fn)(student, teacher)
  np.testing.assert_allclose(value, np_kd(student, teacher, 2.0), rtol=2e-4)
  grads = jax.grad(lambda s, t: fn(s, t).sum(), argnums=(0, 1))(student, teacher)
  for g in grads:
    assert np.all(np.isfinite(g))
  # The student's gradient still pulls its mass off the classes the teacher rules out.
  assert np.all(np.asarray(grads[0])[:, 1] > 0)


def test_kd_loss_from_probs_with_zeros_matches_numpy():
  student = _logits(6, (4, 5))
  probs = np.array([[0.0, 1.0, 0.0, 0.0, 0.0],
                    [0.5, 0.0, 0.5, 0.0, 0.0],
                    [0.1, 0.2, 0.3, 0.4, 0.0],
                    [0.2, 0.2, 0.2, 0.2, 0.2]], np.float32)
  fn = jax.jit(lambda s, p: kd_loss_from_probs(s, p, temperature=4.0))
  np.testing.assert_allclose(fn(student, probs), np_kd_probs(student, probs, 4.0), rtol=2e-4)
  grads = jax.grad(lambda s, p: fn(s, p).sum(), argnums=(0, 1))(student, probs)
  for g in grads:
    assert np.all(np.isfinite(g))


def test_kd_loss_from_probs_equals_kd_loss_on_softened_teacher():
  student, teacher = _logits(7, (6, 9)), _logits(8, (6, 9))
  probs = jax.nn.softmax(teacher / 4.0)
  np.testing.assert_allclose(kd_loss_from_probs(student, probs, temperature=4.0),
                             kd_loss(student, teacher, temperature=4.0), rtol=1e-4)


@pytest.mark.parametrize('temperature', [1.0, 4.0, 20.0])
def test_kd_gradient_is_temperature_times_probability_gap(temperature):
  student, teacher = _logits(9, (4, 8)), _logits(10, (4, 8))
  grad = jax.jit(jax.grad(lambda s: kd_loss(s, teacher, temperature=temperature).sum()))(
      student)
  want = temperature * (np_softmax(student / temperature) - np_softmax(teacher / temperature))
  np.testing.assert_allclose(grad, want, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize('temperature', [1.0, 4.0, 20.0])
def test_kd_without_temperature_squared_is_divided_by_t_squared(temperature):
  student, teacher = _logits(11, (4, 8)), _logits(12, (4, 8))
  scaled = kd_loss(student, teacher, temperature=temperature)
  plain = kd_loss(student, teacher, temperature=temperature, scale_by_temperature_squared=False)
  np.testing.assert_allclose(plain, scaled / temperature**2, rtol=1e-6)
  np.testing.assert_allclose(plain, np_kd(student, teacher, temperature, squared=False),
                             rtol=2e-4, atol=1e-8)


def test_check_grads_float64():
  with jax.enable_x64(True):
    rng = np.random.default_rng(13)
    student = jnp.asarray(rng.standard_normal((3, 5)))
    teacher = jnp.asarray(rng.standard_normal((3, 5)))
    probs = jax.nn.softmax(jnp.asarray(rng.standard_normal((3, 5))))
    labels = jnp.asarray([0, 4, 2])
    assert kd_loss(student, teacher, temperature=2.0).dtype == jnp.float64
    kw = dict(modes=('fwd', 'rev'), atol=1e-5, rtol=1e-5)
    # Second order on the main loss only; first order on the rest keeps this test fast.
    check_grads(lambda s, t: kd_loss(s, t, temperature=2.0), (student, teacher), order=2, **kw)
    check_grads(lambda s, t: kd_loss(s, t, temperature=0.5, scale_by_temperature_squared=False),
                (student, teacher), order=1, **kw)
    check_grads(lambda s, p: kd_loss_from_probs(s, p, temperature=3.0), (student, probs),
                order=1, **kw)
    check_grads(lambda x: cross_entropy(x, labels, label_smoothing=0.2), (student,), order=1,
                **kw)


def test_kd_rejects_bad_inputs():
  x = _logits(14, (2, 4))
  with pytest.raises(ValueError, match='temperature'):
    kd_loss(x, x, temperature=0.0)
  with pytest.raises(ValueError, match='temperature'):
    kd_loss_from_probs(x, jax.nn.softmax(x), temperature=-1.0)
  with pytest.raises(ValueError, match='teacher_logits'):
    kd_loss(x, _logits(15, (2, 5)), temperature=1.0)
  with pytest.raises(ValueError, match='teacher_probs'):
    kd_loss_from_probs(x, np.full((2, 5), 0.2, np.float32), temperature=1.0)
