"""Language models on the shared machinery: step batches from packed token rows, and the
metrics a language-model person reads (per-token loss, perplexity, bits per byte, top-1
accuracy, the expected calibration error of the top-1 probability, and teacher-student top-1
agreement), all over the masked targets only.

  rows = jaxkd.data.text.load('pydoc', 'valid', seq_len=257)     # tokens, mask [N, 257]
  step = make_lm_eval_step(model=student, teacher=teacher, parallel=parallel)
  sums = evaluate_lm(step, variables, rows, batch_size=32, parallel=parallel,
                     teacher_variables=teacher_vars)
  summarize_lm(sums, bytes_per_token=text.stats('pydoc', 'valid')['bytes_per_token'])
  # {'loss': nats/token, 'perplexity', 'bits_per_byte', 'accuracy', 'ece', 'agreement',
  #  'tokens'}

Bits per byte divide by the split's bytes per token measured with the run's tokenizer
(`text.stats`), so models with different tokenizers compare.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxkd import distributed, losses
from jaxkd.data import text
from jaxkd.losses import chunked
from jaxkd.parallel import Parallel

# Expected calibration error (Guo et al. 2017, On Calibration of Modern Neural Networks):
# the top-1 probabilities in 15 equal-width bins over [0, 1].
ECE_BINS = 15


def lm_batch(rows: dict, index=slice(None)) -> dict:
  """A step batch from packed rows (`text.load`'s `tokens`, `mask` `[N, L + 1]`): inputs
  `tokens [B, L]`, targets `label [B, L]` (the next tokens), weights `mask [B, L]`. Other
  entries of `rows` are per input position already (`[N, L, ...]`, a teacher cache's
  targets) and come along as they are."""
  tokens, mask = rows['tokens'][index], rows['mask'][index]
  return {'tokens': np.asarray(tokens[:, :-1], np.int32),
          'label': np.asarray(tokens[:, 1:], np.int32),
          'mask': np.asarray(mask[:, :-1], np.float32),
          **{k: v[index] for k, v in rows.items() if k not in ('tokens', 'mask')}}


def train_batches(rows: dict, *, batch_size: int, seed: int,
                  steps_per_epoch: int = 0) -> tuple[Callable, int]:
  """`(batches(epoch, start) -> iterator, steps_per_epoch)` for `jaxkd.loop.fit`.

  Step `g`'s batch is a function of `g` alone: pass `g // passes` over the rows in the
  permutation drawn from `(seed, pass)` (the last partial batch of a pass dropped), so a
  resumed run (at any step) sees the batches the uninterrupted one would; with several
  processes each gets its share of every batch (`distributed.process_rows`). The loop's
  "epoch" is `steps_per_epoch` steps (default one pass): it evaluates at each epoch's end."""
  count = len(rows['tokens'])
  per_pass = count // batch_size
  if per_pass == 0:
    raise ValueError(f'{count} rows cannot fill one batch of {batch_size}; lower batch_size.')
  steps_per_epoch = steps_per_epoch or per_pass

  def batch_at(step: int) -> dict:
    pass_, offset = divmod(step, per_pass)
    order = np.random.default_rng([seed, pass_]).permutation(count)
    return lm_batch(rows, np.sort(order[offset * batch_size:(offset + 1) * batch_size]))

  def batches(epoch: int, start: int) -> Iterator[dict]:
    for step in range(epoch * steps_per_epoch + start, (epoch + 1) * steps_per_epoch):
      yield distributed.process_rows(batch_at(step))

  return batches, steps_per_epoch


def eval_batches(rows: dict, *, batch_size: int) -> Iterator[dict]:
  """Every row once, in order; the last batch padded with rows of mask 0. With several
  processes, each gets its share of every batch (as `train_batches`)."""
  count = len(rows['tokens'])
  for start in range(0, count, batch_size):
    batch = lm_batch(rows, slice(start, start + batch_size))
    pad = batch_size - len(batch['tokens'])
    if pad:
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield distributed.process_rows(batch)


def make_lm_eval_step(*, model: nn.Module, teacher: nn.Module | None = None,
                      parallel: Parallel = Parallel(),
                      vocab_chunk: int | None = None) -> Callable:
  """Eval step `(variables, batch, teacher_variables) -> sums`, compiled once (pass `()`
  as `teacher_variables` without a teacher).

  Sums over the masked targets of the batch (psum'd over devices): `loss_sum` (nats),
  `count`, `correct` (top-1 = target), per calibration bin of the top-1 probability
  (`ECE_BINS`) `bin_count`, `bin_confidence` and `bin_correct`, and with a teacher `agreement` (student top-1 =
  teacher top-1) and `teacher_loss_sum`. `vocab_chunk`: logits that many positions at a
  time (`jaxkd.losses.chunked`), never `[B, L, V]`."""
  objective = losses.make_objective(hard_weight=1.0, soft_weight=0.0)

  def evaluate(variables, batch, teacher_variables, *, axis_name=None):
    hidden = lambda m, v: chunked.Hidden(*m.apply(  # noqa: E731
        v, batch['tokens'], train=False, method='hidden'))
    student = hidden(model, variables)
    teachers = [] if teacher is None else [hidden(teacher, teacher_variables)]
    chunk = vocab_chunk or batch['tokens'].shape[1]
    labels, mask = batch['label'], batch['mask'].astype(jnp.float32)
    total, _, stats = chunked.apply_in_chunks(objective, student, teachers,
                                              {'label': labels}, chunk=chunk)
    correct = (stats['prediction'] == labels) * mask
    sums = {'loss_sum': jnp.sum(total * mask), 'count': jnp.sum(mask),
            'correct': jnp.sum(correct)}
    # per calibration bin: targets, their summed top-1 probability and top-1 hits
    bins = jnp.minimum((stats['confidence'] * ECE_BINS).astype(jnp.int32), ECE_BINS - 1)
    in_bin = jax.nn.one_hot(bins, ECE_BINS, dtype=jnp.float32) * mask[..., None]
    sums.update(bin_count=jnp.sum(in_bin, (0, 1)),
                bin_confidence=jnp.einsum('blk,bl->k', in_bin, stats['confidence']),
                bin_correct=jnp.einsum('blk,bl->k', in_bin, correct))
    if teacher is not None:
      sums['agreement'] = jnp.sum((stats['prediction'] == stats['teacher0_top1']) * mask)
      teacher_total, _, _ = chunked.apply_in_chunks(objective, teachers[0], [],
                                                    {'label': labels}, chunk=chunk)
      sums['teacher_loss_sum'] = jnp.sum(teacher_total * mask)
    return sums if axis_name is None else jax.lax.psum(sums, axis_name)

  return parallel.compile(evaluate, num_step_args=1, donate=False)


def evaluate_lm(step: Callable, variables, rows: dict, *, batch_size: int,
                parallel: Parallel = Parallel(), teacher_variables=()) -> dict:
  """The eval step's sums over every row of `rows` (host floats)."""
  totals: dict = {}
  for batch in eval_batches(rows, batch_size=batch_size):
    sums = jax.device_get(parallel.unreplicate(
        step(variables, parallel.shard_batch(batch), teacher_variables)))
    for key, value in sums.items():
      value = np.asarray(value, np.float64)
      totals[key] = totals.get(key, 0.0) + value
  return {k: float(v) if v.ndim == 0 else v for k, v in totals.items()}


def summarize_lm(sums: dict, *, bytes_per_token: float) -> dict:
  """Per-token metrics from summed eval outputs: `loss` (nats per target token),
  `perplexity` (exp of it), `bits_per_byte` (`loss / ln 2 / bytes_per_token`), `accuracy`,
  `ece` (expected calibration error: sum over bins of |hits - summed confidence| / targets),
  and with a teacher `agreement` and `teacher_loss`, `teacher_bits_per_byte`; `tokens`."""
  count = max(sums['count'], 1.0)
  loss = sums['loss_sum'] / count
  out = {'loss': loss, 'perplexity': math.exp(min(loss, 700.0)),
         'bits_per_byte': text.bits_per_byte(loss, bytes_per_token),
         'accuracy': sums['correct'] / count, 'tokens': int(sums['count'])}
  if 'bin_count' in sums:  # sum over bins of |hits - confidence|, per target
    out['ece'] = float(np.sum(np.abs(np.asarray(sums['bin_correct']) -
                                     np.asarray(sums['bin_confidence']))) / count)
  if 'agreement' in sums:
    teacher_loss = sums['teacher_loss_sum'] / count
    out.update(agreement=sums['agreement'] / count, teacher_loss=teacher_loss,
               teacher_bits_per_byte=text.bits_per_byte(teacher_loss, bytes_per_token))
  return out
