"""Tests of jaxkd.losses.methods.ickd against independent NumPy float64 references."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.losses import ickd_loss
from jaxkd.losses.methods import ickd as ickd_method
from relation_refs import _features, _unit, jit, ref_channel_gram, ref_ickd


def test_ickd_matches_reference():
  student, teacher = _features(60, (3, 4, 5, 6)), _features(61, (3, 4, 5, 6))
  got = jit(ickd_loss)(student, teacher)
  assert got.shape == (3,) and got.dtype == jnp.float32
  want = ref_ickd(student, teacher)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # The authors' (G_diff**2).view(b, -1).sum() / (c * b) is the batch mean.
  np.testing.assert_allclose(jnp.mean(got), np.mean(want), rtol=1e-5)


def test_ickd_gram_symmetry_and_zero_cases():
  student, teacher = _features(62, (3, 4, 5, 6)), _features(63, (3, 4, 5, 6))
  gram = jax.jit(ickd_method._channel_correlation)(student.reshape(3, 20, 6))
  ref = np.stack([np.stack([_unit(r) for r in ref_channel_gram(s)]) for s in student])
  np.testing.assert_allclose(gram, ref, rtol=1e-5, atol=1e-7)
  # Symmetric Gram: the row-normalised matrix is D^-1 G, so D G~ is symmetric.
  norms = np.stack([np.linalg.norm(ref_channel_gram(s), axis=-1) for s in student])
  rescaled = np.asarray(gram) * norms[:, :, None]
  np.testing.assert_allclose(rescaled, np.swapaxes(rescaled, 1, 2), rtol=1e-5, atol=1e-5)
  ickd = jit(ickd_loss)
  np.testing.assert_allclose(ickd(student, student), 0.0, atol=1e-12)
  # A consistent channel permutation on both sides, or swapping the sides, changes nothing.
  perm = np.array([3, 0, 5, 4, 1, 2])
  np.testing.assert_allclose(ickd(student[..., perm], teacher[..., perm]),
                             ickd(student, teacher), rtol=1e-5)
  np.testing.assert_allclose(ickd(teacher, student), ickd(student, teacher), rtol=1e-6)


def test_ickd_term_embeds_with_batch_norm_and_pools_neither_map():
  """Hardening II: the authors' `Embed` is a 1x1 convolution then a BatchNorm (on the batch's
  statistics in training); each side's Gram matrix is over its own positions, so a teacher
  map larger (or smaller) than the student's is neither refused nor pooled."""
  from map_refs import ref_conv_batch_norm, run_map_term
  for student_shape, teacher_shape in [((4, 3, 3, 5), (4, 6, 6, 7)),
                                       ((4, 6, 6, 5), (4, 3, 3, 7))]:
    student, teacher = _features(64, student_shape), _features(65, teacher_shape)
    got, params = run_map_term('ickd', {'s': student}, {'t': teacher})
    p = params['pair0']
    embedded = ref_conv_batch_norm(student, p['conv']['kernel'], p['bn_scale'], p['bn_bias'])
    np.testing.assert_allclose(got, ref_ickd(embedded, teacher), rtol=2e-5, atol=1e-7)
