"""Properties shared by several relation losses (one test over many methods)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxkd.losses import (cc_loss, fsp_matrix, ickd_loss, nst_loss, pkt_loss, rkd_angle_loss,
                          rkd_distance_loss, rkd_loss, sp_loss)
from relation_refs import (_all_inputs, _features, _LOSS_NAMES, _S_SHAPE, _T_SHAPE, all_losses,
                           cc_default, jit, ref_cc, ref_fsp_matrix, ref_ickd, ref_nst, ref_pkt,
                           ref_rkd_angle, ref_rkd_distance, ref_sp, rkd_default)


@pytest.mark.parametrize('fn, ref', [
    (sp_loss, ref_sp),
    (cc_default, lambda s, t: ref_cc(s, t, 0.4, 2)),
    (rkd_distance_loss, ref_rkd_distance),
    (rkd_angle_loss, ref_rkd_angle),
    (rkd_default, lambda s, t: 25 * ref_rkd_distance(s, t) + 50 * ref_rkd_angle(s, t)),
    (pkt_loss, ref_pkt),
], ids=['sp', 'cc', 'rkd-distance', 'rkd-angle', 'rkd', 'pkt'])
def test_relation_losses_match_reference(fn, ref):
  student, teacher = _features(0, _S_SHAPE), _features(1, _T_SHAPE)
  got = jit(fn)(student, teacher)
  assert got.shape == () and got.dtype == jnp.float32
  want = ref(student, teacher)
  assert want > 0
  np.testing.assert_allclose(got, want, rtol=1e-5)
  with jax.enable_x64(True):
    s64, t64 = np.float64(student), np.float64(teacher)
    got64 = jit(fn)(s64, t64)
    assert got64.dtype == jnp.float64
    np.testing.assert_allclose(got64, ref(s64, t64), rtol=1e-10)


def test_batch_permutation_invariance():
  student, teacher = _features(6, _S_SHAPE), _features(7, _T_SHAPE)
  perm = np.array([3, 0, 4, 1, 2])
  # The relations permute with the batch and the losses sum over all of them: unchanged.
  for fn in [sp_loss, cc_default, rkd_default, pkt_loss]:
    np.testing.assert_allclose(jit(fn)(student[perm], teacher[perm]), jit(fn)(student, teacher),
                               rtol=1e-5)


def test_relation_losses_zero_for_identical_inputs():
  features = _features(15, _S_SHAPE)
  flat = features.reshape(_T_SHAPE)  # the same features, flattened
  for fn in [sp_loss, cc_default, rkd_default, pkt_loss]:
    np.testing.assert_allclose(jit(fn)(features, flat), 0.0, atol=1e-7)
  # They compare directions or normalised distances: positive rescaling is free.
  for fn in [sp_loss, cc_default, rkd_default, pkt_loss]:
    np.testing.assert_allclose(jit(fn)(features, 4.0 * flat), 0.0, atol=1e-6)


def test_relation_losses_reject_bad_inputs():
  s = _features(16, (4, 3))
  for fn in [sp_loss, cc_default, rkd_distance_loss, rkd_angle_loss, rkd_default, pkt_loss]:
    with pytest.raises(ValueError, match='batch size'):
      fn(s, _features(17, (5, 3)))
    with pytest.raises(ValueError, match='at least 2'):
      fn(s[:1], s[:1])
    with pytest.raises(ValueError, match='scalar'):
      fn(np.float32(1.0), np.float32(1.0))
  with pytest.raises(ValueError, match='gamma must be > 0, got 0'):
    cc_loss(s, s, gamma=0, order=2)
  for order in [0, 1.5, True]:
    with pytest.raises(ValueError, match='order must be a Python int >= 1'):
      cc_loss(s, s, gamma=0.4, order=order)
  with pytest.raises(ValueError, match='distance_weight must be >= 0, got -1'):
    rkd_loss(s, s, distance_weight=-1, angle_weight=50)
  with pytest.raises(ValueError, match='angle_weight must be >= 0'):
    rkd_loss(s, s, distance_weight=25, angle_weight=float('nan'))


def test_ickd_and_nst_reject_bad_shapes():
  with pytest.raises(ValueError, match='student_features shape .* teacher_features shape'):
    ickd_loss(_features(64, (2, 4, 4, 3)), _features(65, (2, 4, 4, 5)))
  with pytest.raises(ValueError, match='student_features must be'):
    ickd_loss(_features(64, (2, 3)), _features(65, (2, 3)))
  with pytest.raises(ValueError, match='whole'):
    nst_loss(_features(66, (2, 6, 6, 3)), _features(67, (2, 4, 4, 3)))
  with pytest.raises(ValueError, match='batch size'):
    nst_loss(_features(66, (2, 4, 4, 3)), _features(67, (3, 4, 4, 3)))
  with pytest.raises(ValueError, match='teacher_features must be'):
    nst_loss(_features(66, (2, 4, 4, 3)), _features(67, (2, 3)))


def test_check_grads_float64():
  with jax.enable_x64(True):
    args = [np.float64(x) for x in _all_inputs(70)]
    values = jit(all_losses)(*args)
    assert values.dtype == jnp.float64 and np.all(values > 0), dict(zip(_LOSS_NAMES, values))
    check_grads(jit(all_losses), args, order=1, modes=('rev',), atol=1e-5, rtol=1e-5)


def test_gradients_finite_with_zero_and_duplicate_examples():
  args = _all_inputs(71)
  for x in args:
    x[0] = 0.0  # an all-zero example (zero norms, zero Gram rows)
  args[0][1] = args[0][2]  # two coincident student examples (zero RKD differences)
  args[1][3] = args[1][2]  # and two coincident teacher examples elsewhere
  with jax.enable_x64(True):  # reuses test_check_grads_float64's compiled VJP
    values, vjp = jax.vjp(jit(all_losses), *[np.float64(x) for x in args])
    assert np.all(np.isfinite(values)), dict(zip(_LOSS_NAMES, values))
    # A NaN or infinity in any loss's gradient would show in the gradient of the sum.
    for g in vjp(jnp.ones(len(_LOSS_NAMES))):
      assert np.all(np.isfinite(g))


def test_map_losses_float64_match_reference():
  with jax.enable_x64(True):
    rng = np.random.default_rng(75)
    s, t = rng.standard_normal((2, 4, 4, 3)), rng.standard_normal((2, 2, 2, 5))
    np.testing.assert_allclose(jit(nst_loss)(s, t), ref_nst(s, t), rtol=1e-10)
    np.testing.assert_allclose(jit(fsp_matrix)(s, t), ref_fsp_matrix(s, t), rtol=1e-10)
    s2 = rng.standard_normal((2, 4, 4, 3))
    np.testing.assert_allclose(jit(ickd_loss)(s, s2), ref_ickd(s, s2), rtol=1e-10)
