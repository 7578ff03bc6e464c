"""Tests of jaxkd.losses.methods.cc against independent NumPy float64 references."""
import jax
import numpy as np
import pytest

from jaxkd.losses import cc_loss
from relation_refs import _features, _S_SHAPE, _T_SHAPE, _unit, ref_cc


@pytest.mark.parametrize('gamma, order', [(1.0, 1), (0.25, 3)])
def test_cc_loss_gamma_and_order(gamma, order):
  student, teacher = _features(2, _S_SHAPE), _features(3, _T_SHAPE)
  # gamma may be traced (e.g. from a schedule); order is static.
  fn = jax.jit(cc_loss, static_argnames='order')
  got = fn(student, teacher, gamma=gamma, order=order)
  np.testing.assert_allclose(got, ref_cc(student, teacher, gamma, order), rtol=1e-5)


def test_cc_loss_high_order_approaches_the_gaussian_rbf():
  # On unit vectors the Taylor series converges to exp(-gamma ||x - y||^2).
  student, teacher = _features(4, _S_SHAPE), _features(5, _T_SHAPE)
  rbf = lambda x, y: np.exp(-0.4 * np.sum((_unit(x) - _unit(y))**2))
  with jax.enable_x64(True):
    fn = jax.jit(lambda s, t: cc_loss(s, t, gamma=0.4, order=14))
    got = fn(np.float64(student), np.float64(teacher))
    np.testing.assert_allclose(got, ref_cc(student, teacher, 0, 0, kernel=rbf), rtol=1e-9)
