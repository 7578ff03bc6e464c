"""Tests of jaxkd.losses.methods.jsd against independent NumPy float64 references."""
import jax
import numpy as np
import pytest

from jaxkd.losses import build_objective, jsd_loss
from objectives import on_logits
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
  assert np.all(np.asarray(forward) <= np.log(2.0))  # no T**2: bounded by log 2 at any T
  # Swapping student and teacher is the same as swapping the mixture weights.
  np.testing.assert_allclose(jsd_loss(student, teacher, temperature=2.0, mixing_weight=0.2),
                             jsd_loss(teacher, student, temperature=2.0, mixing_weight=0.8),
                             rtol=1e-5)


def test_jsd_default_is_the_gkd_papers_without_temperature_squared():
  """Hardening II: the default was T**2 times the GKD paper's (and TRL's) value; the factor
  is an explicit option now, also on the term."""
  student, teacher, labels = CASES['random']
  plain = jax.jit(lambda s, t: jsd_loss(s, t, temperature=3.0, mixing_weight=0.3))(
      student, teacher)
  np.testing.assert_allclose(plain, ref_jsd(student, teacher, 3.0, 0.3), rtol=1e-5)
  scaled = jsd_loss(student, teacher, temperature=3.0, mixing_weight=0.3,
                    scale_by_temperature_squared=True)
  np.testing.assert_allclose(scaled, ref_jsd(student, teacher, 3.0, 0.3, scale=True), rtol=1e-5)
  for options, want in [({}, plain), ({'scale_by_temperature_squared': True}, scaled)]:
    objective = build_objective({'jsd': {'weight': 1.0, 'temperature': 3.0,
                                         'mixing_weight': 0.3, **options}})
    _, components = on_logits(objective)(student, labels, teacher, step=0)
    np.testing.assert_allclose(components['jsd'], want, rtol=1e-6)
