"""Tests of jaxkd.losses.numerics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.losses import standardize_logits
from logit_refs import _extreme, _random, CASES, HAND_TEACHER, ref_standardize


@pytest.mark.parametrize('case', CASES)
def test_standardize_logits_matches_reference(case):
  logits = np.concatenate(CASES[case][:2])
  got = jax.jit(standardize_logits)(logits)
  assert got.shape == logits.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_standardize(logits), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(standardize_logits(logits, eps=0.5), ref_standardize(logits, 0.5),
                             rtol=1e-5, atol=1e-6)


def test_standardize_logits_properties():
  logits = _random(7, (3, 6))
  z = np.asarray(standardize_logits(logits, eps=0.0))
  np.testing.assert_allclose(z.mean(-1), 0.0, atol=1e-6)
  np.testing.assert_allclose(z.std(-1, ddof=1), 1.0, rtol=1e-5)  # unbiased, as torch.std
  np.testing.assert_allclose(standardize_logits(3.0 * logits - 7.0), standardize_logits(logits),
                             rtol=1e-4, atol=1e-5)
  # Equal logits: zeros, with finite gradients.
  flat = np.full((2, 4), 1.5, np.float32)
  np.testing.assert_array_equal(standardize_logits(flat), 0.0)
  grad = jax.grad(lambda x: jnp.sum(standardize_logits(x) * jnp.arange(4.0)))(flat)
  assert np.all(np.isfinite(grad))


def test_standardize_extreme_logits_finite_gradients():
  student, _, _ = _extreme()
  grad = jax.grad(lambda x: jnp.mean(standardize_logits(x)**2))(student)
  assert np.all(np.isfinite(grad))


def test_bfloat16_standardize_gives_float32():
  assert standardize_logits(jnp.asarray(HAND_TEACHER, jnp.bfloat16)).dtype == jnp.float32
