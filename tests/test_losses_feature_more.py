"""VID, OFD, ReviewKD and SDD feature losses against independent NumPy float64 references."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxkd.losses import (OFD_CIFAR_WEIGHT, OFD_IMAGENET_WEIGHT, ofd_loss,
                                           ofd_margin)
from jaxkd.losses import (abf_combine, adaptive_avg_pool, hcl_loss,
                                         nearest_upsample)
from jaxkd.losses import multiscale_pooled_features, sdd_loss
from jaxkd.losses import vid_log_scale_init, vid_loss
from jaxkd.losses import kd_loss

# ---------------------------------------------------------------- float64 references


def _features(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def ref_adaptive_pool(x, out_h, out_w):
  """torch.nn.functional.adaptive_avg_pool2d on NHWC: windows [floor(i*H/h), ceil((i+1)*H/h))."""
  x = np.asarray(x, np.float64)
  b, h, w, c = x.shape
  out = np.zeros((b, out_h, out_w, c))
  for i in range(out_h):
    h0, h1 = math.floor(i * h / out_h), math.ceil((i + 1) * h / out_h)
    for j in range(out_w):
      w0, w1 = math.floor(j * w / out_w), math.ceil((j + 1) * w / out_w)
      out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return out


def ref_nearest(x, out_h, out_w):
  x = np.asarray(x, np.float64)
  b, h, w, c = x.shape
  out = np.zeros((b, out_h, out_w, c))
  for i in range(out_h):
    for j in range(out_w):
      out[:, i, j] = x[:, (i * h) // out_h, (j * w) // out_w]
  return out


def ref_vid(mean, target, log_scale, eps=1e-5):
  mean, target = np.asarray(mean, np.float64), np.asarray(target, np.float64)
  h = min(mean.shape[1], target.shape[1])
  w = min(mean.shape[2], target.shape[2])
  mean, target = ref_adaptive_pool(mean, h, w), ref_adaptive_pool(target, h, w)
  var = np.log1p(np.exp(np.asarray(log_scale, np.float64))) + eps  # torch.log(1 + exp(a)) + eps
  out = []
  for m, t in zip(mean, target):
    nll = 0.5 * ((m - t)**2 / var + np.log(var))  # var broadcasts over the channel axis
    out.append(nll.mean())
  return np.array(out)


def _normal_cdf(x):
  return 0.5 * math.erfc(-x / math.sqrt(2.0))


def ref_ofd_margin(scale, bias):
  margins = []
  for s, m in zip(np.asarray(scale, np.float64), np.asarray(bias, np.float64)):
    s = abs(s)
    if _normal_cdf(-m / s) > 0.001:
      margins.append(-s * math.exp(-(m / s)**2 / 2) / math.sqrt(2 * math.pi) / _normal_cdf(-m / s)
                     + m)
    else:
      margins.append(-3 * s)
  return np.array(margins)


def ref_ofd(student, teacher, margin):
  student, teacher = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
  margin = np.asarray(margin, np.float64)
  out = np.zeros(student.shape[0])
  for b, h, w, c in np.ndindex(*student.shape):
    t = max(teacher[b, h, w, c], margin[c])
    s = student[b, h, w, c]
    if s > t or t > 0:
      out[b] += (s - t)**2
  return out


def ref_ofd_mdistiller(student, teacher, margin):
  """mdistiller's three-case form of the same mask (for margins <= 0), per example."""
  s, t = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
  m = np.asarray(margin, np.float64)
  loss = ((s - m)**2 * ((s > m) & (t <= m)) + (s - t)**2 * ((s > t) & (t > m) & (t <= 0)) +
          (s - t)**2 * (t > 0))
  return loss.reshape(loss.shape[0], -1).sum(axis=-1)


def ref_hcl(student_stages, teacher_stages, levels=(4, 2, 1)):
  total = 0.0
  for fs, ft in zip(student_stages, teacher_stages):
    fs, ft = np.asarray(fs, np.float64), np.asarray(ft, np.float64)
    b, h = fs.shape[0], fs.shape[1]
    loss = np.array([np.mean((fs[i] - ft[i])**2) for i in range(b)])
    cnt, tot = 1.0, 1.0
    for level in levels:
      if level >= h:
        continue
      ps, pt = ref_adaptive_pool(fs, level, level), ref_adaptive_pool(ft, level, level)
      cnt /= 2.0
      loss = loss + cnt * np.array([np.mean((ps[i] - pt[i])**2) for i in range(b)])
      tot += cnt
    total = total + loss / tot
  return total


def ref_multiscale(features, scales=(1, 2, 4)):
  """The authors' SPP: pool to 4x4 first (whatever the scales), then each scale from that."""
  base = ref_adaptive_pool(features, 4, 4)
  cells = []
  for s in scales:
    pooled = ref_adaptive_pool(base, s, s)
    for i in range(s):
      for j in range(s):
        cells.append(pooled[:, i, j])
  return np.stack(cells, axis=1)


def ref_kd(student, teacher, t):
  s = np.asarray(student, np.float64) / t
  z = np.asarray(teacher, np.float64) / t
  log_ps = s - np.log(np.sum(np.exp(s - s.max()))) - s.max()
  log_pt = z - np.log(np.sum(np.exp(z - z.max()))) - z.max()
  return t**2 * np.sum(np.exp(log_pt) * (log_pt - log_ps))


def ref_sdd(student, teacher, labels, t, beta):
  """Per example, with explicit loops: cell weight beta where the teacher's local and global
  correctness differ, 1 otherwise; mean over cells."""
  b_size, n_cells, _ = student.shape
  out = np.zeros(b_size)
  for b in range(b_size):
    global_right = np.argmax(teacher[b, 0]) == labels[b]
    for n in range(n_cells):
      local_right = np.argmax(teacher[b, n]) == labels[b]
      weight = beta if local_right != global_right else 1.0
      out[b] += weight * ref_kd(student[b, n], teacher[b, n], t) / n_cells
  return out


def ref_sdd_authors_masks(student, teacher, labels, t, beta):
  """The authors' batch value, built like their code: cells flattened cell-major to [N*B, K]
  and the four masks set up (and cleared for the first B rows) the same way."""
  b_size, n_cells, k = student.shape
  out_s = np.transpose(student, (1, 0, 2)).reshape(n_cells * b_size, k)
  out_t = np.transpose(teacher, (1, 0, 2)).reshape(n_cells * b_size, k)
  target_r = np.tile(labels, n_cells)
  loss = np.array([ref_kd(s, z, t) for s, z in zip(out_s, out_t)])
  pred = np.argmax(out_t, axis=1)
  global_true = np.tile(pred[:b_size] == labels, n_cells)
  gt_lw = (pred != target_r) & global_true
  gt_lw[:b_size] = False
  gw_lt = (pred == target_r) & ~global_true
  gw_lt[:b_size] = False
  gw_lw = (pred != target_r) & ~global_true
  gt_lt = (pred == target_r) & global_true
  index = np.zeros_like(loss)
  index[gw_lw] = 1.0
  index[gt_lt] = 1.0
  index[gw_lt] = beta
  index[gt_lw] = beta
  return np.sum(loss * index) / target_r.shape[0], (gt_lw.sum(), gw_lt.sum(), gw_lw.sum(),
                                                    gt_lt.sum())


# ------------------------------------------------------------------------------- VID


def test_vid_log_scale_init_gives_initial_variance():
  init = vid_log_scale_init(5.0)
  np.testing.assert_allclose(init, np.log(np.exp(5.0 - 1e-5) - 1.0), rtol=1e-12)
  np.testing.assert_allclose(np.log1p(np.exp(init)) + 1e-5, 5.0, rtol=1e-12)
  np.testing.assert_allclose(jax.nn.softplus(vid_log_scale_init(0.5, min_variance=0.1)) + 0.1,
                             0.5, rtol=1e-6)
  with pytest.raises(ValueError, match='initial_variance'):
    vid_log_scale_init(1e-6)
  with pytest.raises(ValueError, match='min_variance'):
    vid_log_scale_init(5.0, min_variance=0.0)


@pytest.mark.parametrize('mean_shape, teacher_shape', [
    ((3, 4, 4, 5), (3, 4, 4, 5)),
    ((3, 2, 2, 5), (3, 4, 4, 5)),  # teacher larger: target pooled (as the authors)
    ((3, 6, 6, 5), (3, 3, 3, 5)),  # mean larger: pooled by 2
    ((3, 4, 2, 5), (3, 2, 4, 5)),  # each axis on its own side
], ids=['same', 'teacher-larger', 'mean-larger', 'mixed'])
def test_vid_matches_reference(mean_shape, teacher_shape):
  mean, teacher = _features(0, mean_shape), _features(1, teacher_shape)
  log_scale = _features(2, (5,))
  got = jax.jit(lambda m, t, a: vid_loss(m, t, log_scale=a))(mean, teacher, log_scale)
  assert got.shape == (3,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_vid(mean, teacher, log_scale), rtol=1e-5, atol=1e-6)


def test_vid_scalar_log_scale_and_min_variance():
  mean, teacher = _features(3, (2, 3, 3, 4)), _features(4, (2, 3, 3, 4))
  got = jax.jit(lambda m, t: vid_loss(m, t, log_scale=-1.5, min_variance=0.25))(mean, teacher)
  np.testing.assert_allclose(got, ref_vid(mean, teacher, np.full(4, -1.5), eps=0.25), rtol=1e-5)


def test_vid_minimised_when_mean_equals_target():
  teacher = _features(5, (2, 3, 3, 4))
  log_scale = _features(6, (4,))
  loss = jax.jit(lambda m: vid_loss(m, teacher, log_scale=log_scale))
  var = np.log1p(np.exp(log_scale.astype(np.float64))) + 1e-5
  np.testing.assert_allclose(loss(teacher), 0.5 * np.mean(np.log(var)), rtol=1e-5)
  assert np.all(loss(teacher + 0.1 * _features(7, teacher.shape)) > loss(teacher))
  grad = jax.jit(jax.grad(lambda m: loss(m).sum()))(teacher)
  np.testing.assert_array_equal(grad, 0.0)
  # For a fixed residual, the variance minimising the batch loss is the residual's
  # per-channel mean square: the gradient in log_scale vanishes there.
  residual = _features(8, teacher.shape)
  best_var = np.mean(residual.astype(np.float64)**2, axis=(0, 1, 2))
  best_scale = np.log(np.expm1(best_var - 1e-5)).astype(np.float32)
  grad_scale = jax.jit(jax.grad(
      lambda a: vid_loss(teacher + residual, teacher, log_scale=a).mean()))(best_scale)
  np.testing.assert_allclose(grad_scale, 0.0, atol=1e-6)


def test_vid_tiny_variance_gives_finite_gradients():
  mean, teacher = _features(9, (2, 2, 2, 3)), _features(10, (2, 2, 2, 3))
  log_scale = np.array([-200.0, 0.0, 200.0], np.float32)  # variance eps, ~0.69, 200
  grads = jax.jit(jax.grad(lambda m, t, a: vid_loss(m, t, log_scale=a).mean(),
                           argnums=(0, 1, 2)))(mean, teacher, log_scale)
  for g in grads:
    assert np.all(np.isfinite(g))


def test_vid_rejects_bad_inputs():
  mean = _features(11, (2, 4, 4, 3))
  with pytest.raises(ValueError, match='channel'):
    vid_loss(mean, _features(12, (2, 4, 4, 5)), log_scale=np.zeros(3))
  with pytest.raises(ValueError, match='whole'):
    vid_loss(mean, _features(12, (2, 6, 6, 3)), log_scale=np.zeros(3))
  with pytest.raises(ValueError, match='log_scale'):
    vid_loss(mean, mean, log_scale=np.zeros(4))
  with pytest.raises(ValueError, match='min_variance'):
    vid_loss(mean, mean, log_scale=np.zeros(3), min_variance=-1.0)
  with pytest.raises(ValueError, match='predicted_mean'):
    vid_loss(mean[:, 0, 0], mean[:, 0, 0], log_scale=np.zeros(3))


# ------------------------------------------------------------------------------- OFD


def test_ofd_margin_matches_reference():
  scale = np.array([1.0, -0.5, 2.0, 0.3, 1.5, 1e-3], np.float32)  # negative: abs, as authors
  bias = np.array([0.0, -1.0, 5.0, 2.0, -0.7, 0.002], np.float32)  # 2.0/0.3: cdf < 0.001
  got = jax.jit(ofd_margin)(scale, bias)
  assert got.shape == (6,) and got.dtype == jnp.float32
  want = ref_ofd_margin(scale, bias)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(got[3], -0.9, rtol=1e-6)  # the -3 s fallback
  np.testing.assert_allclose(got[0], -math.sqrt(2 / math.pi), rtol=1e-6)  # E[x | x < 0], N(0,1)
  assert np.all(np.asarray(got) <= 0)


def test_ofd_margin_zero_scale_is_finite_limit():
  margin = jax.jit(ofd_margin)
  got = margin(np.array([0.0, 0.0, 0.0, 1e-4], np.float32),
               np.array([-2.0, 0.0, 3.0, -2.0], np.float32))
  np.testing.assert_allclose(got, [-2.0, 0.0, 0.0, -2.0], rtol=1e-6)  # last: small-scale limit
  grads = jax.jit(jax.grad(lambda s, b: margin(s, b).sum(), argnums=(0, 1)))(
      np.zeros(3, np.float32), np.array([-2.0, 0.0, 3.0], np.float32))
  for g in grads:
    assert np.all(np.isfinite(g))
  with pytest.raises(ValueError, match='bn_scale'):
    ofd_margin(np.ones(3), np.ones(4))


def test_ofd_loss_matches_references():
  student, teacher = _features(20, (3, 4, 4, 5)), _features(21, (3, 4, 4, 5))
  margin = jax.jit(ofd_margin)(np.abs(_features(22, (5,))) + 0.5, _features(23, (5,)))
  got = jax.jit(lambda s, t, m: ofd_loss(s, t, margin=m))(student, teacher, margin)
  assert got.shape == (3,) and got.dtype == jnp.float32
  want = ref_ofd(student, teacher, margin)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(got, ref_ofd_mdistiller(student, teacher, margin), rtol=1e-5)
  # Authors' term: sum over the batch / batch size / 1000 on CIFAR-100.
  assert OFD_CIFAR_WEIGHT == 1e-3 and OFD_IMAGENET_WEIGHT == 1e-4
  np.testing.assert_allclose(OFD_CIFAR_WEIGHT * np.mean(got), want.sum() / 3 / 1000, rtol=1e-5)


def test_ofd_loss_hand_made_and_zero_cases():
  margin = np.array([-1.0], np.float32)
  teacher = np.array([[[[2.0], [-0.5], [-3.0], [-3.0]]]], np.float32)  # clipped: 2, -.5, -1, -1
  student = np.array([[[[1.0], [-2.0], [0.0], [-5.0]]]], np.float32)
  # 2 > 0: counted (1); -2 < -.5 <= 0: not; 0 > -1: counted (1); -5 < -1: not.
  loss = jax.jit(lambda s, t: ofd_loss(s, t, margin=margin))
  np.testing.assert_allclose(loss(student, teacher), [2.0])
  clipped = np.maximum(teacher, margin)
  np.testing.assert_array_equal(loss(clipped, teacher), 0.0)
  # Below a non-positive clipped teacher, the student is free.
  np.testing.assert_array_equal(loss(clipped - 4.0 * (clipped <= 0), teacher), 0.0)
  zeros = np.zeros((2, 2, 2, 3), np.float32)
  grads = jax.jit(jax.grad(lambda s, t: ofd_loss(s, t, margin=np.zeros(3)).sum(),
                           argnums=(0, 1)))(zeros, zeros)
  for g in grads:
    assert np.all(np.isfinite(g))


def test_ofd_loss_rejects_bad_inputs():
  student = _features(24, (2, 3, 3, 4))
  with pytest.raises(ValueError, match='student_features.*teacher_features'):
    ofd_loss(student, _features(25, (2, 3, 3, 5)), margin=np.zeros(4))
  with pytest.raises(ValueError, match='margin'):
    ofd_loss(student, student, margin=np.zeros(3))


# ---------------------------------------------------------------- pooling, resizing


def test_adaptive_avg_pool_matches_reference_and_torch_windows():
  x = _features(30, (2, 7, 6, 3))
  for out in [(4, 3), (1, 1), (7, 6), (3, 4), (8, 12)]:  # overlapping, global, identity, up
    got = jax.jit(adaptive_avg_pool, static_argnums=(1, 2))(x, *out)
    np.testing.assert_allclose(got, ref_adaptive_pool(x, *out), rtol=1e-5, atol=1e-6)
  # 7 -> 4: PyTorch's windows [0, 2), [1, 4), [3, 6), [5, 7).
  ramp = np.arange(7.0, dtype=np.float32).reshape(1, 7, 1, 1)
  pool = jax.jit(adaptive_avg_pool, static_argnums=(1, 2))
  np.testing.assert_allclose(pool(ramp, 4, 1).ravel(), [0.5, 2.0, 4.0, 5.5])
  with pytest.raises(ValueError, match='height'):
    adaptive_avg_pool(x, 0, 2)


def test_nearest_upsample_matches_reference():
  x = _features(31, (2, 2, 3, 4))
  got = jax.jit(nearest_upsample, static_argnums=(1, 2))(x, 4, 6)
  np.testing.assert_array_equal(got, np.repeat(np.repeat(x, 2, axis=1), 2, axis=2))
  for out in [(5, 7), (1, 2), (2, 3), (1, 1), (6, 1), (3, 9)]:  # whole factors up and down
    np.testing.assert_allclose(jax.jit(nearest_upsample, static_argnums=(1, 2))(x, *out),
                               ref_nearest(x, *out), rtol=1e-6)
  # The gradient of a whole-factor upsampling sums each block of the output's cotangent.
  w = _features(32, (2, 4, 6, 4))
  grad = jax.jit(jax.grad(lambda a: jnp.sum(nearest_upsample(a, 4, 6) * w)))(x)
  np.testing.assert_allclose(grad, w.reshape(2, 2, 2, 3, 2, 4).sum(axis=(2, 4)), rtol=1e-6)
  with pytest.raises(ValueError, match='width'):
    nearest_upsample(x, 2, 2.0)


# ------------------------------------------------------------------------- ReviewKD


def test_abf_combine_matches_reference_and_extremes():
  x = _features(32, (2, 4, 4, 3))
  residual = _features(33, (2, 2, 2, 3))
  attention = jax.nn.sigmoid(_features(34, (2, 4, 4, 2)))
  combine = jax.jit(abf_combine)
  got = combine(x, residual, attention)
  assert got.shape == (2, 4, 4, 3) and got.dtype == jnp.float32
  up = ref_nearest(residual, 4, 4)
  a = np.asarray(attention, np.float64)
  want = x * a[..., :1] + up * a[..., 1:]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  ones, zeros = np.ones((2, 4, 4, 1), np.float32), np.zeros((2, 4, 4, 1), np.float32)
  np.testing.assert_array_equal(combine(x, residual, np.concatenate([ones, zeros], -1)), x)
  np.testing.assert_array_equal(combine(x, residual, np.concatenate([zeros, ones], -1)), up)
  with pytest.raises(ValueError, match='attention'):
    abf_combine(x, residual, attention[..., :1])
  with pytest.raises(ValueError, match='residual'):
    abf_combine(x, residual[..., :2], attention)


_STAGES = [(2, 8, 8, 3), (2, 4, 4, 5), (2, 7, 7, 2), (2, 1, 1, 6), (2, 6, 3, 2)]


def test_hcl_matches_reference():
  student = [_features(40 + i, s) for i, s in enumerate(_STAGES)]
  teacher = [_features(50 + i, s) for i, s in enumerate(_STAGES)]
  got = jax.jit(hcl_loss)(student, teacher)
  assert got.shape == (2,) and got.dtype == jnp.float32
  want = ref_hcl(student, teacher)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # One 8x8 stage by hand: weights 1, 1/2, 1/4, 1/8 over 15/8.
  s8, t8 = student[0].astype(np.float64), teacher[0].astype(np.float64)
  mse = lambda a, b: np.mean((a - b)**2)
  batch_value = (mse(s8, t8) + sum(
      w * mse(ref_adaptive_pool(s8, l, l), ref_adaptive_pool(t8, l, l))
      for w, l in [(0.5, 4), (0.25, 2), (0.125, 1)])) / 1.875
  np.testing.assert_allclose(jnp.mean(jax.jit(hcl_loss)(student[:1], teacher[:1])),
                             batch_value, rtol=1e-5)
  np.testing.assert_allclose(jax.jit(lambda s, t: hcl_loss(s, t, levels=(2,)))(student, teacher),
                             ref_hcl(student, teacher, levels=(2,)), rtol=1e-5)


def test_hcl_zero_for_identical_features_with_finite_gradients():
  student = [_features(60 + i, s) for i, s in enumerate(_STAGES)]
  np.testing.assert_array_equal(jax.jit(hcl_loss)(student, student), 0.0)
  grads = jax.jit(jax.grad(lambda s: hcl_loss(s, [jnp.zeros(x.shape) for x in s]).sum()))(
      [np.zeros(s, np.float32) for s in _STAGES])
  for g in grads:
    assert np.all(np.isfinite(g))


def test_hcl_rejects_bad_inputs():
  a, b = _features(70, (2, 4, 4, 3)), _features(71, (2, 4, 4, 5))
  with pytest.raises(ValueError, match='student_features\\[0\\].*teacher_features\\[0\\]'):
    hcl_loss([a], [b])
  with pytest.raises(ValueError, match='stages'):
    hcl_loss([a, a], [a])
  with pytest.raises(ValueError, match='stages'):
    hcl_loss([], [])
  with pytest.raises(ValueError, match='batch size'):
    hcl_loss([a, a[:1]], [a, a[:1]])
  with pytest.raises(ValueError, match='sequences'):
    hcl_loss(a, a)
  with pytest.raises(ValueError, match='levels'):
    hcl_loss([a], [a], levels=(4, 0))


# ------------------------------------------------------------------------------ SDD


@pytest.mark.parametrize('shape, scales', [
    ((2, 8, 8, 3), (1, 2, 4)),
    ((2, 7, 7, 3), (1, 2, 4)),  # ImageNet-sized: overlapping 4x4 windows
    ((2, 4, 8, 3), (1, 2)),
    ((2, 7, 7, 3), (1, 2)),  # still through the 4x4 grid, as the authors' --M [1,2]
], ids=['8x8', '7x7', '4x8-12', '7x7-12'])
def test_multiscale_pooled_features_matches_reference(shape, scales):
  features = _features(80, shape)
  got = jax.jit(lambda f: multiscale_pooled_features(f, scales=scales))(features)
  n_cells = sum(s * s for s in scales)
  assert got.shape == (2, n_cells, 3) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_multiscale(features, scales), rtol=1e-5, atol=1e-6)


def test_multiscale_cell_order_and_global_cell():
  features = _features(81, (2, 8, 8, 3))
  got = jax.jit(multiscale_pooled_features)(features)
  np.testing.assert_allclose(got[:, 0], features.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
  # Cell 1 + 2 * 1 + 1 = 4 is the 2x2 grid's bottom-right; cell 5 + 4 + 2 = 11 is (1, 2) of 4x4.
  np.testing.assert_allclose(got[:, 4], features[:, 4:, 4:].mean(axis=(1, 2)), rtol=1e-5)
  np.testing.assert_allclose(got[:, 11], features[:, 2:4, 4:6].mean(axis=(1, 2)), rtol=1e-5)
  with pytest.raises(ValueError, match='scales'):
    multiscale_pooled_features(features, scales=(1, 1))
  with pytest.raises(ValueError, match='features'):
    multiscale_pooled_features(features[:, 0])


def _sdd_inputs(seed, b=16, n=5, k=3):
  rng = np.random.default_rng(seed)
  student = rng.standard_normal((b, n, k)).astype(np.float32)
  teacher = (2.0 * rng.standard_normal((b, n, k))).astype(np.float32)
  labels = rng.integers(0, k, size=b).astype(np.int32)
  return student, teacher, labels


def test_sdd_loss_matches_references():
  student, teacher, labels = _sdd_inputs(90)
  got = jax.jit(lambda s, t, y: sdd_loss(s, t, y, temperature=4.0, complementary_weight=2.0))(
      student, teacher, labels)
  assert got.shape == (16,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref_sdd(student, teacher, labels, 4.0, 2.0), rtol=1e-5)
  authors, counts = ref_sdd_authors_masks(student, teacher, labels, 4.0, 2.0)
  assert all(c > 0 for c in counts)  # all four consistent/complementary cases occur
  np.testing.assert_allclose(jnp.mean(got), authors, rtol=1e-5)


def test_sdd_loss_special_cases():
  student, teacher, labels = _sdd_inputs(91)
  per_cell = jax.jit(lambda s, t: kd_loss(s, t, temperature=2.0))(student, teacher)
  loss = jax.jit(lambda s, t, w: sdd_loss(s, t, labels, temperature=2.0, complementary_weight=w))
  np.testing.assert_allclose(loss(student, teacher, 1.0), per_cell.mean(axis=-1), rtol=1e-6)
  # Only the global cell: plain KD (the authors' --M [1]).
  np.testing.assert_allclose(loss(student[:, :1], teacher[:, :1], 7.0), per_cell[:, 0],
                             rtol=1e-6)
  np.testing.assert_allclose(loss(teacher, teacher, 2.0), 0.0, atol=1e-6)
  # A teacher with zero-probability classes: finite values and gradients.
  teacher_inf = teacher.copy()
  teacher_inf[:, :, 0] = -np.inf
  value, grad = jax.jit(jax.value_and_grad(lambda s: loss(s, teacher_inf, 2.0).sum()))(student)
  assert np.isfinite(value) and np.all(np.isfinite(grad))


def test_sdd_loss_rejects_bad_inputs():
  student, teacher, labels = _sdd_inputs(92)
  kw = dict(temperature=4.0, complementary_weight=2.0)
  with pytest.raises(ValueError, match='student_local_logits.*teacher_local_logits'):
    sdd_loss(student, teacher[:, :3], labels, **kw)
  with pytest.raises(ValueError, match='labels shape'):
    sdd_loss(student, teacher, labels[:3], **kw)
  with pytest.raises(ValueError, match='integer'):
    sdd_loss(student, teacher, labels.astype(np.float32), **kw)
  with pytest.raises(ValueError, match='cells'):
    sdd_loss(student[:, 0], teacher[:, 0], labels, **kw)
  with pytest.raises(ValueError, match='complementary_weight'):
    sdd_loss(student, teacher, labels, temperature=4.0, complementary_weight=-1.0)
  with pytest.raises(ValueError, match='temperature'):
    sdd_loss(student, teacher, labels, temperature=0.0, complementary_weight=2.0)


# ------------------------------------------------------------------- gradients, dtypes


def test_check_grads_float64():
  with jax.enable_x64(True):
    rng = np.random.default_rng(100)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape))
    mean, teacher, log_scale = normal(2, 4, 4, 3), normal(2, 2, 2, 3), normal(3)
    vid = jax.jit(lambda m, t, a: vid_loss(m, t, log_scale=a))
    assert vid(mean, teacher, log_scale).dtype == jnp.float64
    check_grads(vid, (mean, teacher, log_scale), order=1, modes=('rev',))
    student, target = normal(2, 2, 2, 3), normal(2, 2, 2, 3)
    margin = jax.jit(ofd_margin)(jnp.ones(3), jnp.zeros(3))
    assert margin.dtype == jnp.float64
    check_grads(jax.jit(lambda s, t: ofd_loss(s, t, margin=margin)), (student, target), order=1,
                modes=('rev',))
    stages_s = [normal(2, 7, 7, 2), normal(2, 1, 1, 2)]  # overlapping pooling windows; 1x1
    stages_t = [normal(2, 7, 7, 2), normal(2, 1, 1, 2)]
    check_grads(jax.jit(hcl_loss), (stages_s, stages_t), order=1, modes=('rev',))
    s_logits, t_logits, labels = _sdd_inputs(101, b=4, n=5, k=3)
    sdd = lambda s, t: sdd_loss(s, t, labels, temperature=3.0, complementary_weight=2.0)
    check_grads(jax.jit(sdd), (jnp.asarray(s_logits, jnp.float64),
                               jnp.asarray(t_logits, jnp.float64)), order=1, modes=('rev',))


def test_bfloat16_inputs_give_float32_outputs():
  bf = lambda x: jnp.asarray(x, jnp.bfloat16)
  f = _features(110, (2, 4, 4, 3))
  g = _features(111, (2, 4, 4, 3))
  att = _features(112, (2, 4, 4, 2))
  s_logits, t_logits, labels = _sdd_inputs(113, b=2)
  losses = [
      (lambda a, b: vid_loss(a, b, log_scale=jnp.zeros(3, jnp.bfloat16)), (f, g)),
      (lambda a, b: ofd_loss(a, b, margin=jnp.full(3, -0.5, jnp.bfloat16)), (f, g)),
      (lambda a, b: hcl_loss([a], [b]), (f, g)),
      (lambda a, b: sdd_loss(a, b, labels, temperature=4.0, complementary_weight=2.0),
       (s_logits, t_logits)),
  ]
  for fn, args in losses:
    fn = jax.jit(fn)
    got = fn(*[bf(a) for a in args])
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, fn(*args), rtol=5e-2, atol=5e-2)
  # The helpers: output dtypes only (no compilation needed).
  helpers = [
      (lambda a, b: ofd_margin(a[0, 0, 0], b[0, 0, 0]), (f, g)),
      (abf_combine, (f, g[:, :2, :2], att)),
      (multiscale_pooled_features, (f,)),
      (lambda a: adaptive_avg_pool(a, 3, 3), (f,)),
      (lambda a: nearest_upsample(a, 8, 8), (f,)),
  ]
  for fn, args in helpers:
    assert jax.eval_shape(fn, *[bf(a) for a in args]).dtype == jnp.float32
