"""DistiLLM's skew KL (jaxkd.losses.methods.skew_kl) against a NumPy float64 reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxkd.losses import Context, LOSSES, Outputs, build_objective, kd_loss, skew_kl_loss
from logit_refs import ref_skew_kl
from sequence_refs import check_per_position, sequence_case, token_mean64


@pytest.mark.parametrize('skew,temperature', [(0.1, 1.0), (0.3, 2.0), (0.0, 1.5)])
def test_matches_the_float64_reference_per_position_padding_included(skew, temperature):
  check_per_position(skew_kl_loss, ref_skew_kl, 0, skew=skew, temperature=temperature)


def test_edge_cases():
  student, teacher, _, _ = sequence_case(1)
  np.testing.assert_allclose(skew_kl_loss(teacher, teacher), 0.0, atol=1e-6)
  np.testing.assert_allclose(skew_kl_loss(student, teacher, skew=0.0, temperature=2.0),
                             kd_loss(student, teacher, temperature=2.0), rtol=1e-4, atol=1e-5)
  # The mixture bounds the loss by -log(skew), even where the student gives a class ~0.
  far = skew_kl_loss(-teacher * 100, teacher, skew=0.1)
  assert np.all(np.asarray(far) <= -np.log(0.1) + 1e-5)
  with pytest.raises(ValueError, match='skew'):
    skew_kl_loss(student, teacher, skew=1.0)
  with pytest.raises(ValueError, match='skew'):
    LOSSES['skew_kl'](skew=-0.1)


def test_gradients_and_dtypes():
  student, teacher, _, _ = sequence_case(2, (2, 3, 5), scale=1.0, extreme=False)
  with jax.enable_x64(True):
    s64, t64 = student.astype(np.float64), teacher.astype(np.float64)
    np.testing.assert_allclose(skew_kl_loss(s64, t64, skew=0.2), ref_skew_kl(s64, t64, 0.2),
                               rtol=1e-12)
    check_grads(lambda s, t: skew_kl_loss(s, t, skew=0.2, temperature=2.0), (s64, t64),
                order=2, modes=('rev',), atol=1e-5, rtol=1e-5)
  half = skew_kl_loss(jnp.asarray(student, jnp.bfloat16), jnp.asarray(teacher, jnp.bfloat16))
  assert half.dtype == jnp.float32


def test_term_by_name_on_sequences():
  student, teacher, labels, mask = sequence_case(3)
  objective = build_objective({'skew_kl': {'weight': 1.0, 'skew': 0.2}})
  total, components, _ = objective.apply(Context(
      Outputs(jnp.asarray(student)), [Outputs(jnp.asarray(teacher))],
      {'label': labels, 'mask': mask}))
  assert total.shape == mask.shape
  want = ref_skew_kl(student, teacher, 0.2)
  np.testing.assert_allclose(token_mean64(components['skew_kl'], mask),
                             token_mean64(want, mask), rtol=2e-5)
