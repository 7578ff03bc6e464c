"""NumPy float64 references of FitNets hints and attention transfer, and test helpers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest


def ref_hint(student, teacher):
  diff = np.asarray(student, np.float64) - np.asarray(teacher, np.float64)
  return np.array([np.mean(d**2) for d in diff])


def ref_attention_map(features, power=2):
  features = np.asarray(features, np.float64)
  maps = []
  for f in features:  # one example: [H, W, C]
    q = np.mean(np.abs(f)**power, axis=-1).ravel()
    maps.append(q / max(np.sqrt(np.sum(q**2)), 1e-12))
  return np.stack(maps)


def ref_block_mean(features, out_h, out_w):
  """Adaptive average pooling of [B, H, W, C] to [B, out_h, out_w, C], whole factors only."""
  features = np.asarray(features, np.float64)
  kh, kw = features.shape[1] // out_h, features.shape[2] // out_w
  out = np.zeros((features.shape[0], out_h, out_w, features.shape[3]))
  for i in range(out_h):
    for j in range(out_w):
      out[:, i, j] = features[:, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].mean(axis=(1, 2))
  return out


def ref_attention_transfer(student, teacher, power=2):
  h = min(student.shape[1], teacher.shape[1])
  w = min(student.shape[2], teacher.shape[2])
  a_s = ref_attention_map(ref_block_mean(student, h, w), power)
  a_t = ref_attention_map(ref_block_mean(teacher, h, w), power)
  return np.mean((a_s - a_t)**2, axis=-1)


def _features(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def pooling_cases(batch, channels):
  """Parametrizes `student_shape, teacher_shape`: NHWC maps of `batch` examples whose spatial
  sizes agree, differ either way (the larger side pooled, by 2 or 3) or differ per axis;
  `channels` holds each case's (student, teacher) channel counts."""
  spaces = [((4, 4), (4, 4)), ((8, 8), (4, 4)), ((2, 2), (6, 6)), ((8, 2), (4, 4))]
  cases = [((batch, *s, c_s), (batch, *t, c_t)) for (s, t), (c_s, c_t) in zip(spaces, channels)]
  return pytest.mark.parametrize('student_shape, teacher_shape', cases,
                                 ids=['same', 'student-larger', 'teacher-larger', 'mixed'])


def assert_finite_gradients(loss, *args):
  """The gradient of `sum(loss(*args))` with respect to every argument is finite (under jit)."""
  grads = jax.jit(jax.grad(lambda *a: jnp.sum(loss(*a)), argnums=tuple(range(len(args)))))(*args)
  for g in grads:
    assert np.all(np.isfinite(g))
