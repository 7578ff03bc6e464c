"""Tests of jaxkd.losses.methods.dist against independent NumPy float64 references."""
import functools

import jax
import numpy as np

from jaxkd.losses import dist_inter_loss, dist_loss
from logit_refs import CASES, HAND_STUDENT, ref_dist_inter, ref_dist_intra


def test_dist_loss_combines_mean_inter_and_intra():
  student, teacher, _ = CASES['random']
  got = jax.jit(functools.partial(dist_loss, temperature=2.0, inter_weight=0.5,
                                  intra_weight=2.0))(student, teacher)
  want = 0.5 * ref_dist_inter(student, teacher, 2.0).mean() + 2.0 * ref_dist_intra(
      student, teacher, 2.0)
  assert got.shape == ()
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_dist_inter_uniform_row_and_reversed_ranking():
  # Inter relation: only the ranking and spacing of classes matter; a uniform row's
  # correlation is 0 by the authors' eps (loss T**2), not NaN.
  student, teacher, _ = CASES['hand']
  got = np.asarray(dist_inter_loss(student, teacher, temperature=1.0))
  np.testing.assert_allclose(got[1], 1.0, rtol=1e-6)
  reversed_rows = dist_inter_loss(HAND_STUDENT[:1], HAND_STUDENT[:1, ::-1], temperature=1.0)
  assert 1.5 < float(reversed_rows[0]) <= 2.0


def test_dist_gradient_at_a_uniform_student_matches_float64():
  """Hardening II: a uniform student (zero-initialised head) has a ~1e6 gradient that float32
  got 44-78 % wrong (the mean of ten 0.1f is not 0.1f). Reference: central differences of the
  float64 NumPy loss with a step small enough that the centred student stays far below the
  1e-8 eps (both sides of the zero vector, as the zero-gradient norm does)."""
  teacher = np.random.default_rng(5).normal(size=(4, 10)) * 2
  student = np.zeros((4, 10))
  ref = lambda s: ref_dist_inter(s, teacher, 1.0).mean() + ref_dist_intra(s, teacher, 1.0)
  step = 1e-11
  want = np.zeros_like(student)
  for index in np.ndindex(*student.shape):
    delta = np.zeros_like(student)
    delta[index] = step
    want[index] = (ref(student + delta) - ref(student - delta)) / (2 * step)
  loss = functools.partial(dist_loss, temperature=1.0, inter_weight=1.0, intra_weight=1.0)
  got = jax.jit(jax.grad(loss))(student.astype(np.float32), teacher.astype(np.float32))
  assert np.abs(want).max() > 1e5
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
  # The uniform row's inter-class loss is T**2 exactly (correlation 0).
  np.testing.assert_array_equal(dist_inter_loss(student.astype(np.float32), teacher,
                                                temperature=1.0), 1.0)
