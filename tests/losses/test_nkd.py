"""Tests of jaxkd.losses.methods.nkd against independent NumPy float64 references."""
import numpy as np
from scipy import special

from jaxkd.losses import nkd_loss
from logit_refs import _drop, HAND_LABELS, HAND_TEACHER, softmax64


def test_nkd_is_a_cross_entropy_not_a_divergence():
  # Equal student and teacher: the teacher's weighted entropies, not 0.
  logits, labels = HAND_TEACHER, HAND_LABELS
  got = nkd_loss(logits, logits, labels, temperature=1.0, non_target_weight=1.0)
  p = softmax64(logits)
  entropies = [-p[i, y] * np.log(p[i, y]) + special.entr(softmax64(_drop(logits[i], y))).sum()
               for i, y in enumerate(labels)]
  np.testing.assert_allclose(got, entropies, rtol=1e-5, atol=1e-6)
