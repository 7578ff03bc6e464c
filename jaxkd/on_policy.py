"""On-policy distillation of language models: the student learns the teacher's per-token
distributions on sequences it samples itself, not only on the fixed corpus.

GKD (Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from
Self-Generated Mistakes", arXiv 2306.13649) minimises

    (1 - lambda) E_{y ~ data} D(p || q_theta)(y | x) + lambda E_{y ~ q_theta} D(p || q_theta)(y | x)

with no gradient through the sampling: with probability `student_data_fraction` (the paper's
lambda) a batch's fixed continuations are replaced by the student's own samples of the same
prompts (the first `prompt_len` tokens of each row, `new_tokens` sampled at `temperature`,
stopping after the separator), the loss mask covering the sampled continuation; the
objective's per-token terms (`jsd` = the paper's JSD(beta), `reverse_kl`, `skew_kl`, `kd`)
are the divergence D, against the live teacher on that same sequence.

    settings = on_policy.check_settings({'student_data_fraction': 0.5, 'prompt_len': 32,
                                         'new_tokens': 96}, seq_len=256, batch_size=16)
    step = make_distill_step(..., wrap_update=functools.partial(
        on_policy.wrap_update, student=student, settings=settings, sep_id=tok.sep_id,
        pad_id=tok.pad_id))

The coin and the samples are drawn inside the jitted step from the run's key folded with the
step number (`step_keys`), so a resumed run draws what the uninterrupted one drew. The coin
picks a branch of `jax.lax.cond`: generation (a `while_loop` of cached decoding) costs time
only in the steps that use it, and the step stays one compiled program (an always-generate
`jnp.where` would pay the decoding at lambda = 0.5 twice as often as needed). A failed
generation (a non-finite logit while sampling, or no token generated in the whole batch)
shows as the metric `check_generation` > 0, which `jaxkd.loop.check_numerics` turns into an
error at the next log step, before any checkpoint of that state is saved; the batch is never
silently swapped back to the fixed one.

DistiLLM's adaptive off-policy variant (Ko et al. 2024, arXiv 2402.03898; `adaptive=True`):
see `jaxkd.on_policy_replay`.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from jaxkd import generate
from jaxkd.state import model_variables, step_key
from jaxkd.steps import pmean

# `config.on_policy`'s settings and their defaults (`jaxkd.recipes.language_model`).
DEFAULTS = {
    'student_data_fraction': 0.5,  # GKD's lambda; DistiLLM's initial phi when adaptive
    'prompt_len': 32, 'new_tokens': 96,
    'temperature': 1.0, 'top_k': 0, 'top_p': 1.0,  # the student's sampler
    'adaptive': False,  # DistiLLM's replay buffer + raised probability (on_policy_replay)
    'buffer_rows': 1000, 'fraction_increment': 0.1, 'loss_tolerance': 0.1,
}
# A stream of the step's key of its own: the coin and the samples are independent of the
# augmentation and dropout keys `steps.augmented_batch` splits from the same step key.
_STREAM = 0x6f6e70  # 'onp'


def check_settings(on_policy: dict, *, seq_len: int, batch_size: int) -> dict:
  """`on_policy` with the defaults filled in, checked: one ValueError naming a bad setting,
  its value and what is valid."""
  unknown = sorted(set(on_policy) - set(DEFAULTS))
  if unknown:
    raise ValueError(f'config.on_policy: unknown settings {unknown}; known: {sorted(DEFAULTS)}.')
  settings = {**DEFAULTS, **on_policy}

  def bad(name, valid):
    return ValueError(f'config.on_policy.{name}={settings[name]!r}: {valid}.')

  for name in ('student_data_fraction', 'fraction_increment'):
    value = settings[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
      raise bad(name, 'must be a probability in [0, 1]')
  for name in ('prompt_len', 'new_tokens', 'buffer_rows'):
    if isinstance(settings[name], bool) or not isinstance(settings[name], int) \
        or settings[name] < 1:
      raise bad(name, 'must be an integer >= 1')
  total = settings['prompt_len'] + settings['new_tokens']
  if total > seq_len:
    raise ValueError(f'config.on_policy: prompt_len + new_tokens = {total} exceeds seq_len='
                     f'{seq_len} (the longest sequence the student decodes); lower one of them.')
  temperature = settings['temperature']
  if not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
    raise bad('temperature', 'must be > 0 (the student samples; greedy would be SeqKD of '
              'the student)')
  if not isinstance(settings['top_k'], int) or settings['top_k'] < 0:
    raise bad('top_k', 'must be an integer >= 0 (0: no limit)')
  if not isinstance(settings['top_p'], (int, float)) or not 0 < settings['top_p'] <= 1:
    raise bad('top_p', 'must be in (0, 1] (1: no nucleus cut)')
  if not isinstance(settings['adaptive'], bool):
    raise bad('adaptive', 'must be True or False')
  if not isinstance(settings['loss_tolerance'], (int, float)) or settings['loss_tolerance'] < 0:
    raise bad('loss_tolerance', 'must be >= 0 (nats per token)')
  if settings['adaptive'] and settings['buffer_rows'] < batch_size:
    raise ValueError(f"config.on_policy.buffer_rows={settings['buffer_rows']} is below "
                     f'batch_size={batch_size}: a replayed batch draws batch_size distinct rows.')
  return settings


def step_keys(rng: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`(coin_key, sample_key)` of step `step` of a run whose state holds `rng`: the run's
  key folded with the step (`jaxkd.state.step_key`), then with this scheme's stream."""
  coin_key, sample_key = jax.random.split(jax.random.fold_in(step_key(rng, step), _STREAM))
  return coin_key, sample_key


def prompts_of(batch: dict, prompt_len: int) -> tuple[jax.Array, jax.Array]:
  """`(prompts int32 [B, prompt_len], lengths int32 [B])` of a step batch (`tokens`, `mask`
  `[B, L]`): each row's first `prompt_len` tokens, of which its first token and every masked
  target are real (`jaxkd.seqkd.prompts_of`'s rule, traceable)."""
  real = 1 + jnp.sum(batch['mask'][:, :prompt_len - 1] > 0, axis=1)
  return (batch['tokens'][:, :prompt_len].astype(jnp.int32),
          jnp.minimum(real, prompt_len).astype(jnp.int32))


def rows_as_batch(rows: dict) -> dict:
  """A step batch from rows `{'tokens', 'mask'}` `[B, L + 1]` (`jaxkd.language.lm_batch`'s
  split into inputs, next-token targets and weights, traceable)."""
  return {'tokens': rows['tokens'][:, :-1].astype(jnp.int32),
          'label': rows['tokens'][:, 1:].astype(jnp.int32),
          'mask': rows['mask'][:, :-1].astype(jnp.float32)}


def student_rows(student, variables, batch: dict, key: jax.Array, *, settings: dict,
                 sep_id: int, pad_id: int) -> tuple[dict, jax.Array]:
  """The student's continuations of `batch`'s prompts as rows `[B, L + 1]` (the width of
  the fixed rows; `generate.as_rows`' convention, padded with `pad_id` and mask 0), and
  `failed` float32 `[B]`: 1 where the sampled continuation's log-probability is not finite
  (a non-finite logit while sampling). Traceable; nothing carries a gradient."""
  prompts, lengths = prompts_of(batch, settings['prompt_len'])
  out = generate.sample(student, variables, prompts, lengths, key=key,
                        max_new_tokens=settings['new_tokens'],
                        temperature=settings['temperature'], top_k=settings['top_k'],
                        top_p=settings['top_p'], stop_token=sep_id, pad_token=pad_id)
  rows = generate.as_rows(out)
  width = batch['tokens'].shape[1] + 1
  extra = width - rows['tokens'].shape[1]
  rows = {'tokens': jnp.pad(rows['tokens'], ((0, 0), (0, extra)), constant_values=pad_id),
          'mask': jnp.pad(rows['mask'], ((0, 0), (0, extra)))}
  return rows, (~jnp.isfinite(out.log_prob)).astype(jnp.float32)


def generation_check(failed: jax.Array, mask: jax.Array) -> jax.Array:
  """The `check_generation` metric: the fraction of rows whose sampling failed, or 1 when
  the batch's continuations hold no token at all."""
  return jnp.where(jnp.sum(mask) > 0, jnp.mean(failed), 1.0)


def place_like_batch(batch: dict, sharding, axis_name: str | None) -> dict:
  """`batch` constrained to `sharding` under jit (a replicated sample would otherwise make
  XLA run the whole update replicated); unchanged per device (pmap, shard_map)."""
  if sharding is None or axis_name is not None:
    return batch
  return jax.lax.with_sharding_constraint(batch, sharding)


def _sampled(student, settings, sep_id, pad_id, axis_name):
  """`fn(state, batch, sample_key) -> (batch, check)`: the student's samples as the batch."""

  def fn(state, batch, sample_key):
    if axis_name is not None:  # each shard samples its own rows
      sample_key = jax.random.fold_in(sample_key, jax.lax.axis_index(axis_name))
    variables = model_variables(state.params, state.batch_stats)
    rows, failed = student_rows(student, variables, batch, sample_key, settings=settings,
                                sep_id=sep_id, pad_id=pad_id)
    return rows_as_batch(rows), generation_check(failed, rows['mask'])

  return fn


def wrap_update(update: Callable, *, student, settings: dict, sep_id: int, pad_id: int,
                batch_sharding: jax.sharding.Sharding | None = None,
                num_steps: int = 0) -> Callable:
  """GKD around a per-device student update `(state, batch, *args, axis_name)` (e.g.
  `jaxkd.steps.build_update`'s with a live teacher): each step, with probability
  `settings['student_data_fraction']` (a coin from `step_keys`), the batch's `tokens`,
  `label` and `mask` become the student's samples of its prompts (`student_rows`), else
  they stay. Adds the metrics `on_policy` (1 when the step trained on the student's samples;
  its mean over a log window is the fraction) and `check_generation` (see the module
  docstring). `batch_sharding` (under jit: `Parallel.batch_sharding()`) keeps the chosen
  batch where the fixed one was, so the update is partitioned as without this scheme (and at
  fraction 0 computes bit for bit what it computes alone). With `settings['adaptive']`,
  DistiLLM's variant (`on_policy_replay`; the state a `ReplayState`, `num_steps` the run's
  length)."""
  if settings['adaptive']:
    from jaxkd import on_policy_replay
    return on_policy_replay.wrap_update(update, student=student, settings=settings,
                                        sep_id=sep_id, pad_id=pad_id,
                                        batch_sharding=batch_sharding, num_steps=num_steps)
  fraction = float(settings['student_data_fraction'])

  def wrapped(state, batch, *args, axis_name=None):
    coin_key, sample_key = step_keys(state.rng, state.step)
    use_student = jax.random.bernoulli(coin_key, fraction)
    fixed = {k: batch[k] for k in ('tokens', 'label', 'mask')}
    sample = _sampled(student, settings, sep_id, pad_id, axis_name)
    chosen, check = jax.lax.cond(
        use_student, lambda b: sample(state, b, sample_key),
        lambda b: (b, jnp.zeros((), jnp.float32)), fixed)
    chosen = place_like_batch(chosen, batch_sharding, axis_name)
    state, metrics = update(state, {**batch, **chosen}, *args, axis_name=axis_name)
    metrics.update(on_policy=use_student.astype(jnp.float32),
                   check_generation=pmean(check, axis_name))
    return state, metrics

  return wrapped
