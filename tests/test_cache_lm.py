"""Vocabulary-scale teacher caches: draws from the teacher, sequence top-k targets, storage
per token, sharded ArrayRecord files with their provenance."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd import cache, cache_lm


def _np_softmax(z, t):
  z = np.asarray(z, np.float64) / t
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_draws_follow_the_softened_teacher():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 2, 6)) * 2
  t, draws = 2.0, 20000
  ids = jax.jit(lambda z, key: cache.sample_teacher_tokens(z, key, num_samples=draws,
                                                           temperature=t))(
      jnp.asarray(logits, jnp.float32), jax.random.key(1))
  assert ids.shape == (3, 2, draws) and ids.dtype == jnp.int32
  ids = np.asarray(ids)
  frequency = np.stack([(ids == c).mean(-1) for c in range(6)], -1)
  p = _np_softmax(logits, t)
  # Each frequency within 5 binomial standard errors of the teacher's probability at T.
  assert np.all(np.abs(frequency - p) < 5 * np.sqrt(p * (1 - p) / draws) + 1e-12)
  again = cache.sample_teacher_tokens(logits, jax.random.key(1), num_samples=draws,
                                      temperature=t)
  np.testing.assert_array_equal(np.asarray(again), ids)  # a key gives one set of draws
  # -inf is a token of probability 0: never drawn.
  masked = logits.copy()
  masked[..., 0] = -np.inf
  never = cache.sample_teacher_tokens(masked, jax.random.key(2), num_samples=500)
  assert not np.any(np.asarray(never) == 0)


def test_draw_settings_are_checked():
  with pytest.raises(ValueError, match='k=0 for a sampled cache'):
    cache.sample_teacher_tokens(np.zeros((2, 4)), jax.random.key(0), num_samples=0)
  with pytest.raises(ValueError, match='temperature'):
    cache.sample_teacher_tokens(np.zeros((2, 4)), jax.random.key(0), num_samples=2,
                                temperature=0.0)


def test_bytes_per_token_of_each_cache():
  for vocab in (2048, 32768):
    assert cache.bytes_per_token('full', vocab_size=vocab) == 4 * vocab
    assert cache.bytes_per_token('topk', vocab_size=vocab, k=8) == 8 * (4 + 2) + 4
    assert cache.bytes_per_token('topk', vocab_size=vocab, k=8,
                                 value_dtype='bfloat16') == 8 * (2 + 2) + 4
    assert cache.bytes_per_token('sampled', vocab_size=vocab, k=8) == 16
    assert cache.bytes_per_token('sampled', vocab_size=vocab, k=32) == 64
  # Ids past uint16 take 4 bytes.
  assert cache.bytes_per_token('sampled', vocab_size=128000, k=8) == 32
  assert cache.bytes_per_token('topk', vocab_size=128000, k=8) == 8 * (4 + 4) + 4
  with pytest.raises(ValueError, match="kind='dense'"):
    cache.bytes_per_token('dense', vocab_size=10, k=2)
  with pytest.raises(ValueError, match=r'k=10 for a topk cache; valid: a whole number 1..9'):
    cache.bytes_per_token('topk', vocab_size=10, k=10)
