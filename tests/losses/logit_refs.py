"""NumPy float64 references of the logit losses, and the helpers of their tests."""
import numpy as np
from scipy import special

from jaxkd.losses import (dist_inter_loss, dist_intra_loss, dkd_loss, jsd_loss, nkd_loss,
                          reverse_kl_loss, ttm_loss, wttm_loss)


def softmax64(z, temperature=1.0):
  return special.softmax(np.asarray(z, np.float64) / temperature, axis=-1)


def log_softmax64(z, temperature=1.0):
  return special.log_softmax(np.asarray(z, np.float64) / temperature, axis=-1)


def kl64(p, q):
  """sum_c p_c log(p_c / q_c) over the last axis (scipy's rel_entr: 0 log 0 = 0)."""
  return special.rel_entr(p, q).sum(-1)


def ref_kd(student, teacher, temperature):
  return temperature**2 * kl64(softmax64(teacher, temperature), softmax64(student, temperature))


def ref_reverse_kl(student, teacher, temperature):
  return temperature**2 * kl64(softmax64(student, temperature), softmax64(teacher, temperature))


def ref_skew_kl(student, teacher, skew, temperature=1.0):
  """DistiLLM's eq. (4), ``T^2 KL(p_t || a p_t + (1 - a) p_s)``; with the roles swapped
  (`ref_skew_kl(teacher, student, ...)`), its skew reverse KL, eq. (5)."""
  p_s, p_t = softmax64(student, temperature), softmax64(teacher, temperature)
  return temperature ** 2 * kl64(p_t, skew * p_t + (1 - skew) * p_s)


def ref_jsd(student, teacher, temperature, w, scale=False):
  """The GKD paper's eq. (1) (no T**2 unless `scale`)."""
  p_s, p_t = softmax64(student, temperature), softmax64(teacher, temperature)
  m = w * p_t + (1 - w) * p_s
  return (temperature**2 if scale else 1.0) * (w * kl64(p_t, m) + (1 - w) * kl64(p_s, m))


def _drop(row, label):
  return np.delete(np.asarray(row, np.float64), label)


def kl_log64(log_p, log_q):
  """sum_c p_c (log p_c - log q_c) from log-probabilities (0 log 0 = 0): exact where a
  probability underflows float64 but its log does not (logits of 1e4)."""
  p = np.exp(log_p)
  with np.errstate(invalid='ignore'):  # -inf - -inf where p = 0, discarded by the `where`
    return np.sum(np.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def ref_dkd_parts(student, teacher, labels, temperature):
  """Loops over examples; the non-target softmax is taken over the deleted-label logits.
  In log space: ``log b = (log p_y, logsumexp_{i != y} log p_i)``."""
  tckd, nckd = [], []
  for s, t, y in zip(student, teacher, labels):
    ls, lt = log_softmax64(s, temperature), log_softmax64(t, temperature)
    log_b_s = np.array([ls[y], special.logsumexp(_drop(ls, y))])
    log_b_t = np.array([lt[y], special.logsumexp(_drop(lt, y))])
    tckd.append(temperature**2 * kl_log64(log_b_t, log_b_s))
    nckd.append(temperature**2 * kl_log64(log_softmax64(_drop(t, y), temperature),
                                          log_softmax64(_drop(s, y), temperature)))
  return np.array(tckd), np.array(nckd)


def ref_nkd(student, teacher, labels, temperature, weight):
  out = []
  for s, t, y in zip(student, teacher, labels):
    target = -softmax64(t)[y] * log_softmax64(s)[y]
    q_t = softmax64(_drop(t, y), temperature)
    non_target = -(q_t * log_softmax64(_drop(s, y), temperature)).sum()
    out.append(target + weight * temperature**2 * non_target)
  return np.array(out)


def pearson64(a, b, eps=1e-8):
  """Pearson correlation along the last axis with the authors' eps in the denominator."""
  a = a - a.mean(-1, keepdims=True)
  b = b - b.mean(-1, keepdims=True)
  return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + eps)


def ref_dist_inter(student, teacher, temperature):
  return temperature**2 * (1 - pearson64(softmax64(student, temperature),
                                         softmax64(teacher, temperature)))


def ref_dist_intra(student, teacher, temperature):
  p_s, p_t = softmax64(student, temperature), softmax64(teacher, temperature)
  return temperature**2 * (1 - pearson64(p_s.T, p_t.T).mean())


def ref_ttm(student, teacher, temperature):
  powered = softmax64(teacher)**(1 / temperature)
  return kl64(powered / powered.sum(-1, keepdims=True), softmax64(student))


def ref_wttm(student, teacher, temperature):
  return (softmax64(teacher)**(1 / temperature)).sum(-1) * ref_ttm(student, teacher, temperature)


def ref_standardize(z, eps=1e-7):
  z = np.asarray(z, np.float64)
  return (z - z.mean(-1, keepdims=True)) / (eps + z.std(-1, ddof=1, keepdims=True))


# Hand-made rows: ordered, uniform, one very negative logit, and a confident teacher.
HAND_STUDENT = np.array([[1.0, 2.0, 3.0, 4.0, 5.0],
                         [0.0, 0.0, 0.0, 0.0, 0.0],
                         [-50.0, 1.0, 0.5, 2.0, -1.0],
                         [3.0, -2.0, 0.0, 1.0, 0.2]], np.float32)


HAND_TEACHER = np.array([[5.0, 4.0, 3.0, 2.0, 1.0],
                         [0.5, -0.5, 1.0, 0.0, 2.0],
                         [0.0, 2.0, -40.0, 1.0, 0.0],
                         [12.0, -3.0, 0.0, 2.0, 1.0]], np.float32)


HAND_LABELS = np.array([4, 2, 1, 0])


def _random(seed, shape=(4, 5), scale=3.0):
  return scale * np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


CASES = {
    'hand': (HAND_STUDENT, HAND_TEACHER, HAND_LABELS),
    'random': (_random(0), _random(1), np.array([0, 3, 1, 4])),
}


def _extreme():
  """Logits with -1e9 entries: in the student only, the teacher only, both, the label."""
  student, teacher = _random(2), _random(3)
  student[0, 2] = -1e9
  teacher[1, 3] = -1e9
  student[2, 4] = teacher[2, 4] = -1e9
  student[3, 1] = -1e9
  return student, teacher, np.array([0, 1, 4, 1])


# Each entry: (name, JAX function of (student, teacher, labels), float64 reference).
LOSSES = [
    ('reverse_kl', lambda s, t, y: reverse_kl_loss(s, t, temperature=2.0),
     lambda s, t, y: ref_reverse_kl(s, t, 2.0)),
    ('jsd', lambda s, t, y: jsd_loss(s, t, temperature=2.0, mixing_weight=0.3),
     lambda s, t, y: ref_jsd(s, t, 2.0, 0.3)),
    ('dkd', lambda s, t, y: dkd_loss(s, t, y, temperature=4.0, target_weight=1.0,
                                     non_target_weight=8.0),
     lambda s, t, y: np.dot([1.0, 8.0], ref_dkd_parts(s, t, y, 4.0))),
    ('nkd', lambda s, t, y: nkd_loss(s, t, y, temperature=2.0, non_target_weight=1.5),
     lambda s, t, y: ref_nkd(s, t, y, 2.0, 1.5)),
    ('dist_inter', lambda s, t, y: dist_inter_loss(s, t, temperature=3.0),
     lambda s, t, y: ref_dist_inter(s, t, 3.0)),
    ('dist_intra', lambda s, t, y: dist_intra_loss(s, t, temperature=3.0),
     lambda s, t, y: ref_dist_intra(s, t, 3.0)),
    ('ttm', lambda s, t, y: ttm_loss(s, t, temperature=4.0),
     lambda s, t, y: ref_ttm(s, t, 4.0)),
    ('wttm', lambda s, t, y: wttm_loss(s, t, temperature=4.0),
     lambda s, t, y: ref_wttm(s, t, 4.0)),
]


LOSS_IDS = [name for name, _, _ in LOSSES]
