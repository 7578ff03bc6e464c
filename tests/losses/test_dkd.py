"""Tests of jaxkd.losses.methods.dkd against independent NumPy float64 references."""
import functools

import jax
import numpy as np
import pytest

from jaxkd.losses import dkd_loss, dkd_parts
from logit_refs import CASES, ref_dkd_parts


@pytest.mark.parametrize('temperature', [0.5, 1.0, 4.0])
def test_dkd_parts_match_reference(temperature):
  student, teacher, labels = CASES['random']
  tckd, nckd = jax.jit(functools.partial(dkd_parts, temperature=temperature))(
      student, teacher, labels)
  want_tckd, want_nckd = ref_dkd_parts(student, teacher, labels, temperature)
  # A KL's float32 error is absolute (log-ratios of O(1) logs), and T**2 scales it.
  atol = 1e-6 * temperature**2
  np.testing.assert_allclose(tckd, want_tckd, rtol=1e-5, atol=atol)
  np.testing.assert_allclose(nckd, want_nckd, rtol=1e-5, atol=atol)


def test_dkd_loss_is_weighted_sum_of_parts():
  student, teacher, labels = CASES['hand']
  tckd, nckd = dkd_parts(student, teacher, labels, temperature=4.0)
  got = dkd_loss(student, teacher, labels, temperature=4.0, target_weight=0.5,
                 non_target_weight=8.0)
  np.testing.assert_allclose(got, 0.5 * tckd + 8.0 * nckd, rtol=1e-6)
