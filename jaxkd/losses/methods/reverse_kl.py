"""Reverse KL, ``T^2 KL(p_s || p_t)``: mode-seeking distillation."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import kl, log_probs, temperature_scale
from jaxkd.losses.terms import Hyperparam, LogitTerm, Paper


def reverse_kl_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
    scale_by_temperature_squared: bool = True,
) -> jax.Array:
  r"""Reverse-KL distillation loss ``T**2 * KL(p_s || p_t)``, per example.

  .. math::
    \ell = T^2 \sum_c p^s_c (\log p^s_c - \log p^t_c),\quad
    p^s = \mathrm{softmax}(z^s / T),\ p^t = \mathrm{softmax}(z^t / T)

  The mode-seeking direction: the student is penalised for mass where the teacher has
  little, not for missing some of the teacher's modes. Classes the student gives
  probability exactly 0 contribute 0. The loss is infinite where the teacher gives
  probability exactly 0 (logit ``-inf``) to a class the student does not.

  Args:
    student_logits: ``[..., C]`` student logits (any float dtype; computed in >= float32).
    teacher_logits: ``[..., C]`` teacher logits, same shape. Gradients flow into it too;
      wrap it in ``jax.lax.stop_gradient`` if the teacher must not be trained.
    temperature: softmax temperature ``T > 0`` for both (Python float or scalar array).
    scale_by_temperature_squared: multiply by ``T**2`` (default), as in ``kd_loss``.

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Agarwal et al., `On-Policy Distillation of Language Models: Learning from
    Self-Generated Mistakes <https://arxiv.org/abs/2306.13649>`_, ICLR 2024 (reverse KL
    as the ``beta = 1`` end of the generalised JSD).
  """
  log_p_s, log_p_t, t = log_probs(student_logits, teacher_logits, temperature)
  return temperature_scale(t, scale_by_temperature_squared) * kl(
      jnp.exp(log_p_s), log_p_s, log_p_t)


@dataclasses.dataclass(frozen=True)
class ReverseKL(LogitTerm):
  """``T^2 KL(p_s || p_t)``: mode-seeking distillation (`reverse_kl_loss`)."""

  temperature: Hyperparam = 4.0

  name = 'reverse_kl'
  # No paper default (mode-seeking, e.g. Gu et al. 2024): the kd recipe's weights and T.
  paper = Paper('Agarwal et al. 2024, On-Policy Distillation of Language Models',
                'https://arxiv.org/abs/2306.13649', weight=0.9, ce_weight=0.1)

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    return reverse_kl_loss(student_logits, teacher_logits, temperature=temperature)
