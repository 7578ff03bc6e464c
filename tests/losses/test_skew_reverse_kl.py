"""DistiLLM's skew reverse KL (jaxkd.losses.methods.skew_reverse_kl) against NumPy float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxkd.losses import (Context, LOSSES, Outputs, build_objective, reverse_kl_loss,
                          skew_reverse_kl_loss)
from logit_refs import ref_skew_kl
from sequence_refs import check_per_position, sequence_case, token_mean64


def ref_skew_reverse_kl(student, teacher, skew, temperature=1.0):
  """``T^2 KL(p_s || a p_s + (1 - a) p_t)``: the skew KL with the roles swapped."""
  return ref_skew_kl(teacher, student, skew, temperature)


@pytest.mark.parametrize('skew,temperature', [(0.1, 1.0), (0.5, 3.0), (0.0, 1.0)])
def test_matches_the_float64_reference_per_position_padding_included(skew, temperature):
  check_per_position(skew_reverse_kl_loss, ref_skew_reverse_kl, 4, skew=skew,
                     temperature=temperature)


def test_edge_cases():
  student, teacher, _, _ = sequence_case(5)
  # Finite (at most -log skew) where the teacher gives a class no mass at all.
  teacher_zero = np.where(np.arange(11) == 0, -np.inf, teacher).astype(np.float32)
  bounded = skew_reverse_kl_loss(student, teacher_zero, skew=0.1)
  assert np.all(np.asarray(bounded) <= -np.log(0.1) + 1e-5)
  np.testing.assert_allclose(skew_reverse_kl_loss(student, student), 0.0, atol=1e-6)
  np.testing.assert_allclose(skew_reverse_kl_loss(student, teacher, skew=0.0, temperature=2.0),
                             reverse_kl_loss(student, teacher, temperature=2.0),
                             rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='skew'):
    LOSSES['skew_reverse_kl'](skew=1.0)


def test_gradients_and_dtypes():
  student, teacher, _, _ = sequence_case(6, (2, 3, 5), scale=1.0, extreme=False)
  with jax.enable_x64(True):
    s64, t64 = student.astype(np.float64), teacher.astype(np.float64)
    np.testing.assert_allclose(skew_reverse_kl_loss(s64, t64, skew=0.3),
                               ref_skew_reverse_kl(s64, t64, 0.3), rtol=1e-12)
    check_grads(lambda s, t: skew_reverse_kl_loss(s, t, skew=0.3, temperature=2.0),
                (s64, t64), order=2, modes=('rev',), atol=1e-5, rtol=1e-5)
  half = skew_reverse_kl_loss(jnp.asarray(student, jnp.bfloat16),
                              jnp.asarray(teacher, jnp.bfloat16))
  assert half.dtype == jnp.float32


def test_term_by_name_on_sequences():
  student, teacher, labels, mask = sequence_case(7)
  objective = build_objective({'skew_reverse_kl': {'weight': 1.0}})
  _, components, _ = objective.apply(Context(
      Outputs(jnp.asarray(student)), [Outputs(jnp.asarray(teacher))],
      {'label': labels, 'mask': mask}))
  np.testing.assert_allclose(token_mean64(components['skew_reverse_kl'], mask),
                             token_mean64(ref_skew_reverse_kl(student, teacher, 0.1), mask),
                             rtol=2e-5)
