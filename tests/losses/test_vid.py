"""Tests of jaxkd.losses.methods.vid against independent NumPy float64 references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.losses import vid_log_scale_init, vid_loss
from feature_refs import assert_finite_gradients
from map_refs import _features, ref_vid


def test_vid_log_scale_init_gives_initial_variance():
  init = vid_log_scale_init(5.0)
  np.testing.assert_allclose(init, np.log(np.exp(5.0 - 1e-5) - 1.0), rtol=1e-12)
  np.testing.assert_allclose(np.log1p(np.exp(init)) + 1e-5, 5.0, rtol=1e-12)
  np.testing.assert_allclose(jax.nn.softplus(vid_log_scale_init(0.5, min_variance=0.1)) + 0.1,
                             0.5, rtol=1e-6)
  with pytest.raises(ValueError, match='initial_variance'):
    vid_log_scale_init(1e-6)
  with pytest.raises(ValueError, match='min_variance'):
    vid_log_scale_init(5.0, min_variance=0.0)


@pytest.mark.parametrize('mean_shape, teacher_shape', [
    ((3, 4, 4, 5), (3, 4, 4, 5)),
    ((3, 2, 2, 5), (3, 4, 4, 5)),  # teacher larger: target pooled (as the authors)
    ((3, 6, 6, 5), (3, 3, 3, 5)),  # mean larger: pooled by 2
    ((3, 4, 2, 5), (3, 2, 4, 5)),  # each axis on its own side
], ids=['same', 'teacher-larger', 'mean-larger', 'mixed'])
def test_vid_matches_reference(mean_shape, teacher_shape):
  mean, teacher = _features(0, mean_shape), _features(1, teacher_shape)
  log_scale = _features(2, (5,))
  got = jax.jit(lambda m, t, a: vid_loss(m, t, log_scale=a))(mean, teacher, log_scale)
  assert got.shape == (3,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_vid(mean, teacher, log_scale), rtol=1e-5, atol=1e-6)


def test_vid_scalar_log_scale_and_min_variance():
  mean, teacher = _features(3, (2, 3, 3, 4)), _features(4, (2, 3, 3, 4))
  got = jax.jit(lambda m, t: vid_loss(m, t, log_scale=-1.5, min_variance=0.25))(mean, teacher)
  np.testing.assert_allclose(got, ref_vid(mean, teacher, np.full(4, -1.5), eps=0.25), rtol=1e-5)


def test_vid_minimised_when_mean_equals_target():
  teacher = _features(5, (2, 3, 3, 4))
  log_scale = _features(6, (4,))
  loss = jax.jit(lambda m: vid_loss(m, teacher, log_scale=log_scale))
  var = np.log1p(np.exp(log_scale.astype(np.float64))) + 1e-5
  np.testing.assert_allclose(loss(teacher), 0.5 * np.mean(np.log(var)), rtol=1e-5)
  assert np.all(loss(teacher + 0.1 * _features(7, teacher.shape)) > loss(teacher))
  grad = jax.jit(jax.grad(lambda m: loss(m).sum()))(teacher)
  np.testing.assert_array_equal(grad, 0.0)
  # For a fixed residual, the variance minimising the batch loss is the residual's
  # per-channel mean square: the gradient in log_scale vanishes there.
  residual = _features(8, teacher.shape)
  best_var = np.mean(residual.astype(np.float64)**2, axis=(0, 1, 2))
  best_scale = np.log(np.expm1(best_var - 1e-5)).astype(np.float32)
  grad_scale = jax.jit(jax.grad(
      lambda a: vid_loss(teacher + residual, teacher, log_scale=a).mean()))(best_scale)
  np.testing.assert_allclose(grad_scale, 0.0, atol=1e-6)


def test_vid_tiny_variance_gives_finite_gradients():
  mean, teacher = _features(9, (2, 2, 2, 3)), _features(10, (2, 2, 2, 3))
  log_scale = np.array([-200.0, 0.0, 200.0], np.float32)  # variance eps, ~0.69, 200
  assert_finite_gradients(lambda m, t, a: vid_loss(m, t, log_scale=a), mean, teacher, log_scale)


def test_vid_rejects_bad_inputs():
  mean = _features(11, (2, 4, 4, 3))
  with pytest.raises(ValueError, match='channel'):
    vid_loss(mean, _features(12, (2, 4, 4, 5)), log_scale=np.zeros(3))
  with pytest.raises(ValueError, match='whole'):
    vid_loss(mean, _features(12, (2, 6, 6, 3)), log_scale=np.zeros(3))
  with pytest.raises(ValueError, match='log_scale'):
    vid_loss(mean, mean, log_scale=np.zeros(4))
  with pytest.raises(ValueError, match='min_variance'):
    vid_loss(mean, mean, log_scale=np.zeros(3), min_variance=-1.0)
  with pytest.raises(ValueError, match='predicted_mean'):
    vid_loss(mean[:, 0, 0], mean[:, 0, 0], log_scale=np.zeros(3))


def test_vid_term_pools_a_larger_teacher_map_down():
  """Hardening II: RepDistiller's VIDLoss pools the larger map down before the regressor,
  the teacher's too (adaptive average pooling); the term refused a larger teacher map."""
  from map_refs import ref_adaptive_pool, run_map_term
  student, teacher = _features(5, (3, 2, 2, 4)), _features(6, (3, 6, 6, 5))  # 6 -> 2
  got, params = run_map_term('vid', {'s': student}, {'t': teacher})
  p = params['pair0']
  relu = lambda x: np.maximum(x, 0.0)  # noqa: E731
  mean = relu(relu(np.asarray(student, np.float64) @ p['conv1']['kernel']) @
              p['conv2']['kernel']) @ p['conv3']['kernel']
  want = ref_vid(mean, ref_adaptive_pool(teacher, 2, 2), p['log_scale'])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # A student map larger than the teacher's is pooled onto it before the regressor.
  got, params = run_map_term('vid', {'s': _features(7, (3, 4, 4, 4))}, {'t': teacher[:, :2, :2]})
  assert got.shape == (3,) and np.all(np.isfinite(got))
