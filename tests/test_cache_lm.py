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


VOCAB = 20
TABLE = np.random.default_rng(7).normal(size=(VOCAB, VOCAB)).astype(np.float32) * 3
PROVENANCE = {'teacher_fingerprint': 'a' * 64, 'tokenizer_fingerprint': 'b' * 64,
              'dataset_sha256': 'c' * 64}


def _teacher(variables, tokens):
  """A bigram 'teacher': the logits of token x are row x of the table."""
  return variables[tokens]


def _inputs():
  return np.random.default_rng(8).integers(0, VOCAB, (5, 4)).astype(np.int32)


def _write(directory, **kwargs):
  settings = dict(kind='sampled', k=6, temperature=2.0, seed=3, provenance=PROVENANCE,
                  batch_size=2)
  settings.update(kwargs)
  return cache_lm.write_token_cache(str(directory), _teacher, TABLE, _inputs(), **settings)


def _expected(record, **changes):
  return {**{key: record[key] for key in cache_lm.CHECKED}, **changes}


def test_sampled_cache_round_trip_and_provenance(tmp_path):
  record = _write(tmp_path / 'sampled')
  assert sorted(p.name for p in (tmp_path / 'sampled').iterdir()) == [
      'targets-00000-of-00001.array_record', 'token_cache.json']  # one shard per process
  assert record['bytes_per_token'] == 6 * 2 and record['vocab_size'] == VOCAB
  rows, found = cache_lm.read_token_cache(str(tmp_path / 'sampled'), expected=_expected(record))
  ids = rows['teacher_sample_ids']
  assert ids.shape == (5, 4, 6) and ids.dtype == np.int32 and found == record
  inputs = _inputs()
  for n in range(5):  # row n's draws from fold_in(key(seed), n), whatever the batch size
    want = cache.sample_teacher_tokens(TABLE[inputs[n]], jax.random.fold_in(
        jax.random.key(3), n), num_samples=6, temperature=2.0)
    np.testing.assert_array_equal(ids[n], np.asarray(want))
  for key, value in (('teacher_fingerprint', 'd' * 64), ('k', 8), ('temperature', 1.0),
                     ('dataset_sha256', 'e' * 64), ('kind', 'topk')):
    with pytest.raises(cache.CacheMismatchError, match=f'{key}: cache') as error:
      cache_lm.read_token_cache(str(tmp_path / 'sampled'),
                                expected=_expected(record, **{key: value}))
    assert 'delete it' in str(error.value)
  with pytest.raises(FileNotFoundError, match='No token cache'):
    cache_lm.read_token_cache(str(tmp_path / 'none'), expected={})
  with pytest.raises(ValueError, match=r"provenance lacks \['dataset_sha256'\]"):
    _write(tmp_path / 'bad', provenance={k: v for k, v in PROVENANCE.items()
                                         if k != 'dataset_sha256'})


@pytest.mark.parametrize('value_dtype', ['float32', 'bfloat16'])
def test_topk_cache_of_sequences_matches_numpy(tmp_path, value_dtype):
  record = _write(tmp_path / 'topk', kind='topk', k=3, value_dtype=value_dtype)
  assert record['bytes_per_token'] == 3 * ((4 if value_dtype == 'float32' else 2) + 2) + 4
  rows, _ = cache_lm.read_token_cache(str(tmp_path / 'topk'), expected=_expected(record))
  logits = TABLE[_inputs()].astype(np.float64)  # [5, 4, V]
  order = np.argsort(-logits, -1, kind='stable')[..., :3]
  np.testing.assert_array_equal(rows['teacher_topk_indices'], order)
  tolerance = 1e-6 if value_dtype == 'float32' else 1e-2
  np.testing.assert_allclose(rows['teacher_topk_logits'], np.take_along_axis(logits, order, -1),
                             rtol=tolerance, atol=tolerance)
  p = _np_softmax(logits, 2.0)
  rest = 1 - np.take_along_axis(p, order, -1).sum(-1)
  np.testing.assert_allclose(np.exp(rows['teacher_rest_log_mass']), rest, rtol=1e-5)
  # The top-k + rest bucket completed for every position of [B, L, V] student logits: the
  # (k+1)-bucket KL of each position, as the classifier rows get it.
  student = np.random.default_rng(9).normal(size=logits.shape)
  top = cache.TopKRows(jnp.asarray(rows['teacher_topk_logits']),
                       jnp.asarray(rows['teacher_topk_indices']),
                       jnp.asarray(rows['teacher_rest_log_mass']))
  np.testing.assert_array_equal(np.asarray(top.top1()), order[..., 0])
  from jaxkd.losses import kd_loss
  full = top.logits_for(jnp.asarray(student, jnp.float32), temperature=2.0)
  got = np.asarray(kd_loss(student.astype(np.float32), full, temperature=2.0))
  q = _np_softmax(student, 2.0)
  p_b = np.concatenate([np.take_along_axis(p, order, -1), rest[..., None]], -1)
  q_top = np.take_along_axis(q, order, -1)
  q_b = np.concatenate([q_top, 1 - q_top.sum(-1, keepdims=True)], -1)
  assert got.shape == (5, 4)
  np.testing.assert_allclose(got, 4.0 * (p_b * np.log(p_b / q_b)).sum(-1),
                             rtol=tolerance, atol=1e-5)


WRITER = '''
import json, sys
import numpy as np
from jaxkd import distributed
address, count, index, directory = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
distributed.initialize(address, count, index)
sys.path.insert(0, sys.argv[5])
import test_cache_lm as t
from jaxkd import cache_lm
cache_lm.write_token_cache(directory, t._teacher, t.TABLE, t._inputs(), kind='sampled', k=6,
                           temperature=2.0, seed=3, provenance=t.PROVENANCE, batch_size=2)
'''


@pytest.mark.slow
def test_each_process_writes_its_shard_and_the_rows_do_not_depend_on_the_processes(tmp_path):
  import os
  import pathlib
  import socket
  import subprocess
  import sys
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  here = pathlib.Path(__file__).parent
  env = {**os.environ, 'PYTHONPATH': str(here.parent), 'JAX_NUM_CPU_DEVICES': '1'}
  procs = [subprocess.Popen([sys.executable, '-c', WRITER, f'127.0.0.1:{port}', '2', str(i),
                             str(tmp_path / 'two'), str(here)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
  assert sorted(p.name for p in (tmp_path / 'two').iterdir()) == [
      'targets-00000-of-00002.array_record', 'targets-00001-of-00002.array_record',
      'token_cache.json']
  one = _write(tmp_path / 'one')
  two, found = cache_lm.read_token_cache(str(tmp_path / 'two'), expected=_expected(one))
  assert found['num_shards'] == 2
  rows, _ = cache_lm.read_token_cache(str(tmp_path / 'one'), expected=_expected(one))
  np.testing.assert_array_equal(two['teacher_sample_ids'], rows['teacher_sample_ids'])
