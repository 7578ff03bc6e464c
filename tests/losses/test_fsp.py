"""Tests of jaxkd.losses.methods.fsp against independent NumPy float64 references."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.losses import fsp_loss, fsp_matrix
from relation_refs import _all_inputs, _features, all_losses, jit, ref_fsp_loss, ref_fsp_matrix


@pytest.mark.parametrize('first_shape, second_shape', [
    ((2, 4, 4, 3), (2, 4, 4, 5)),
    ((2, 8, 8, 3), (2, 4, 4, 2)),
    ((2, 4, 2, 3), (2, 2, 6, 3)),
], ids=['same', 'first-larger', 'mixed'])
def test_fsp_matrix_matches_reference_and_transposes(first_shape, second_shape):
  first, second = _features(30, first_shape), _features(31, second_shape)
  got = jit(fsp_matrix)(first, second)
  assert got.shape == (2, first_shape[-1], second_shape[-1]) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_fsp_matrix(first, second), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jit(fsp_matrix)(second, first), np.swapaxes(got, 1, 2),
                             rtol=1e-6)


def test_fsp_matrix_hand_made():
  # One example, two positions; first has channels (1, 2) then (3, 4), second one channel.
  first = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], np.float32)  # [1, 1, 2, 2]
  second = np.array([[[[10.0], [20.0]]]], np.float32)  # [1, 1, 2, 1]
  np.testing.assert_allclose(jit(fsp_matrix)(first, second), [[[35.0], [50.0]]], rtol=1e-6)


def test_fsp_loss_matches_reference():
  shapes = [(3, 8, 8, 2), (3, 4, 4, 3), (3, 4, 4, 4)]
  s = [_features(32 + i, shape) for i, shape in enumerate(shapes)]
  t = [_features(40 + i, shape) for i, shape in enumerate(shapes)]
  student_pairs, teacher_pairs = [(s[0], s[1]), (s[1], s[2])], [(t[0], t[1]), (t[1], t[2])]
  got = jit(fsp_loss)(student_pairs, teacher_pairs)
  assert got.shape == (3,) and got.dtype == jnp.float32
  # The reference sums the pairs' mean squared differences, as RepDistiller does.
  np.testing.assert_allclose(got, ref_fsp_loss(student_pairs, teacher_pairs), rtol=1e-5)
  np.testing.assert_allclose(jit(fsp_loss)(student_pairs, student_pairs), 0.0, atol=1e-12)


def test_fsp_rejects_bad_inputs():
  a, b = _features(50, (2, 4, 4, 3)), _features(51, (2, 4, 4, 5))
  with pytest.raises(ValueError, match='same channel counts'):
    fsp_loss([(a, b)], [(a, a)])
  with pytest.raises(ValueError, match='equally long'):
    fsp_loss([(a, b)], [(a, b), (a, b)])
  with pytest.raises(ValueError, match='non-empty'):
    fsp_loss([], [])
  with pytest.raises(ValueError, match=r'student_pairs\[0\] must be a \(first, second\) pair'):
    fsp_loss([(a, b, a)], [(a, b)])
  with pytest.raises(ValueError, match='whole'):
    fsp_matrix(_features(52, (2, 6, 6, 3)), _features(53, (2, 4, 4, 3)))
  with pytest.raises(ValueError, match='batch size'):
    fsp_matrix(a, _features(54, (3, 4, 4, 3)))
  with pytest.raises(ValueError, match='first must be'):
    fsp_matrix(_features(55, (2, 3)), a)


def test_bfloat16_inputs_give_float32_outputs():
  args = _all_inputs(73)
  args16 = [jnp.asarray(x, jnp.bfloat16) for x in args]
  got = jit(all_losses)(*args16)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, jit(all_losses)(*[x.astype(jnp.float32) for x in args16]),
                             rtol=1e-6)
  np.testing.assert_allclose(got, jit(all_losses)(*args), rtol=5e-2, atol=1e-3)
  assert jit(fsp_matrix)(args16[2], args16[3]).dtype == jnp.float32


def test_fsp_term_accepts_teacher_maps_larger_than_the_students():
  """Hardening II: FSP matrices are [C1, C2] within each side, so the term projects the
  student's channels and pools nothing across sides (it refused a larger teacher map)."""
  from map_refs import run_map_term
  student = {'a': _features(70, (2, 4, 4, 3)), 'b': _features(71, (2, 2, 2, 5))}
  teacher = {'a': _features(72, (2, 8, 8, 3)), 'b': _features(73, (2, 4, 4, 5))}
  got, params = run_map_term('fsp', student, teacher)
  projected = [np.asarray(student[k], np.float64) @ params[f'pair{i}']['kernel'] +
               params[f'pair{i}']['bias'] for i, k in enumerate(student)]
  want = ref_fsp_loss([tuple(projected)], [(teacher['a'], teacher['b'])])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
