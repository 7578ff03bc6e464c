"""Tests of jaxkd.losses.pooling."""
import jax
import numpy as np
import pytest

from jaxkd.losses import adaptive_avg_pool
from jaxkd.losses.pooling import pool_student_down, pool_teacher_down
from map_refs import _features, ref_adaptive_pool


def test_adaptive_avg_pool_matches_reference_and_torch_windows():
  x = _features(30, (2, 7, 6, 3))
  for out in [(4, 3), (1, 1), (7, 6), (3, 4), (8, 12)]:  # overlapping, global, identity, up
    got = jax.jit(adaptive_avg_pool, static_argnums=(1, 2))(x, *out)
    np.testing.assert_allclose(got, ref_adaptive_pool(x, *out), rtol=1e-5, atol=1e-6)
  # 7 -> 4: PyTorch's windows [0, 2), [1, 4), [3, 6), [5, 7).
  ramp = np.arange(7.0, dtype=np.float32).reshape(1, 7, 1, 1)
  pool = jax.jit(adaptive_avg_pool, static_argnums=(1, 2))
  np.testing.assert_allclose(pool(ramp, 4, 1).ravel(), [0.5, 2.0, 4.0, 5.5])
  with pytest.raises(ValueError, match='height'):
    adaptive_avg_pool(x, 0, 2)


def test_pool_teacher_down_is_adaptive_pooling_onto_the_smaller_size():
  """Hardening II: a teacher map larger than the student's is pooled down (PyTorch's
  adaptive average pooling, as RepDistiller's VIDLoss and mdistiller's OFD); a smaller axis
  stays, and the student is pooled by whole factors where it is the larger."""
  teacher, student = _features(80, (2, 7, 3, 4)), _features(81, (2, 3, 6, 5))
  np.testing.assert_allclose(pool_teacher_down(teacher, student.shape),
                             ref_adaptive_pool(teacher, 3, 3), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(pool_student_down(student, teacher.shape, 'vid', 's'),
                             ref_adaptive_pool(student, 3, 3), rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match='integer multiple'):
    pool_student_down(_features(82, (2, 7, 7, 5)), (2, 3, 3, 4), 'vid', 's')
