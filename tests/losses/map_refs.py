"""NumPy float64 references of VID, OFD, ReviewKD and SDD, and the helpers of their tests."""
import math

import numpy as np
from feature_refs import _features  # noqa: F401 (shared by the map tests)


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


_STAGES = [(2, 8, 8, 3), (2, 4, 4, 5), (2, 7, 7, 2), (2, 1, 1, 6), (2, 6, 3, 2)]


def _sdd_inputs(seed, b=16, n=5, k=3):
  rng = np.random.default_rng(seed)
  student = rng.standard_normal((b, n, k)).astype(np.float32)
  teacher = (2.0 * rng.standard_normal((b, n, k))).astype(np.float32)
  labels = rng.integers(0, k, size=b).astype(np.int32)
  return student, teacher, labels


def run_map_term(name, student_maps, teacher_maps, **settings):
  """`(value [B], params)` of map term `name` on `{tap: map}` of each side (taps pair in
  order), under jit, with its own freshly initialised projectors."""
  import jax
  from jaxkd.losses import Context, Outputs, make_term
  term = make_term(name, student_taps=tuple(student_maps), teacher_taps=tuple(teacher_maps),
                   **settings)
  student, teacher = Outputs(np.zeros((1, 2)), student_maps), Outputs(np.zeros((1, 2)),
                                                                      teacher_maps)
  params, state = term.init(jax.random.key(0), student, [teacher])
  value = jax.jit(lambda p: term(Context(student, [teacher], params=p, state=state))[0])(params)
  return np.asarray(value), jax.tree.map(lambda x: np.asarray(x, np.float64), params)


def ref_conv_batch_norm(x, kernel, scale, bias, eps=1e-5):
  """A bias-free 1x1 convolution, then BatchNorm2d in training mode (the batch's biased
  variance, over batch and positions)."""
  y = np.einsum('bhwc,cd->bhwd', np.asarray(x, np.float64), kernel)
  mean, var = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
  return (y - mean) / np.sqrt(var + eps) * scale + bias
