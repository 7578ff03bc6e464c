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


def test_dkd_non_target_part_is_exact_at_logits_of_1e4():
  """Hardening II: NCKD was 9995.757 against 10000 exact at logits of 1e4 (the non-target
  log-softmax formed without subtracting the maximum)."""
  student = np.array([[1e4] * 5 + [-1e4] * 5, [1e3, -1e3] * 5], np.float32)
  teacher = np.array([[1e4, -1e4] * 5, [1e3] * 5 + [-1e3] * 5], np.float32)
  labels = np.array([0, 3])
  tckd, nckd = jax.jit(functools.partial(dkd_parts, temperature=1.0))(student, teacher, labels)
  want_tckd, want_nckd = ref_dkd_parts(student, teacher, labels, 1.0)
  np.testing.assert_allclose(want_nckd[0], 10000.0, rtol=1e-7)
  np.testing.assert_allclose(nckd, want_nckd, rtol=2e-7)
  np.testing.assert_allclose(tckd, want_tckd, rtol=2e-7, atol=1e-3)
