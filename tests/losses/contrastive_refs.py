"""NumPy float64 references of CRD and its memory banks, and the helpers of their tests."""
import numpy as np


def ref_embed(features, kernel, bias):
  features = np.asarray(features, np.float64)
  out = []
  for f in features:
    z = f.ravel() @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64)
    out.append(z / np.sqrt(np.sum(z**2)))
  return np.stack(out)


def ref_scores(bank, indices, embeddings, temperature):
  bank = np.asarray(bank, np.float64)
  embeddings = np.asarray(embeddings, np.float64)
  out = np.zeros(indices.shape)
  for b in range(indices.shape[0]):
    for k in range(indices.shape[1]):
      out[b, k] = np.exp(np.dot(bank[indices[b, k]], embeddings[b]) / temperature)
  return out


def ref_nce(probabilities, num_data):
  probabilities = np.asarray(probabilities, np.float64)
  m = probabilities.shape[1] - 1
  noise = m / num_data
  out = []
  for p in probabilities:
    loss = -np.log(p[0] / (p[0] + noise + 1e-7))
    for q in p[1:]:
      loss -= np.log(noise / (q + noise + 1e-7))
    out.append(loss)
  return np.array(out)


def ref_crd(s, t, student_bank, teacher_bank, idx, temperature, z_s=None, z_t=None):
  """Student embeddings vs the teacher's bank, teacher embeddings vs the student's bank."""
  n = student_bank.shape[0]
  out_s = ref_scores(teacher_bank, idx, s, temperature)
  out_t = ref_scores(student_bank, idx, t, temperature)
  z_s = out_s.mean() * n if z_s is None else z_s
  z_t = out_t.mean() * n if z_t is None else z_t
  return ref_nce(out_s / z_s, n) + ref_nce(out_t / z_t, n), z_s, z_t


def ref_update(bank, indices, embeddings, momentum):
  bank = np.array(bank, np.float64)
  for i, e in zip(indices, np.asarray(embeddings, np.float64)):
    row = momentum * bank[i] + (1 - momentum) * e
    bank[i] = row / np.sqrt(np.sum(row**2))
  return bank


def _normal(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _unit(seed, shape):
  x = _normal(seed, shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _setup(seed=0, batch=5, num_data=12, dim=6, num_negatives=7):
  """Unit embeddings, unit banks and contrast indices with unique positives."""
  rng = np.random.default_rng(seed)
  s, t = _unit(seed + 1, (batch, dim)), _unit(seed + 2, (batch, dim))
  student_bank, teacher_bank = _unit(seed + 3, (num_data, dim)), _unit(seed + 4, (num_data, dim))
  idx = rng.integers(0, num_data, (batch, num_negatives + 1)).astype(np.int32)
  idx[:, 0] = rng.permutation(num_data)[:batch]
  return s, t, student_bank, teacher_bank, idx
