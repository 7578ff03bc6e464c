"""Feature losses (jaxkd.losses.feature) against independent NumPy float64 references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxkd.losses import attention_map, attention_transfer_loss, hint_loss

# ---------------------------------------------------------------- float64 references


def ref_hint(student, teacher):
  diff = np.asarray(student, np.float64) - np.asarray(teacher, np.float64)
  return np.array([np.mean(d**2) for d in diff])


def ref_attention_map(features, power=2):
  features = np.asarray(features, np.float64)
  maps = []
  for f in features:  # one example: [H, W, C]
    q = np.mean(np.abs(f)**power, axis=-1).ravel()
    maps.append(q / max(np.sqrt(np.sum(q**2)), 1e-12))
  return np.stack(maps)


def ref_block_mean(features, out_h, out_w):
  """Adaptive average pooling of [B, H, W, C] to [B, out_h, out_w, C], whole factors only."""
  features = np.asarray(features, np.float64)
  kh, kw = features.shape[1] // out_h, features.shape[2] // out_w
  out = np.zeros((features.shape[0], out_h, out_w, features.shape[3]))
  for i in range(out_h):
    for j in range(out_w):
      out[:, i, j] = features[:, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].mean(axis=(1, 2))
  return out


def ref_attention_transfer(student, teacher, power=2):
  h = min(student.shape[1], teacher.shape[1])
  w = min(student.shape[2], teacher.shape[2])
  a_s = ref_attention_map(ref_block_mean(student, h, w), power)
  a_t = ref_attention_map(ref_block_mean(teacher, h, w), power)
  return np.mean((a_s - a_t)**2, axis=-1)


def _features(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -------------------------------------------------------------------------- hint_loss


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


# ------------------------------------------------------------------------ attention_map


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


# -------------------------------------------------------------- attention_transfer_loss


@pytest.mark.parametrize('student_shape, teacher_shape', [
    ((4, 4, 4, 3), (4, 4, 4, 8)),  # same space, different channels
    ((4, 8, 8, 3), (4, 4, 4, 5)),  # student larger: pooled
    ((4, 2, 2, 3), (4, 6, 6, 5)),  # teacher larger: pooled by 3
    ((4, 8, 2, 3), (4, 4, 4, 3)),  # each axis pooled on its own side
], ids=['same', 'student-larger', 'teacher-larger', 'mixed'])
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


# ------------------------------------------------------------------- gradients, dtypes


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
