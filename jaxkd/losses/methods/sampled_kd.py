"""Random-sampling KD (Anshumann et al. 2025): the student's cross-entropy against K token
ids drawn from the teacher and stored, an unbiased estimate of the full KD gradient."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd.losses.hyperparams import value_at
from jaxkd.losses.numerics import check_static_temperature, upcast
from jaxkd.losses.terms import Paper, Term

# The batch entry a sampled teacher cache fills (`jaxkd.cache_lm.read_token_cache`).
SAMPLE_IDS = 'teacher_sample_ids'


def sampled_kd_loss(
    student_logits: jax.typing.ArrayLike,
    sample_ids: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike = 1.0,
) -> jax.Array:
  r"""KD against K draws from the teacher, per example (position).

  .. math::
    \ell = -\frac{T^2}{K} \sum_{j=1}^{K} \log \mathrm{softmax}(z^s / T)_{y_j},\quad
    y_1, \dots, y_K \sim p^t = \mathrm{softmax}(z^t / T)

  i.e. ``T**2 * CE(p_hat, softmax(student / T))`` with ``p_hat`` the draws' empirical
  distribution. Since ``E[p_hat] = p^t``, its expectation over the draws is
  ``T**2 * CE(p^t, p^s)``, the `kd_loss` plus the teacher's entropy (a constant), and its
  gradient ``T (p^s - p_hat)`` has the full-KD gradient ``T (p^s - p^t)`` as expectation:
  an unbiased target, unlike top-k truncation (renormalised or with a rest bucket). The
  draws come from `jaxkd.cache.sample_teacher_tokens` at the same ``T``.

  Args:
    student_logits: ``[..., V]`` student logits (any float dtype; computed in >= float32).
    sample_ids: int ``[..., K]`` token ids drawn from the teacher at ``T``, the same leading
      axes as ``student_logits``. An id outside ``0..V-1`` gives NaN.
    temperature: ``T > 0``, the temperature the ids were drawn at.

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Anshumann et al., `Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs
    <https://arxiv.org/abs/2503.16870>`_, ACL 2025.
  """
  check_static_temperature(temperature)
  student_logits = upcast(student_logits)
  sample_ids = jnp.asarray(sample_ids)
  if not jnp.issubdtype(sample_ids.dtype, jnp.integer):
    raise ValueError(f'sample_ids must hold integer token ids, got dtype {sample_ids.dtype}.')
  if sample_ids.shape[:-1] != student_logits.shape[:-1] or sample_ids.ndim < 1:
    raise ValueError(f'sample_ids shape {sample_ids.shape} must be the student\'s leading '
                     f'axes {student_logits.shape[:-1]} plus one axis of draws.')
  t = jnp.asarray(temperature, student_logits.dtype)
  log_q = jax.nn.log_softmax(student_logits / t, axis=-1)
  vocab = student_logits.shape[-1]
  valid = (sample_ids >= 0) & (sample_ids < vocab)
  picked = jnp.take_along_axis(log_q, jnp.where(valid, sample_ids, 0), axis=-1)
  picked = jnp.where(valid, picked, jnp.nan)
  return -(t * t) * jnp.mean(picked, axis=-1)


@dataclasses.dataclass(frozen=True)
class SampledKD(Term):
  """Random-sampling KD (Anshumann et al. 2025, `sampled_kd_loss`) from a sampled teacher
  cache: reads the draws `batch['teacher_sample_ids']` (`[..., K]`), not a live teacher.
  `temperature` must be the cache's (the recipe checks it)."""

  temperature: float = 1.0

  name = 'sampled_kd'
  family = 'logit'
  # The teacher's own distribution as the proposal (T = 1), the sampled loss in place of
  # full KD. The cross-entropy weight beside it is jaxkd's choice (KD alone), as for `kd`
  # with a cache: the paper compares the sparse losses with full KD, not their CE mixes.
  paper = Paper('Anshumann et al. 2025, Sparse Logit Sampling: Accelerating Knowledge '
                'Distillation in LLMs', 'https://arxiv.org/abs/2503.16870',
                weight=1.0, ce_weight=0.0)
  needs_teacher = False  # the teacher is the cache in the batch
  cache_kind = 'sampled'

  def __post_init__(self):
    if callable(self.temperature):
      raise ValueError('sampled_kd\'s temperature is the one its draws were made at: a '
                       'constant, not a schedule.')
    super().__post_init__()

  def hyperparams(self, step, params=None):
    del params
    return {'temperature': value_at(self.temperature, step)}

  def __call__(self, ctx):
    ids = ctx.batch.get(SAMPLE_IDS)
    if ids is None:
      raise ValueError(f"sampled_kd reads batch['{SAMPLE_IDS}'] (K draws per position from "
                       'the teacher): write a sampled teacher cache (jaxkd.cache_lm, or '
                       "the language-model recipe's teacher_cache={'kind': 'sampled', ...}).")
    return sampled_kd_loss(ctx.student.logits, ids, temperature=self.temperature), {}, ctx.state
