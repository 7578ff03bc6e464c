"""Tests of jaxkd.losses.methods.at against independent NumPy float64 references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from feature_refs import _features, pooling_cases, ref_attention_map, ref_attention_transfer
from jaxkd.losses import attention_map, attention_transfer_loss


@pytest.mark.parametrize('power', [1.0, 2, 3])
def test_attention_map_matches_reference(power):
  features = _features(4, (3, 4, 5, 6))
  features[0, 1, 2] = -10.0  # a strong negative activation: |f| counts, not f
  got = jax.jit(lambda f: attention_map(f, power=power))(features)
  assert got.shape == (3, 20) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_attention_map(features, power), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(jnp.linalg.norm(got, axis=-1), 1.0, rtol=1e-5)


def test_attention_map_of_zero_features_is_zero_with_finite_gradients():
  zeros = np.zeros((2, 3, 3, 4), np.float32)
  np.testing.assert_array_equal(attention_map(zeros), 0.0)
  grad = jax.grad(lambda f: jnp.sum(attention_map(f) * jnp.arange(9.0)))(zeros)
  assert np.all(np.isfinite(grad))


@pooling_cases(4, channels=[(3, 8), (3, 5), (3, 5), (3, 3)])
def test_attention_transfer_matches_reference(student_shape, teacher_shape):
  student, teacher = _features(5, student_shape), _features(6, teacher_shape)
  got = jax.jit(attention_transfer_loss)(student, teacher)
  assert got.shape == (4,) and got.dtype == jnp.float32
  want = ref_attention_transfer(student, teacher)
  assert np.all(want > 0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)


def test_attention_transfer_power_and_hand_made_maps():
  # One example, 1x2 positions, one channel: maps |f|^p normalised.
  student = np.array([[[[3.0], [4.0]]]], np.float32)  # energies 9, 16 -> (9, 16) / sqrt(337)
  teacher = np.array([[[[1.0], [0.0]]]], np.float32)  # map (1, 0)
  want = ((9 / np.sqrt(337) - 1)**2 + (16 / np.sqrt(337))**2) / 2
  np.testing.assert_allclose(attention_transfer_loss(student, teacher), [want], rtol=1e-6)
  np.testing.assert_allclose(attention_transfer_loss(student, -teacher, power=3),
                             ref_attention_transfer(student, -teacher, 3), rtol=1e-6)


def test_attention_transfer_zero_cases():
  features = _features(7, (3, 4, 4, 6))
  np.testing.assert_allclose(attention_transfer_loss(features, features), 0.0, atol=1e-12)
  # Maps are normalised and channel-averaged: positive rescaling and channel counts do not
  # matter, nor does the sign of an activation.
  teacher = np.concatenate([2.5 * features, -2.5 * features], axis=-1)
  np.testing.assert_allclose(attention_transfer_loss(features, teacher), 0.0, atol=1e-12)


def test_attention_transfer_rejects_bad_shapes():
  with pytest.raises(ValueError, match='whole'):
    attention_transfer_loss(_features(8, (2, 6, 6, 3)), _features(9, (2, 4, 4, 3)))
  with pytest.raises(ValueError, match='batch size'):
    attention_transfer_loss(_features(8, (2, 4, 4, 3)), _features(9, (3, 4, 4, 3)))
  with pytest.raises(ValueError, match='student_features'):
    attention_transfer_loss(_features(8, (2, 3)), _features(9, (2, 3)))
  with pytest.raises(ValueError, match='features'):
    attention_map(_features(8, (2, 3)))
  with pytest.raises(ValueError, match='power'):
    attention_transfer_loss(_features(8, (2, 4, 4, 3)), _features(8, (2, 4, 4, 3)), power=0)
