"""Sequences for per-position loss tests: `[B, L, V]` logits whose padding positions hold
extreme (finite) values, a mask with uneven valid lengths, and the float64 token mean."""
import functools

import jax
import numpy as np

LENGTHS = (5, 0, 2, 7)  # valid positions per row (L = 7): one row empty, one full


def sequence_case(seed, shape=(4, 7, 11), *, scale=3.0, extreme=True):
  """`(student, teacher, labels, mask)`; padded positions get logits of +-1e3 (`extreme`)."""
  rng = np.random.default_rng(seed)
  student, teacher = (rng.normal(size=shape).astype(np.float32) * scale for _ in range(2))
  lengths = np.minimum(np.resize(LENGTHS, shape[0]), shape[1])
  mask = (np.arange(shape[1])[None] < lengths[:, None]).astype(np.float32)
  pad = (mask[..., None] == 0) & extreme
  student = np.where(pad, rng.choice([-1e3, 1e3], size=shape), student).astype(np.float32)
  teacher = np.where(pad, rng.choice([-1e3, 1e3], size=shape), teacher).astype(np.float32)
  labels = rng.integers(0, shape[-1], shape[:2]).astype(np.int32)
  return student, teacher, labels, mask


def token_mean64(values, mask):
  """`sum(values * mask) / sum(mask)` in float64, ignoring what padding holds."""
  values = np.where(np.asarray(mask) > 0, np.asarray(values, np.float64), 0.0)
  return values.sum() / np.asarray(mask, np.float64).sum()


def check_per_position(loss, ref, seed, **settings):
  """`loss(student, teacher, **settings)` under `jax.jit` on `sequence_case(seed)`: float32,
  one value per position, matching the float64 `ref` at the valid positions and in its token
  mean, and finite at the padding's extreme logits."""
  student, teacher, _, mask = sequence_case(seed)
  got = jax.jit(functools.partial(loss, **settings))(student, teacher)
  want = ref(student, teacher, **settings)
  assert got.shape == mask.shape and got.dtype == np.float32
  valid = mask > 0
  np.testing.assert_allclose(np.asarray(got)[valid], want[valid], rtol=2e-5, atol=1e-6)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(token_mean64(got, mask), token_mean64(want, mask), rtol=2e-5)
