"""NumPy float64 references of KD and cross-entropy, and the helpers of their tests."""
import numpy as np


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  shifted = x - np.max(x, axis=-1, keepdims=True)
  return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def np_softmax(x):
  return np.exp(np_log_softmax(x))


def np_kl(p, log_q):
  """sum_c p_c (log p_c - log q_c), with 0 log 0 = 0."""
  p = np.asarray(p, np.float64)
  with np.errstate(divide='ignore', invalid='ignore'):
    terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - log_q), 0.0)
  return terms.sum(-1)


def np_kd(student, teacher, temperature, squared=True):
  p_t = np_softmax(np.asarray(teacher, np.float64) / temperature)
  log_p_s = np_log_softmax(np.asarray(student, np.float64) / temperature)
  return (temperature**2 if squared else 1.0) * np_kl(p_t, log_p_s)


def np_kd_probs(student, probs, temperature):
  return temperature**2 * np_kl(probs, np_log_softmax(np.asarray(student, np.float64) /
                                                      temperature))


def np_cross_entropy(logits, labels, eps=0.0):
  logits = np.asarray(logits, np.float64)
  num_classes = logits.shape[-1]
  targets = (1 - eps) * np.eye(num_classes)[labels] + eps / num_classes
  return -(targets * np_log_softmax(logits)).sum(-1)


def _logits(seed, shape, scale=3.0):
  return scale * np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
