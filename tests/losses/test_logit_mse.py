"""Logit MSE (jaxkd.losses.methods.logit_mse) against an independent NumPy float64 reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxkd.losses import LOSSES, Context, Outputs, build_objective
from jaxkd.losses.methods.logit_mse import mse_logit_loss


def ref_mse_logit(student, teacher):
  s, t = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
  return np.mean((s - t) ** 2, axis=-1)


def _logits(seed, shape=(6, 10)):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 3


def test_matches_the_float64_reference_under_jit():
  student, teacher = _logits(0), _logits(1)
  got = jax.jit(mse_logit_loss)(student, teacher)
  assert got.dtype == jnp.float32 and got.shape == (6,)
  np.testing.assert_allclose(got, ref_mse_logit(student, teacher), rtol=1e-6)
  np.testing.assert_array_equal(mse_logit_loss(student, student), np.zeros(6))


def test_gradients_and_dtypes():
  student, teacher = _logits(2, (3, 5)), _logits(3, (3, 5))
  with jax.enable_x64(True):
    s64, t64 = student.astype(np.float64), teacher.astype(np.float64)
    assert mse_logit_loss(s64, t64).dtype == jnp.float64
    np.testing.assert_allclose(mse_logit_loss(s64, t64), ref_mse_logit(s64, t64), rtol=1e-12)
    check_grads(mse_logit_loss, (s64, t64), order=2, modes=('rev',), atol=1e-5, rtol=1e-5)
  half = mse_logit_loss(jnp.asarray(student, jnp.bfloat16), jnp.asarray(teacher, jnp.bfloat16))
  assert half.dtype == jnp.float32
  with pytest.raises(ValueError, match='differ'):
    mse_logit_loss(student, teacher[:, :4])


def test_term_by_name_weighs_teachers():
  student, teachers = _logits(4), [_logits(5), _logits(6)]
  assert LOSSES['logit_mse'].name == 'logit_mse'
  objective = build_objective({'logit_mse': {'weight': 2.0, 'teacher_weights': [1.0, 3.0]}})
  total, components, _ = objective.apply(
      Context(Outputs(jnp.asarray(student)), [Outputs(jnp.asarray(t)) for t in teachers]))
  want = 0.25 * ref_mse_logit(student, teachers[0]) + 0.75 * ref_mse_logit(student, teachers[1])
  np.testing.assert_allclose(components['logit_mse'], want, rtol=1e-5)
  np.testing.assert_allclose(total, 2.0 * want, rtol=1e-5)
