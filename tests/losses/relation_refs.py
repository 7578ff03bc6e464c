"""NumPy float64 references of SP, CC, RKD, PKT, NST, FSP and ICKD, and their tests' helpers."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.losses import cc_loss, pkt_loss, rkd_angle_loss, rkd_distance_loss, rkd_loss, sp_loss
from jaxkd.losses import fsp_loss, ickd_loss, nst_loss
from feature_refs import _features  # noqa: F401 (shared by the map tests)


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
