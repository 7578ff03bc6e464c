"""Tests of jaxkd.losses.methods.nst against independent NumPy float64 references."""
import jax.numpy as jnp
import numpy as np

from jaxkd.losses import nst_loss
from feature_refs import pooling_cases
from relation_refs import _features, jit, ref_nst


@pooling_cases(3, channels=[(3, 6), (3, 5), (4, 2), (3, 3)])
def test_nst_matches_reference(student_shape, teacher_shape):
  student, teacher = _features(20, student_shape), _features(21, teacher_shape)
  got = jit(nst_loss)(student, teacher)
  assert got.shape == (3,) and got.dtype == jnp.float32
  want = ref_nst(student, teacher)
  assert np.all(want > 0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_nst_zero_cases_and_symmetry():
  nst = jit(nst_loss)
  features = _features(22, (3, 4, 4, 3))
  np.testing.assert_allclose(nst(features, features), 0.0, atol=1e-6)
  # Channels are normalised samples: rescaling them, reordering or repeating them does not
  # change the distribution the MMD compares.
  teacher = np.concatenate([3.0 * features[..., ::-1], 0.5 * features], axis=-1)
  np.testing.assert_allclose(nst(features, teacher), 0.0, atol=1e-6)
  other = _features(23, (3, 4, 4, 3))
  np.testing.assert_allclose(nst(features, other), nst(other, features), rtol=1e-6)
