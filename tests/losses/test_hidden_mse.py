"""Hidden-state transfer (jaxkd.losses.methods.hidden_mse) against NumPy float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxkd.losses import Context, Outputs, build_objective
from jaxkd.losses.methods.hidden_mse import hidden_mse_loss
from sequence_refs import LENGTHS, token_mean64

B, L, DS, DT = 4, 7, 6, 10


def _hidden(seed):
  rng = np.random.default_rng(seed)
  mask = (np.arange(L)[None] < np.array(LENGTHS)[:, None]).astype(np.float32)
  student = rng.normal(size=(B, L, DS)).astype(np.float32)
  teacher = rng.normal(size=(B, L, DT)).astype(np.float32)
  pad = mask[..., None] == 0  # padding holds large values: the mask must remove them
  return np.where(pad, 1e3, student), np.where(pad, -1e3, teacher), mask


def ref_hidden_mse(student, teacher, kernel, bias):
  projected = np.asarray(student, np.float64) @ np.asarray(kernel, np.float64) + bias
  return ((projected - np.asarray(teacher, np.float64)) ** 2).mean(-1)


def test_term_matches_the_float64_reference_padding_included():
  student, teacher, mask = _hidden(0)
  objective = build_objective({'hidden_mse': {'weight': 1.0, 'student_tap': 'block0',
                                              'teacher_tap': 'block1'}})
  s_out = Outputs(jnp.zeros((B, L, 3)), {'block0': jnp.asarray(student)})
  t_out = [Outputs(jnp.zeros((B, L, 3)), {'block1': jnp.asarray(teacher)})]
  params, state = objective.init(jax.random.key(0), s_out, t_out)
  assert params['hidden_mse']['kernel'].shape == (DS, DT)
  total, components, _ = jax.jit(objective.apply)(
      Context(s_out, t_out, {'mask': mask}, params=params, state=state))
  p = params['hidden_mse']
  want = ref_hidden_mse(student, teacher, p['kernel'], p['bias'])
  assert total.shape == (B, L)
  valid = mask > 0
  np.testing.assert_allclose(np.asarray(components['hidden_mse'])[valid], want[valid],
                             rtol=1e-5)
  np.testing.assert_allclose(token_mean64(total, mask), token_mean64(want, mask), rtol=1e-5)


def test_gradients_dtypes_and_shape_errors():
  student, teacher, _ = _hidden(1)
  with jax.enable_x64(True):
    s64 = np.random.default_rng(2).normal(size=(2, 3, 4))
    t64 = np.random.default_rng(3).normal(size=(2, 3, 4))
    np.testing.assert_allclose(hidden_mse_loss(s64, t64), ((s64 - t64) ** 2).mean(-1),
                               rtol=1e-12)
    check_grads(hidden_mse_loss, (s64, t64), order=2, modes=('rev',))
  assert hidden_mse_loss(jnp.ones((2, 3), jnp.bfloat16), jnp.ones((2, 3))).dtype == jnp.float32
  np.testing.assert_array_equal(hidden_mse_loss(teacher, teacher), 0.0)
  with pytest.raises(ValueError, match='differ'):
    hidden_mse_loss(student, teacher)
