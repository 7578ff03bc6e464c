"""Transformed teacher matching (Zheng & Yang 2024): the temperature on the teacher only."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import check_static_temperature, kl, student_teacher
from jaxkd.losses.terms import Hyperparam, LogitTerm, Paper


def ttm_parts(student_logits, teacher_logits, temperature):
  """``KL(softmax(z_t / T) || softmax(z_s))`` and ``log sum_c softmax(z_t)_c ** (1/T)``."""
  check_static_temperature(temperature)
  student_logits, teacher_logits = student_teacher(student_logits, teacher_logits)
  t = jnp.asarray(temperature, student_logits.dtype)
  log_p_s = jax.nn.log_softmax(student_logits, axis=-1)
  # log p_t^(1/T) = log_softmax(z_t) / T; normalising it gives log_softmax(z_t / T).
  log_powered = jax.nn.log_softmax(teacher_logits, axis=-1) / t
  log_power_sum = jax.nn.logsumexp(log_powered, axis=-1)
  log_p_t = log_powered - log_power_sum[..., None]
  return kl(jnp.exp(log_p_t), log_p_t, log_p_s), log_power_sum


def ttm_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Transformed-teacher-matching loss, per example.

  .. math::
    \ell = \mathrm{KL}\!\left(\tilde p^t \,\|\, p^s\right),\quad
    \tilde p^t_c = \frac{(p^t_c)^{1/T}}{\sum_j (p^t_j)^{1/T}}
    = \mathrm{softmax}(z^t / T)_c,\quad p = \mathrm{softmax}(z)

  KD with the temperature dropped on the student's side. Zheng & Yang show this equals
  KD plus a Rényi-entropy regulariser on the student. As in the paper (and the authors'
  code), there is no ``T**2`` factor: the student's logits are not divided by ``T``, so
  its gradient, ``p^s - \tilde p^t``, does not shrink with ``T``. The authors' code takes
  the exponent ``gamma = 1 / T`` instead of ``T``.

  Args:
    student_logits: ``[..., C]`` student logits, used at temperature 1 (any float dtype;
      computed in >= float32).
    teacher_logits: ``[..., C]`` teacher logits, same shape. Gradients flow into it too;
      wrap it in ``jax.lax.stop_gradient`` if the teacher must not be trained.
    temperature: teacher temperature ``T > 0`` (Python float or scalar array); the
      student is not softened.

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Zheng & Yang, `Knowledge Distillation Based on Transformed Teacher Matching
    <https://arxiv.org/abs/2402.11148>`_, ICLR 2024.
  """
  kl, _ = ttm_parts(student_logits, teacher_logits, temperature)
  return kl


@dataclasses.dataclass(frozen=True)
class TTM(LogitTerm):
  """Transformed teacher matching (Zheng & Yang 2024, `ttm_loss`): only the teacher is
  softened (power transform ``gamma = 1 / temperature``); no ``T^2`` factor."""

  temperature: Hyperparam = 10.0

  name = 'ttm'
  # zkxufo/TTM README: gamma = 0.1 (T = 10), weight 45, CE 1.
  paper = Paper('Zheng & Yang 2024, Knowledge Distillation Based on Transformed Teacher Matching',
                'https://arxiv.org/abs/2402.11148', weight=45.0, ce_weight=1.0)

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    return ttm_loss(student_logits, teacher_logits, temperature=temperature)
