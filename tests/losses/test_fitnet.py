"""Tests of jaxkd.losses.methods.fitnet against independent NumPy float64 references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from feature_refs import _features, ref_hint
from jaxkd.losses import hint_loss


@pytest.mark.parametrize('shape', [(4, 3, 3, 2), (4, 7), (4,)], ids=['BHWC', 'BD', 'B'])
def test_hint_loss_matches_reference(shape):
  student, teacher = _features(0, shape), _features(1, shape)
  got = jax.jit(hint_loss)(student, teacher)
  assert got.shape == (4,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_hint(student, teacher), rtol=1e-5)
  # Its batch mean is the mean squared error over the whole batch (F.mse_loss).
  np.testing.assert_allclose(jnp.mean(got), np.mean((student - teacher).astype(np.float64)**2),
                             rtol=1e-5)


def test_hint_loss_hand_made_zero_and_gradient():
  student = np.array([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]], np.float32)
  teacher = np.array([[[1.0, 2.0], [3.0, 2.0]], [[1.0, -1.0], [1.0, -1.0]]], np.float32)
  np.testing.assert_allclose(hint_loss(student, teacher), [1.0, 1.0], rtol=1e-6)
  np.testing.assert_array_equal(hint_loss(teacher, teacher), 0.0)
  grad = jax.grad(lambda s: hint_loss(s, teacher).sum())(student)
  np.testing.assert_allclose(grad, 2 * (student - teacher) / 4, rtol=1e-6)


def test_hint_loss_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match='student_features.*teacher_features'):
    hint_loss(_features(2, (4, 3, 3, 2)), _features(3, (4, 3, 3, 4)))
