"""Tests of jaxkd.losses.methods.jsd against independent NumPy float64 references."""
import numpy as np
import pytest

from jaxkd.losses import jsd_loss
from logit_refs import CASES, ref_jsd


@pytest.mark.parametrize('mixing_weight', [1e-4, 1e-2, 0.99, 1 - 1e-4])
def test_jsd_near_the_ends_stays_accurate_in_float32(mixing_weight):
  # The loss is O(w) (or O(1 - w)) there; forming log(m / p) directly keeps its relative
  # error at float32 level instead of eps / w. The reference uses w as float32 rounds it.
  student, teacher, _ = CASES['random']
  got = jsd_loss(student, teacher, temperature=2.0, mixing_weight=mixing_weight)
  want = ref_jsd(student, teacher, 2.0, float(np.float32(mixing_weight)))
  np.testing.assert_allclose(got, want, rtol=2e-5)


def test_symmetric_jsd_is_symmetric_and_bounded():
  student, teacher, _ = CASES['hand']
  forward = jsd_loss(student, teacher, temperature=2.0, mixing_weight=0.5)
  backward = jsd_loss(teacher, student, temperature=2.0, mixing_weight=0.5)
  np.testing.assert_allclose(forward, backward, rtol=1e-5)
  assert np.all(np.asarray(forward) <= 4.0 * np.log(2.0))
  # Swapping student and teacher is the same as swapping the mixture weights.
  np.testing.assert_allclose(jsd_loss(student, teacher, temperature=2.0, mixing_weight=0.2),
                             jsd_loss(teacher, student, temperature=2.0, mixing_weight=0.8),
                             rtol=1e-5)
