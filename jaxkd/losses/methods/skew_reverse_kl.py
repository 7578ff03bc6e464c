"""Skew reverse KL, ``T^2 KL(p_s || a p_s + (1 - a) p_t)``: DistiLLM's mode-seeking side."""
from __future__ import annotations

import dataclasses

import jax

from jaxkd.losses.methods.skew_kl import SkewKL, skew_divergence


def skew_reverse_kl_loss(
    student_logits: jax.typing.ArrayLike, teacher_logits: jax.typing.ArrayLike, *,
    skew: jax.typing.ArrayLike = 0.1, temperature: jax.typing.ArrayLike = 1.0,
    scale_by_temperature_squared: bool = True) -> jax.Array:
  r"""Skew reverse Kullback-Leibler divergence of DistiLLM, per position.

  .. math::
    \ell = T^2\, \mathrm{KL}\big(p^s \,\|\, a\, p^s + (1 - a)\, p^t\big),\quad
    p = \mathrm{softmax}(z / T)

  ``a = 0`` is ``reverse_kl_loss``; a positive ``a`` keeps the loss finite (at most
  ``-log a``) where the teacher gives a class no mass.

  Args:
    student_logits, teacher_logits, temperature, scale_by_temperature_squared: as for
      `skew_kl_loss` (``[..., V]`` logits of the same shape).
    skew: ``a`` in ``[0, 1)``, the student's share of the mixture (0.1 in the authors' code).

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per position.

  References:
    Ko et al., DistiLLM (see `skew_kl_loss`), ICML 2024, eq. (5).
  """
  return skew_divergence(student_logits, teacher_logits, skew=skew, temperature=temperature,
                         scale_by_temperature_squared=scale_by_temperature_squared,
                         reverse=True)


@dataclasses.dataclass(frozen=True)
class SkewReverseKL(SkewKL):
  """DistiLLM's skew reverse KL ``T^2 KL(p_s || a p_s + (1 - a) p_t)``
  (`skew_reverse_kl_loss`); the paper's settings are skew KL's."""

  name = 'skew_reverse_kl'

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    return skew_reverse_kl_loss(student_logits, teacher_logits, skew=self.skew,
                                temperature=temperature)
