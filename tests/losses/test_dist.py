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
