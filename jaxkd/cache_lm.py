"""Vocabulary-scale teacher caches for language models: a few numbers per token, not `V`.

A language model's teacher gives `V` logits per position; kept whole that is `4 V` bytes per
token (128 KiB at V = 32,768), more than the text. Two sparse caches keep what distillation
needs, per position:

  * **sampled** (Anshumann et al. 2025): `K` token ids drawn from the teacher's softmax at
    temperature `T` (`sample_teacher_tokens`). The student's cross-entropy against the
    draws' empirical distribution (`jaxkd.losses.sampled_kd_loss`) has the full-KD gradient
    in expectation: an unbiased target.
  * **top-k + rest of mass**: the `k` largest logits, their ids and the log of the mass of
    every other token at `T` in one bucket (`topk_teacher_targets`); the loss is then the KL
    over `k + 1` buckets (`jaxkd.cache.topk_logits`), a valid KL but a lower bound of the
    full one, so a biased target too. Renormalising over the `k` ids alone, as MaxText and
    EasyDeL do, drops the bucket and is biased further (its KL can go negative).

`bytes_per_token` gives each cache's storage. Caches are written once from the teacher as
sharded ArrayRecord files, one shard per process (`write_token_cache`), with their provenance
in `token_cache.json`; `read_token_cache` refuses a cache whose provenance differs from the
run's, naming what differs.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxkd.losses.numerics import check_static_temperature, upcast

KINDS = ('sampled', 'topk')
VALUE_DTYPES = ('float32', 'bfloat16')
FORMAT_VERSION = 1
PROVENANCE_FILE = 'token_cache.json'
# What a cache must agree on with the run that reads it (the JSON's keys).
CHECKED = ('kind', 'k', 'temperature', 'value_dtype', 'teacher_fingerprint',
           'tokenizer_fingerprint', 'dataset_sha256', 'num_rows', 'seq_len', 'vocab_size')


def token_id_dtype(vocab_size: int) -> np.dtype:
  """Stored token ids: uint16 while every id fits (V <= 65,536), else int32."""
  return np.dtype(np.uint16 if vocab_size <= 2 ** 16 else np.int32)


def bytes_per_token(kind: str, *, vocab_size: int, k: int = 0,
                    value_dtype: str = 'float32') -> int:
  """Storage of one position's teacher targets, in bytes.

  * 'full': every logit, `4 V` (float32; `2 V` in bfloat16);
  * 'topk': `k` values, `k` ids and the rest's log mass (float32): `k (v + i) + 4`, with
    `v` = 4 (float32) or 2 (bfloat16) and `i` the id size;
  * 'sampled': `K` ids, `K i`.

  Ids take `i` = 2 bytes (uint16) while V <= 65,536, else 4 (int32). At V = 2,048 or
  32,768: top-8 float32 is 52 bytes, top-8 bfloat16 36, sampled K = 8 16, K = 32 64; full
  float32 is 8,192 and 131,072.
  """
  values = {'float32': 4, 'bfloat16': 2}
  if value_dtype not in values:
    raise ValueError(f'value_dtype={value_dtype!r}; valid: {sorted(values)}.')
  if kind == 'full':
    return values[value_dtype] * vocab_size
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r}; valid: 'full', {', '.join(map(repr, KINDS))}.")
  check_k(k, vocab_size, kind)
  ids = token_id_dtype(vocab_size).itemsize
  return k * ids if kind == 'sampled' else k * (values[value_dtype] + ids) + 4


def check_k(k, vocab_size: int, kind: str) -> None:
  """Refuses a number of draws (sampled) or kept tokens (top-k) that is not a whole
  number >= 1 (below V for top-k)."""
  top = vocab_size - 1 if kind == 'topk' else None
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 or (
      top is not None and k > top):
    valid = f'1..{top}' if top else '>= 1'
    raise ValueError(f'k={k!r} for a {kind} cache; valid: a whole number {valid}.')


def sample_teacher_tokens(teacher_logits: jax.typing.ArrayLike, key: jax.Array, *,
                          num_samples: int, temperature: float = 1.0) -> jax.Array:
  r"""Token ids drawn from the teacher's softened distribution, with replacement.

  .. math:: y_{n,1..K} \sim \mathrm{softmax}(z^t_n / T)

  Args:
    teacher_logits: `[..., V]` teacher logits (computed in >= float32).
    key: a `jax.random.key`; each position's draws are independent.
    num_samples: `K`, draws per position.
    temperature: `T > 0` (the `sampled_kd_loss` of these draws must use the same).

  Returns:
    int32 `[..., K]` token ids.

  References:
    Anshumann et al., `Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs
    <https://arxiv.org/abs/2503.16870>`_, 2025.
  """
  check_static_temperature(temperature)
  logits = upcast(teacher_logits)
  check_k(num_samples, logits.shape[-1], 'sampled')
  scaled = logits[..., None, :] / jnp.asarray(temperature, logits.dtype)
  return jax.random.categorical(key, scaled, axis=-1,
                                shape=logits.shape[:-1] + (num_samples,)).astype(jnp.int32)


def topk_teacher_targets(teacher_logits: jax.typing.ArrayLike, *, k: int,
                         temperature: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`(values [..., k] float32, ids int32 [..., k], rest_log_mass [...] float32)`: the `k`
  largest logits, their ids, and the log of the teacher's probability mass of every other
  token at `temperature` (the `jaxkd.cache.TeacherCache` top-k format, for any leading
  axes). The rest is summed directly (not `1 - kept`), so a tiny mass keeps its digits."""
  check_static_temperature(temperature)
  logits = upcast(teacher_logits)
  check_k(k, logits.shape[-1], 'topk')
  values, ids = jax.lax.top_k(logits, k)
  scaled = logits / temperature
  rest = jnp.put_along_axis(scaled, ids, -jnp.inf, axis=-1, inplace=False)
  rest_log_mass = jax.nn.logsumexp(rest, -1) - jax.nn.logsumexp(scaled, -1)
  return values, ids.astype(jnp.int32), rest_log_mass


# --- storage: sharded ArrayRecord files + token_cache.json ---------------------------------------

def _fields(kind: str, seq_len: int, k: int, vocab_size: int,
            value_dtype: str) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
  """A record's arrays (one sequence's targets), in their byte order: name, stored dtype,
  shape; `read_token_cache` gives them under the names `jaxkd.cache.TopKRows` reads."""
  ids = token_id_dtype(vocab_size)
  if kind == 'sampled':
    return [('teacher_sample_ids', ids, (seq_len, k))]
  values = np.dtype(ml_dtypes.bfloat16 if value_dtype == 'bfloat16' else np.float32)
  return [('teacher_topk_logits', values, (seq_len, k)),
          ('teacher_topk_indices', ids, (seq_len, k)),
          ('teacher_rest_log_mass', np.dtype(np.float32), (seq_len,))]


def shard_name(index: int, count: int) -> str:
  """The shard file of process `index` of `count`."""
  return f'targets-{index:05d}-of-{count:05d}.array_record'


def write_token_cache(
    directory: str,
    teacher_apply: Callable[[Any, jax.Array], jax.Array],
    teacher_variables: Any,
    inputs: np.ndarray,
    *,
    kind: str,
    k: int,
    temperature: float,
    seed: int,
    provenance: dict,
    batch_size: int = 16,
    value_dtype: str = 'float32',
) -> dict:
  """Runs the teacher over `inputs` once and writes its sparse targets.

  Each process writes the rows of its block (`jaxkd.distributed.process_block`) to its own
  shard, `targets-<process>-of-<processes>.array_record`, one record per row; the main
  process writes `token_cache.json` once every shard is written (`directory` must be on a
  file system every process sees). Row `n`'s draws use `fold_in(key(seed), n)`, so a cache
  does not depend on the batch size or the number of processes.

  Args:
    directory: the cache's folder (created).
    teacher_apply: `apply(variables, tokens [b, L]) -> logits [b, L, V]`, inference mode.
    teacher_variables: the teacher's variables.
    inputs: int `[N, L]` token rows the student will read, in order.
    kind: 'sampled' (`k` draws per position) or 'topk' (`k` kept tokens + the rest's mass).
    k: draws or kept tokens per position.
    temperature: the teacher's softmax temperature of the draws or of the rest mass.
    seed: the draws' seed (sampled).
    provenance: `teacher_fingerprint`, `tokenizer_fingerprint`, `dataset_sha256` (and
      anything else worth recording) of the run the cache is for.
    batch_size: rows per teacher call (the last batch is padded).
    value_dtype: top-k values stored as 'float32' or 'bfloat16'.

  Returns:
    The provenance written to `token_cache.json`.
  """
  from array_record.python.array_record_module import ArrayRecordWriter
  from jaxkd import distributed
  if kind not in KINDS:
    raise ValueError(f'kind={kind!r}; valid: {", ".join(map(repr, KINDS))}.')
  if value_dtype not in VALUE_DTYPES:
    raise ValueError(f'value_dtype={value_dtype!r}; valid: {", ".join(VALUE_DTYPES)}.')
  missing = sorted({'teacher_fingerprint', 'tokenizer_fingerprint', 'dataset_sha256'}
                   - set(provenance))
  if missing:
    raise ValueError(f'provenance lacks {missing}: a cache records what it was made from.')
  inputs = np.asarray(inputs, np.int32)
  num_rows, seq_len = inputs.shape
  block = distributed.process_block(num_rows)
  stop = min(block.stop, num_rows)  # the last block may run past the end
  run = jax.jit(lambda variables, tokens, rows: _targets(
      teacher_apply(variables, tokens), rows, kind=kind, k=k, temperature=temperature,
      seed=seed))
  vocab_size = None
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, shard_name(jax.process_index(), jax.process_count()))
  writer = ArrayRecordWriter(path, 'group_size:1')
  try:
    for start in range(block.start, stop, batch_size):
      rows = np.arange(start, min(start + batch_size, stop))
      tokens = inputs[rows]
      pad = batch_size - len(rows)
      if pad:  # one compiled shape
        tokens = np.concatenate([tokens, np.zeros((pad, seq_len), np.int32)])
        rows = np.concatenate([rows, np.zeros(pad, rows.dtype)])
      targets, vocab_size = run(teacher_variables, tokens, rows)
      targets = jax.device_get(targets)
      fields = _fields(kind, seq_len, k, int(vocab_size), value_dtype)
      for i in range(batch_size - pad):
        writer.write(b''.join(np.ascontiguousarray(targets[name][i], dtype).tobytes()
                              for name, dtype, _ in fields))
  finally:
    writer.close()
  if vocab_size is None:  # an empty block: the vocabulary from the teacher's output shape
    vocab_size = jax.eval_shape(teacher_apply, teacher_variables, inputs[:1]).shape[-1]
  record = {'format_version': FORMAT_VERSION, 'kind': kind, 'k': k,
            'temperature': float(temperature), 'seed': seed, 'value_dtype': value_dtype,
            **provenance, 'num_rows': num_rows, 'seq_len': seq_len,
            'vocab_size': int(vocab_size), 'num_shards': jax.process_count(),
            'bytes_per_token': bytes_per_token(kind, vocab_size=int(vocab_size), k=k,
                                               value_dtype=value_dtype)}
  distributed.barrier('token_cache')
  if distributed.is_main():
    tmp = os.path.join(directory, PROVENANCE_FILE + '.tmp')
    with open(tmp, 'w') as f:
      json.dump(record, f, indent=1)
    os.replace(tmp, os.path.join(directory, PROVENANCE_FILE))  # written last: complete
  distributed.barrier('token_cache_json')  # every process may read the cache from here on
  return record


def _targets(logits, rows, *, kind, k, temperature, seed):
  """One batch's targets (`_fields` names) and V, from the teacher's logits `[b, L, V]`."""
  if kind == 'sampled':
    draw = lambda row, z: sample_teacher_tokens(  # noqa: E731
        z, jax.random.fold_in(jax.random.key(seed), row), num_samples=k,
        temperature=temperature)
    return {'teacher_sample_ids': jax.vmap(draw)(rows, logits)}, logits.shape[-1]
  values, ids, rest = topk_teacher_targets(logits, k=k, temperature=temperature)
  return ({'teacher_topk_logits': values, 'teacher_topk_indices': ids,
           'teacher_rest_log_mass': rest}, logits.shape[-1])


def read_provenance(directory: str) -> dict | None:
  """The cache's `token_cache.json`, or None when there is no complete cache there."""
  path = os.path.join(directory, PROVENANCE_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def check_provenance(found: dict, expected: dict, directory: str = '') -> None:
  """Raises `jaxkd.cache.CacheMismatchError` naming every setting of `expected` (a subset of
  `CHECKED`) whose cached value differs."""
  from jaxkd.cache import CacheMismatchError
  if found.get('format_version') != FORMAT_VERSION:
    raise CacheMismatchError(f'The token cache at {directory!r} has format '
                             f"{found.get('format_version')}, not {FORMAT_VERSION}; rewrite it.")
  differ = [f'{key}: cache {found.get(key)!r}, run {value!r}' for key, value in expected.items()
            if found.get(key) != value]
  if differ:
    raise CacheMismatchError(f'The token cache at {directory!r} was made for another run ('
                             + '; '.join(differ) + '); delete it or point teacher_cache.dir '
                             'elsewhere to write one for this run.')


def read_token_cache(directory: str, *, expected: dict) -> tuple[dict[str, np.ndarray], dict]:
  """`(rows, provenance)` of the cache at `directory`, after `check_provenance` against
  `expected`. `rows`: sampled `teacher_sample_ids` int32 `[N, L, K]`; top-k
  `teacher_topk_logits` float32 `[N, L, k]`, `teacher_topk_indices` int32 `[N, L, k]`,
  `teacher_rest_log_mass` float32 `[N, L]` (what `jaxkd.cache.TopKRows` reads)."""
  from array_record.python.array_record_module import ArrayRecordReader
  from jaxkd.cache import CacheMismatchError
  found = read_provenance(directory)
  if found is None:
    raise FileNotFoundError(f'No token cache at {directory!r} (no {PROVENANCE_FILE}).')
  check_provenance(found, expected, directory)
  fields = _fields(found['kind'], found['seq_len'], found['k'], found['vocab_size'],
                   found['value_dtype'])
  records = []
  for index in range(found['num_shards']):
    path = os.path.join(directory, shard_name(index, found['num_shards']))
    if not os.path.isfile(path):
      raise CacheMismatchError(f'The token cache at {directory!r} lacks shard {path}; rewrite '
                               'it.')
    reader = ArrayRecordReader(path)
    try:
      records += reader.read_all()
    finally:
      reader.close()
  size = sum(dtype.itemsize * int(np.prod(shape)) for _, dtype, shape in fields)
  if len(records) != found['num_rows'] or any(len(r) != size for r in records):
    raise CacheMismatchError(f'The token cache at {directory!r} holds {len(records)} rows for '
                             f"{found['num_rows']} (or rows of the wrong size); rewrite it.")
  data = np.frombuffer(b''.join(records), np.uint8).reshape(len(records), size)
  rows, offset = {}, 0
  for name, dtype, shape in fields:
    width = dtype.itemsize * int(np.prod(shape))
    array = data[:, offset:offset + width].copy().view(dtype).reshape((-1,) + shape)
    rows[name] = array.astype(np.int32 if 'ids' in name or 'indices' in name else np.float32)
    offset += width
  return rows, found
