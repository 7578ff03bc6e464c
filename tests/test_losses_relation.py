"""Relation and feature-statistics losses against independent NumPy float64 references."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxkd.losses.methods import ickd as ickd_method, rkd
from jaxkd.losses import (cc_loss, pkt_loss, rkd_angle_loss, rkd_distance_loss,
                                           rkd_loss, sp_loss)
from jaxkd.losses import fsp_loss, fsp_matrix, ickd_loss, nst_loss

# ---------------------------------------------------------------- float64 references
# Written with loops over examples, pairs and channels, NHWC as our models produce.


def _flat(x):
  x = np.asarray(x, np.float64)
  return x.reshape(x.shape[0], -1)


def _unit(v, eps=1e-12):
  return v / max(np.sqrt(np.sum(v * v)), eps)


def _huber(x):
  return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def ref_sp(student, teacher):
  s, t = _flat(student), _flat(teacher)
  b = len(s)
  total = 0.0
  for i in range(b):
    g_s = _unit(np.array([np.dot(s[i], s[j]) for j in range(b)]))
    g_t = _unit(np.array([np.dot(t[i], t[j]) for j in range(b)]))
    total += np.sum((g_s - g_t)**2)
  return total / b**2


def ref_cc_kernel(x, y, gamma, order):
  c = np.dot(_unit(x), _unit(y))
  return math.exp(-2 * gamma) * sum((2 * gamma)**p / math.factorial(p) * c**p
                                    for p in range(order + 1))


def ref_cc(student, teacher, gamma, order, kernel=None):
  kernel = kernel or (lambda x, y: ref_cc_kernel(x, y, gamma, order))
  s, t = _flat(student), _flat(teacher)
  b = len(s)
  return sum((kernel(s[i], s[j]) - kernel(t[i], t[j]))**2 for i in range(b)
             for j in range(b)) / b**2


def _distances(e):
  b = len(e)
  d = np.zeros((b, b))
  for i in range(b):
    for j in range(b):
      if i != j:
        d[i, j] = np.sqrt(max(np.sum((e[i] - e[j])**2), 1e-12))
  return d / (d.sum() / (b * (b - 1)))


def ref_rkd_distance(student, teacher):
  d_s, d_t = _distances(_flat(student)), _distances(_flat(teacher))
  return np.mean([_huber(a - b) for a, b in zip(d_s.ravel(), d_t.ravel())])


def _cosines(e):
  b = len(e)
  out = np.zeros((b, b, b))
  for i in range(b):
    for j in range(b):
      for k in range(b):
        out[i, j, k] = np.dot(_unit(e[j] - e[i]), _unit(e[k] - e[i]))
  return out


def ref_rkd_angle(student, teacher):
  a_s, a_t = _cosines(_flat(student)), _cosines(_flat(teacher))
  return np.mean([_huber(a - b) for a, b in zip(a_s.ravel(), a_t.ravel())])


def ref_pkt(student, teacher, eps=1e-7):

  def probs(x):
    b = len(x)
    unit = [v / (np.sqrt(np.sum(v * v)) + eps) for v in x]
    k = np.array([[(np.dot(unit[i], unit[j]) + 1) / 2 for j in range(b)] for i in range(b)])
    return k / k.sum(axis=1, keepdims=True)

  p_s, p_t = probs(_flat(student)), probs(_flat(teacher))
  b = len(p_s)
  return sum(p_t[i, j] * np.log((p_t[i, j] + eps) / (p_s[i, j] + eps)) for i in range(b)
             for j in range(b)) / b**2


def ref_block_mean(features, out_shape):
  """Average pooling of [B, H, W, C] to [B, *out_shape, C] by whole factors."""
  features = np.asarray(features, np.float64)
  (out_h, out_w), (_, h, w, c) = out_shape, features.shape
  kh, kw = h // out_h, w // out_w
  out = np.zeros((features.shape[0], out_h, out_w, c))
  for i in range(out_h):
    for j in range(out_w):
      out[:, i, j] = features[:, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].mean(axis=(1, 2))
  return out


def _pool_pair(a, b):
  common = (min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2]))
  return ref_block_mean(a, common), ref_block_mean(b, common)


def ref_nst(student, teacher):
  student, teacher = _pool_pair(student, teacher)
  out = []
  for s, t in zip(student, teacher):  # one example, [H, W, C]
    s_ch = [_unit(s[..., c].ravel()) for c in range(s.shape[-1])]
    t_ch = [_unit(t[..., c].ravel()) for c in range(t.shape[-1])]
    k = lambda xs, ys: np.mean([np.dot(x, y)**2 for x in xs for y in ys])
    out.append(k(t_ch, t_ch) + k(s_ch, s_ch) - 2 * k(s_ch, t_ch))
  return np.array(out)


def ref_fsp_matrix(first, second):
  first, second = _pool_pair(first, second)
  b, h, w, c1 = first.shape
  c2 = second.shape[-1]
  g = np.zeros((b, c1, c2))
  for n in range(b):
    for i in range(c1):
      for j in range(c2):
        g[n, i, j] = np.sum(first[n, :, :, i] * second[n, :, :, j]) / (h * w)
  return g


def ref_fsp_loss(student_pairs, teacher_pairs):
  total = 0.0
  for (s1, s2), (t1, t2) in zip(student_pairs, teacher_pairs):
    diff = ref_fsp_matrix(s1, s2) - ref_fsp_matrix(t1, t2)
    total = total + np.mean(diff**2, axis=(1, 2))
  return total


def ref_channel_gram(features):
  """[C, C] Gram of one example's [H, W, C] map over its positions, by loops."""
  c = features.shape[-1]
  return np.array([[np.sum(features[..., i] * features[..., j]) for j in range(c)]
                   for i in range(c)])


def ref_ickd(student, teacher):
  out = []
  for s, t in zip(np.asarray(student, np.float64), np.asarray(teacher, np.float64)):
    g_s, g_t = ref_channel_gram(s), ref_channel_gram(t)
    assert np.allclose(g_s, g_s.T) and np.allclose(g_t, g_t.T)
    diff = np.stack([_unit(r) for r in g_s]) - np.stack([_unit(r) for r in g_t])
    out.append(np.sum(diff**2) / s.shape[-1])
  return np.array(out)


def _features(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def rkd_default(s, t):  # RepDistiller's weights
  return rkd_loss(s, t, distance_weight=25, angle_weight=50)


def cc_default(s, t):  # the paper's gamma and order
  return cc_loss(s, t, gamma=0.4, order=2)


_JITTED = {}


def jit(fn):
  """One jitted wrapper per function, so tests reusing shapes reuse its compilations."""
  if fn not in _JITTED:
    _JITTED[fn] = jax.jit(fn)
  return _JITTED[fn]


# One student/teacher pair of shapes for the batch relations: different feature shapes,
# since only relations are compared, and the teacher a flattened student for equal inputs.
_S_SHAPE, _T_SHAPE = (5, 2, 2, 3), (5, 12)

# ------------------------------------------------------------------------ relation losses


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


def test_batch_permutation_invariance():
  student, teacher = _features(6, _S_SHAPE), _features(7, _T_SHAPE)
  perm = np.array([3, 0, 4, 1, 2])
  # The relations permute with the batch and the losses sum over all of them: unchanged.
  for fn in [sp_loss, cc_default, rkd_default, pkt_loss]:
    np.testing.assert_allclose(jit(fn)(student[perm], teacher[perm]), jit(fn)(student, teacher),
                               rtol=1e-5)


def test_sp_hand_made():
  # Orthogonal student rows: normalised G_s = I. Teacher rows all equal: every entry 1/sqrt(2).
  student = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
  teacher = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)
  h = 1 / np.sqrt(2)
  want = (2 * (1 - h)**2 + 2 * h**2) / 4
  np.testing.assert_allclose(jit(sp_loss)(student, teacher), want, rtol=1e-6)


def test_rkd_scale_invariance():
  student, teacher = _features(9, _S_SHAPE), _features(10, _T_SHAPE)
  rkd = jit(rkd_default)
  base = rkd(student, teacher)
  assert base > 0
  for s_scale, t_scale in [(3.7, 3.7), (0.2, 1.0), (1.0, 11.0)]:
    np.testing.assert_allclose(rkd(s_scale * student, t_scale * teacher), base, rtol=1e-5)
  # Translating either side changes neither distances nor angles.
  np.testing.assert_allclose(rkd(student + 5.0, teacher - 2.0), base, rtol=1e-4)


def test_rkd_hand_made_and_edge_cases():
  # A right isosceles triangle (vertex 0) against an equilateral one.
  student = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
  teacher = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]], np.float32)
  angle, distance = jit(rkd_angle_loss), jit(rkd_distance_loss)
  np.testing.assert_allclose(angle(student, teacher), ref_rkd_angle(student, teacher),
                             rtol=1e-5)
  np.testing.assert_allclose(distance(student, teacher), ref_rkd_distance(student, teacher),
                             rtol=1e-5)
  # Two examples form no triangle, and one pair's normalised distance is 1: both are 0.
  pair_s, pair_t = student[:2], 3.0 * teacher[:2]
  np.testing.assert_allclose(angle(pair_s, pair_t), 0.0, atol=1e-7)
  np.testing.assert_allclose(distance(pair_s, pair_t), 0.0, atol=1e-6)


def np_direct_rkd_angle(student, teacher):
  """The [B, B, D] formulation: normalised differences, then their dot products."""

  def cosines(e):
    d = e[None, :, :] - e[:, None, :]
    norm = np.sqrt(np.sum(d * d, axis=-1, keepdims=True))
    u = np.where(norm > 0, d / np.maximum(norm, 1e-12), 0.0)
    return np.einsum('ijd,ikd->ijk', u, u)

  diff = np.abs(cosines(_flat(student)) - cosines(_flat(teacher)))
  return np.mean(np.where(diff < 1, 0.5 * diff * diff, diff - 0.5))


def jnp_direct_rkd_angle(student, teacher):
  """The same in jnp, differentiable: zero vectors get zero gradient, as F.normalize's."""

  def cosines(e):
    d = e[None, :, :] - e[:, None, :]
    squared = jnp.sum(d * d, axis=-1, keepdims=True)
    positive = squared > 0
    norm = jnp.sqrt(jnp.where(positive, squared, 1.0))
    u = jnp.where(positive, d / jnp.maximum(norm, 1e-12), 0.0)
    return jnp.einsum('ijd,ikd->ijk', u, u, precision=jax.lax.Precision.HIGHEST)

  diff = jnp.abs(cosines(student) - cosines(teacher))
  return jnp.mean(jnp.where(diff < 1, 0.5 * diff * diff, diff - 0.5))


def _angle_batches():
  """Random [7, 5] / [7, 9] embeddings, a batch with equal rows, and one far from 0.

  Far from the origin, squared distances from the Gram matrix lose float32 precision.
  """
  rng = np.random.default_rng(31)
  student, teacher = rng.standard_normal((7, 5)), rng.standard_normal((7, 9))
  dup_s, dup_t = student.copy(), teacher.copy()
  dup_s[4] = dup_s[1]  # two identical rows
  dup_s[5] = dup_s[6] = dup_s[2]  # one row repeated
  dup_t[3] = dup_t[0]  # the teacher's duplicates elsewhere
  dup_t[6] = dup_t[5] = dup_t[2]
  return [(student, teacher), (dup_s, dup_t), (student + 10.0, teacher - 10.0)]


def _assert_gradients_close(got, want, rtol):
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * np.max(np.abs(w)))


def test_rkd_angle_matches_the_direct_formulation_with_equal_rows():
  # The loss works from pairwise squared distances; the direct [B, B, D] formulation is
  # the reference for the value (NumPy) and the gradient (jax.grad of it in jnp).
  grad = jax.jit(jax.value_and_grad(rkd_angle_loss, argnums=(0, 1)))
  grad_direct = jax.jit(jax.value_and_grad(jnp_direct_rkd_angle, argnums=(0, 1)))
  for student, teacher in _angle_batches():
    with jax.enable_x64(True):
      value, grads = grad(student, teacher)
      want_value, want_grads = grad_direct(student, teacher)
      assert value.dtype == jnp.float64
      np.testing.assert_allclose(value, np_direct_rkd_angle(student, teacher), rtol=1e-10)
      np.testing.assert_allclose(want_value, np_direct_rkd_angle(student, teacher), rtol=1e-10)
      _assert_gradients_close(grads, want_grads, 1e-10)
    value32, grads32 = grad(np.float32(student), np.float32(teacher))
    assert value32.dtype == jnp.float32
    np.testing.assert_allclose(value32, np_direct_rkd_angle(student, teacher), rtol=1e-5)
    _assert_gradients_close(grads32, want_grads, 1e-5)
    # Equal rows meet zero differences: the gradient stays finite.
    assert all(np.all(np.isfinite(g)) for g in grads32)


def test_rkd_angle_accelerator_formulation_agrees():
  # GPUs and TPUs take the direct [B, B, D] formulation: the same values and gradients.
  student, teacher = _angle_batches()[0]
  direct = lambda s, t: rkd._smooth_l1(rkd._angles(s), rkd._angles(t))  # noqa: E731
  with jax.enable_x64(True):
    value, grad = jax.jit(jax.value_and_grad(rkd_angle_loss))(student, teacher)
    want_value, want_grad = jax.jit(jax.value_and_grad(direct))(student, teacher)
    np.testing.assert_allclose(value, want_value, rtol=1e-10)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-8, atol=1e-12)


def test_rkd_angle_steps_agree():
  # CPU runs the vertices a few per loop step (step 0: all at once): the same values,
  # whatever the step and remainder.
  student, teacher = _angle_batches()[1]
  value = jax.jit(rkd._angle_huber_sum, static_argnums=2)
  grad = jax.jit(rkd._angle_gradient, static_argnums=3)
  with jax.enable_x64(True):
    want = value(student, teacher, rkd._CPU_ANGLE_ROWS)
    want_grad = grad(student, teacher, 1.0, rkd._CPU_ANGLE_ROWS)
    for step in [0, 1, 3, 7]:
      np.testing.assert_allclose(value(student, teacher, step), want, rtol=1e-12)
      np.testing.assert_allclose(grad(student, teacher, 1.0, step), want_grad, rtol=1e-12,
                                 atol=1e-12 * np.max(np.abs(want_grad)))


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


# ----------------------------------------------------------------------------------- NST


@pytest.mark.parametrize('student_shape, teacher_shape', [
    ((3, 4, 4, 3), (3, 4, 4, 6)),  # same space, different channels
    ((3, 8, 8, 3), (3, 4, 4, 5)),  # student larger: pooled
    ((3, 2, 2, 4), (3, 6, 6, 2)),  # teacher larger: pooled by 3
    ((3, 8, 2, 3), (3, 4, 4, 3)),  # each axis pooled on its own side
], ids=['same', 'student-larger', 'teacher-larger', 'mixed'])
def test_nst_matches_reference(student_shape, teacher_shape):
  student, teacher = _features(20, student_shape), _features(21, teacher_shape)
  got = jit(nst_loss)(student, teacher)
  assert got.shape == (3,) and got.dtype == jnp.float32
  want = ref_nst(student, teacher)
  assert np.all(want > 0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_nst_zero_cases_and_symmetry():
  nst = jit(nst_loss)
  features = _features(22, (3, 4, 4, 3))
  np.testing.assert_allclose(nst(features, features), 0.0, atol=1e-6)
  # Channels are normalised samples: rescaling them, reordering or repeating them does not
  # change the distribution the MMD compares.
  teacher = np.concatenate([3.0 * features[..., ::-1], 0.5 * features], axis=-1)
  np.testing.assert_allclose(nst(features, teacher), 0.0, atol=1e-6)
  other = _features(23, (3, 4, 4, 3))
  np.testing.assert_allclose(nst(features, other), nst(other, features), rtol=1e-6)


# ----------------------------------------------------------------------------------- FSP


@pytest.mark.parametrize('first_shape, second_shape', [
    ((2, 4, 4, 3), (2, 4, 4, 5)),
    ((2, 8, 8, 3), (2, 4, 4, 2)),
    ((2, 4, 2, 3), (2, 2, 6, 3)),
], ids=['same', 'first-larger', 'mixed'])
def test_fsp_matrix_matches_reference_and_transposes(first_shape, second_shape):
  first, second = _features(30, first_shape), _features(31, second_shape)
  got = jit(fsp_matrix)(first, second)
  assert got.shape == (2, first_shape[-1], second_shape[-1]) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_fsp_matrix(first, second), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jit(fsp_matrix)(second, first), np.swapaxes(got, 1, 2),
                             rtol=1e-6)


def test_fsp_matrix_hand_made():
  # One example, two positions; first has channels (1, 2) then (3, 4), second one channel.
  first = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], np.float32)  # [1, 1, 2, 2]
  second = np.array([[[[10.0], [20.0]]]], np.float32)  # [1, 1, 2, 1]
  np.testing.assert_allclose(jit(fsp_matrix)(first, second), [[[35.0], [50.0]]], rtol=1e-6)


def test_fsp_loss_matches_reference():
  shapes = [(3, 8, 8, 2), (3, 4, 4, 3), (3, 4, 4, 4)]
  s = [_features(32 + i, shape) for i, shape in enumerate(shapes)]
  t = [_features(40 + i, shape) for i, shape in enumerate(shapes)]
  student_pairs, teacher_pairs = [(s[0], s[1]), (s[1], s[2])], [(t[0], t[1]), (t[1], t[2])]
  got = jit(fsp_loss)(student_pairs, teacher_pairs)
  assert got.shape == (3,) and got.dtype == jnp.float32
  # The reference sums the pairs' mean squared differences, as RepDistiller does.
  np.testing.assert_allclose(got, ref_fsp_loss(student_pairs, teacher_pairs), rtol=1e-5)
  np.testing.assert_allclose(jit(fsp_loss)(student_pairs, student_pairs), 0.0, atol=1e-12)


def test_fsp_rejects_bad_inputs():
  a, b = _features(50, (2, 4, 4, 3)), _features(51, (2, 4, 4, 5))
  with pytest.raises(ValueError, match='same channel counts'):
    fsp_loss([(a, b)], [(a, a)])
  with pytest.raises(ValueError, match='equally long'):
    fsp_loss([(a, b)], [(a, b), (a, b)])
  with pytest.raises(ValueError, match='non-empty'):
    fsp_loss([], [])
  with pytest.raises(ValueError, match=r'student_pairs\[0\] must be a \(first, second\) pair'):
    fsp_loss([(a, b, a)], [(a, b)])
  with pytest.raises(ValueError, match='whole'):
    fsp_matrix(_features(52, (2, 6, 6, 3)), _features(53, (2, 4, 4, 3)))
  with pytest.raises(ValueError, match='batch size'):
    fsp_matrix(a, _features(54, (3, 4, 4, 3)))
  with pytest.raises(ValueError, match='first must be'):
    fsp_matrix(_features(55, (2, 3)), a)


# ---------------------------------------------------------------------------------- ICKD


def test_ickd_matches_reference():
  student, teacher = _features(60, (3, 4, 5, 6)), _features(61, (3, 4, 5, 6))
  got = jit(ickd_loss)(student, teacher)
  assert got.shape == (3,) and got.dtype == jnp.float32
  want = ref_ickd(student, teacher)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # The authors' (G_diff**2).view(b, -1).sum() / (c * b) is the batch mean.
  np.testing.assert_allclose(jnp.mean(got), np.mean(want), rtol=1e-5)


def test_ickd_gram_symmetry_and_zero_cases():
  student, teacher = _features(62, (3, 4, 5, 6)), _features(63, (3, 4, 5, 6))
  gram = jax.jit(ickd_method._channel_correlation)(student.reshape(3, 20, 6))
  ref = np.stack([np.stack([_unit(r) for r in ref_channel_gram(s)]) for s in student])
  np.testing.assert_allclose(gram, ref, rtol=1e-5, atol=1e-7)
  # Symmetric Gram: the row-normalised matrix is D^-1 G, so D G~ is symmetric.
  norms = np.stack([np.linalg.norm(ref_channel_gram(s), axis=-1) for s in student])
  rescaled = np.asarray(gram) * norms[:, :, None]
  np.testing.assert_allclose(rescaled, np.swapaxes(rescaled, 1, 2), rtol=1e-5, atol=1e-5)
  ickd = jit(ickd_loss)
  np.testing.assert_allclose(ickd(student, student), 0.0, atol=1e-12)
  # A consistent channel permutation on both sides, or swapping the sides, changes nothing.
  perm = np.array([3, 0, 5, 4, 1, 2])
  np.testing.assert_allclose(ickd(student[..., perm], teacher[..., perm]),
                             ickd(student, teacher), rtol=1e-5)
  np.testing.assert_allclose(ickd(teacher, student), ickd(student, teacher), rtol=1e-6)


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


# ------------------------------------------------------------------- gradients, dtypes
# Every loss at once, as one vector, so each check compiles once: a wrong gradient in any
# entry shows up under check_grads' random cotangent. Relations take [4, ...] inputs with
# different student and teacher shapes; maps [3, H, W, C] inputs, pooled where they differ.

_LOSS_NAMES = ['sp', 'cc', 'rkd-distance', 'rkd-angle', 'pkt', 'nst', 'fsp', 'ickd']
_SHAPES = [(4, 2, 2, 2), (4, 5), (3, 4, 4, 3), (3, 2, 2, 3)]


def all_losses(student, teacher, student_map, teacher_map):
  return jnp.stack([
      sp_loss(student, teacher),
      cc_default(student, teacher),
      rkd_distance_loss(student, teacher),
      rkd_angle_loss(student, teacher),
      pkt_loss(student, teacher),
      jnp.mean(nst_loss(student_map, teacher_map)),
      jnp.mean(fsp_loss([(student_map, student_map[..., :2])],
                        [(teacher_map, teacher_map[..., :2])])),
      jnp.mean(ickd_loss(student_map[:, ::2, ::2], teacher_map)),
  ])


def _all_inputs(seed):
  return [_features(seed + i, shape) for i, shape in enumerate(_SHAPES)]


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


def test_bfloat16_inputs_give_float32_outputs():
  args = _all_inputs(73)
  args16 = [jnp.asarray(x, jnp.bfloat16) for x in args]
  got = jit(all_losses)(*args16)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, jit(all_losses)(*[x.astype(jnp.float32) for x in args16]),
                             rtol=1e-6)
  np.testing.assert_allclose(got, jit(all_losses)(*args), rtol=5e-2, atol=1e-3)
  assert jit(fsp_matrix)(args16[2], args16[3]).dtype == jnp.float32


def test_map_losses_float64_match_reference():
  with jax.enable_x64(True):
    rng = np.random.default_rng(75)
    s, t = rng.standard_normal((2, 4, 4, 3)), rng.standard_normal((2, 2, 2, 5))
    np.testing.assert_allclose(jit(nst_loss)(s, t), ref_nst(s, t), rtol=1e-10)
    np.testing.assert_allclose(jit(fsp_matrix)(s, t), ref_fsp_matrix(s, t), rtol=1e-10)
    s2 = rng.standard_normal((2, 4, 4, 3))
    np.testing.assert_allclose(jit(ickd_loss)(s, s2), ref_ickd(s, s2), rtol=1e-10)
