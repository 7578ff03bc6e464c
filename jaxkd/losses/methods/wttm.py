"""Weighted transformed teacher matching (Zheng & Yang 2024): TTM weighted per example by
the teacher's uncertainty."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd.losses.methods.ttm import TTM, ttm_parts
from jaxkd.losses.terms import Hyperparam


def wttm_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Weighted transformed-teacher-matching loss, per example.

  .. math::
    \ell = U(p^t)\, \mathrm{KL}\!\left(\tilde p^t \,\|\, p^s\right),\quad
    U(p^t) = \sum_c (p^t_c)^{1/T},\quad p = \mathrm{softmax}(z)

  with ``\tilde p^t`` as in :func:`ttm_loss`. The weight ``U`` is the normaliser of the
  power transform; for ``T > 1`` it lies in ``[1, C^{1 - 1/T}]`` and grows with the
  smoothness of the teacher's (temperature-1) distribution, so examples where the
  teacher is unsure count more. No ``T**2`` factor, as in the paper and the authors'
  code.

  Args:
    student_logits: ``[..., C]`` student logits, used at temperature 1 (any float dtype;
      computed in >= float32).
    teacher_logits: ``[..., C]`` teacher logits, same shape; they set both the target
      ``\tilde p^t`` and the weight ``U``, and gradients reach them through both (wrap
      them in ``jax.lax.stop_gradient`` if the teacher must not be trained).
    temperature: ``T > 0`` (Python float or scalar array): the target is
      ``softmax(z^t / T)`` and the weight's exponent is ``1 / T``.

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) weighted loss per example.

  References:
    Zheng & Yang, `Knowledge Distillation Based on Transformed Teacher Matching
    <https://arxiv.org/abs/2402.11148>`_, ICLR 2024 (sec. 4, WTTM).
  """
  kl, log_power_sum = ttm_parts(student_logits, teacher_logits, temperature)
  return jnp.exp(log_power_sum) * kl


@dataclasses.dataclass(frozen=True)
class WTTM(TTM):
  """Weighted TTM (Zheng & Yang 2024, `wttm_loss`): each example's TTM weighted by the power
  sum of the teacher's probabilities (larger for less confident teachers)."""

  temperature: Hyperparam = 5.0

  name = 'wttm'
  # The README's WTTM example: gamma = 0.2 (T = 5), weight 4, CE 1.
  paper = dataclasses.replace(TTM.paper, weight=4.0)

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    return wttm_loss(student_logits, teacher_logits, temperature=temperature)
