"""DistiLLM's adaptive off-policy variant of on-policy distillation (Ko et al. 2024,
"DistiLLM: Towards Streamlined Distillation for Large Language Models", arXiv 2402.03898):
the student's samples are kept in a replay buffer and reused, and the probability of
training on student data (phi, `student_data_fraction`'s start value) rises when the
validation loss stalls.

The rule implemented, as the authors' code runs it (`finetune.py`, type `adaptive-*`,
replay ratio 'decreasing'), at step t of T with u ~ U(0, 1) drawn from the step's coin key:

- u < phi (1 - t / T), or u < phi while the buffer is not yet full: the student samples a
  batch (`on_policy.student_rows`), it is written into the buffer (a ring of `buffer_rows`
  rows) and trained on;
- else u < phi: a batch of distinct rows drawn uniformly from the (full) buffer;
- else: the fixed batch.

At each evaluation, with L the validation loss and L_ref the one at the last raise
(initially the untrained student's): if L >= L_ref + `loss_tolerance` then
phi <- min(phi + `fraction_increment`, 1) and L_ref <- L (the authors: increment 0.1,
tolerance 0.1, capacity 1,000, phi_0 = 0). The buffer, phi and L_ref live in the train state
(`ReplayState.replay`), so they are checkpointed and a resumed run is exact; the buffer
draws come from the step's sample key. Single-program data parallelism (`jit`) only: under
pmap / shard_map each device would fill a buffer of its own.
"""
from __future__ import annotations

from typing import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxkd import on_policy
from jaxkd.state import DistillState, PyTree, TrainState, model_variables


@flax.struct.dataclass
class ReplayState(DistillState):
  """A student's train state plus `replay`: `tokens` int32 `[C, L + 1]` and `mask` float32
  `[C, L + 1]` (the buffer's rows), `size` and `next` (int32: rows held, where the next is
  written), `fraction` (float32 phi) and `reference_loss` (float32 L_ref)."""

  replay: PyTree


def create_replay_state(state: TrainState, tx: optax.GradientTransformation, *, rows: int,
                        width: int, settings: dict, reference_loss: float) -> ReplayState:
  """`state` (a `TrainState` or `DistillState`) with an empty buffer of `rows` rows of
  `width` tokens, phi = `settings['student_data_fraction']` and L_ref = `reference_loss`."""
  if isinstance(state, DistillState):
    loss_params, loss_state, opt_state = state.loss_params, state.loss_state, state.opt_state
  else:  # the update's DistillState path, with nothing of the objective's own
    loss_params, loss_state = {}, {}
    opt_state = tx.init({'model': state.params, 'loss': loss_params})
  replay = {'tokens': jnp.zeros((rows, width), jnp.int32),
            'mask': jnp.zeros((rows, width), jnp.float32),
            'size': jnp.zeros((), jnp.int32), 'next': jnp.zeros((), jnp.int32),
            'fraction': jnp.asarray(settings['student_data_fraction'], jnp.float32),
            'reference_loss': jnp.asarray(reference_loss, jnp.float32)}
  return ReplayState(step=state.step, params=state.params, batch_stats=state.batch_stats,
                     opt_state=opt_state, rng=state.rng, loss_params=loss_params,
                     loss_state=loss_state, replay=replay)


def raise_fraction(replay: dict, valid_loss: float, *, settings: dict) -> dict:
  """The buffer's scalars after an evaluation of validation loss `valid_loss` (host
  values): phi raised by `fraction_increment` (at most 1) and L_ref set to `valid_loss` when
  `valid_loss >= L_ref + loss_tolerance`; otherwise unchanged."""
  fraction, reference = float(replay['fraction']), float(replay['reference_loss'])
  if valid_loss >= reference + settings['loss_tolerance']:
    fraction = min(fraction + settings['fraction_increment'], 1.0)
    reference = valid_loss
  return {**replay, 'fraction': np.float32(fraction), 'reference_loss': np.float32(reference)}


def branch(u: jax.Array, replay: dict, step: jax.Array, num_steps: int) -> jax.Array:
  """0: the fixed batch, 1: fresh student samples, 2: rows from the buffer (module
  docstring's rule)."""
  fraction = replay['fraction']
  full = replay['size'] >= replay['tokens'].shape[0]
  fresh = (u < fraction * (1.0 - step / num_steps)) | ((u < fraction) & ~full)
  return jnp.where(fresh, 1, jnp.where(u < fraction, 2, 0)).astype(jnp.int32)


def wrap_update(update: Callable, *, student, settings: dict, sep_id: int, pad_id: int,
                num_steps: int, batch_sharding=None) -> Callable:
  """`on_policy.wrap_update`'s adaptive form: the state is a `ReplayState`; metrics add
  `replayed` (1 when the batch came from the buffer) and `student_data_fraction` (phi)."""
  if num_steps < 1:
    raise ValueError(f'num_steps={num_steps}: the adaptive schedule needs the run length.')

  def wrapped(state, batch, *args, axis_name=None):
    if axis_name is not None:
      raise ValueError("config.on_policy.adaptive keeps one replay buffer: run it with "
                       "parallel='jit', not pmap or shard_map.")
    coin_key, sample_key = on_policy.step_keys(state.rng, state.step)
    replay = state.replay
    which = branch(jax.random.uniform(coin_key), replay, state.step, num_steps)
    fixed = {k: batch[k] for k in ('tokens', 'label', 'mask')}
    zero = jnp.zeros((), jnp.float32)
    buffer = {k: replay[k] for k in ('tokens', 'mask', 'size', 'next')}
    capacity = replay['tokens'].shape[0]

    def keep(b, buffer):
      return b, zero, buffer

    def fresh(b, buffer):
      rows, failed = on_policy.student_rows(
          student, model_variables(state.params, state.batch_stats), b, sample_key,
          settings=settings, sep_id=sep_id, pad_id=pad_id)
      where = (buffer['next'] + jnp.arange(b['tokens'].shape[0])) % capacity
      count = b['tokens'].shape[0]
      buffer = {'tokens': buffer['tokens'].at[where].set(rows['tokens']),
                'mask': buffer['mask'].at[where].set(rows['mask'].astype(jnp.float32)),
                'size': jnp.minimum(buffer['size'] + count, capacity),
                'next': (buffer['next'] + count) % capacity}
      return (on_policy.rows_as_batch(rows), on_policy.generation_check(failed, rows['mask']),
              buffer)

    def replayed(b, buffer):
      index = jax.random.choice(jax.random.fold_in(sample_key, 1), capacity,
                                (b['tokens'].shape[0],), replace=False)
      rows = {'tokens': buffer['tokens'][index], 'mask': buffer['mask'][index]}
      return on_policy.rows_as_batch(rows), zero, buffer

    chosen, check, buffer = jax.lax.switch(which, (keep, fresh, replayed), fixed, buffer)
    chosen = on_policy.place_like_batch(chosen, batch_sharding, axis_name)
    state, metrics = update(state, {**batch, **chosen}, *args, axis_name=axis_name)
    state = state.replace(replay={**replay, **buffer})
    metrics.update(on_policy=(which == 1).astype(jnp.float32),
                   replayed=(which == 2).astype(jnp.float32), check_generation=check,
                   student_data_fraction=replay['fraction'])
    return state, metrics

  return wrapped
