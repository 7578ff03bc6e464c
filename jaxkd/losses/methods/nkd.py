"""Normalized knowledge distillation (Yang et al. 2023)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import (check_static_non_negative, check_static_temperature, kl,
                                   non_target_probs, split_log_probs, student_teacher,
                                   target_mask)
from jaxkd.losses.terms import Hyperparam, LogitTerm, Paper


def nkd_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
    non_target_weight: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Normalized knowledge-distillation loss, per example.

  .. math::
    \ell = -p^t_y \log p^s_y
    \;-\; w\, T^2 \sum_{i \ne y} \hat q^t_i \log \hat q^s_i,\quad
    p = \mathrm{softmax}(z),\ \hat q = \mathrm{softmax}(z_{i \ne y} / T)

  The target part uses temperature 1 on both sides and weighs the student's
  log-likelihood of the label by the teacher's target probability; the non-target part is
  a cross-entropy between the *normalised* non-target distributions at temperature ``T``
  (the same ``\hat q`` as DKD's NCKD). Both parts are cross-entropies, not KLs, so the
  loss is not 0 when student and teacher agree; and the target part, a label term
  weighted by the teacher's confidence, keeps pushing ``p^s_y`` up, so a student equal
  to the teacher is not a stationary point either (NKD replaces KD, it is not a
  divergence).

  Args:
    student_logits: ``[..., C]`` student logits, ``C >= 2`` (any float dtype; computed in
      >= float32).
    teacher_logits: ``[..., C]`` teacher logits, same shape. Gradients flow into it too
      (the authors detach the teacher's target probability); wrap it in
      ``jax.lax.stop_gradient`` if the teacher must not be trained.
    labels: ``[...]`` integer class indices in ``[0, C)``.
    temperature: temperature ``T > 0`` of the non-target part only (Python float or
      scalar array).
    non_target_weight: ``w`` (``gamma`` in the paper, 1.5 on ImageNet), ``>= 0``.

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per example; ``NaN`` where the
    label is out of range.

  References:
    Yang et al., `From Knowledge Distillation to Self-Knowledge Distillation: A Unified
    Approach with Normalized Loss and Customized Soft Labels
    <https://arxiv.org/abs/2303.13005>`_, ICCV 2023.
  """
  check_static_temperature(temperature)
  check_static_non_negative(non_target_weight, 'non_target_weight')
  student_logits, teacher_logits = student_teacher(student_logits, teacher_logits)
  is_target, in_range = target_mask(student_logits, labels)
  t = jnp.asarray(temperature, student_logits.dtype)
  s_target, _, _ = split_log_probs(student_logits, is_target)
  t_target, _, _ = split_log_probs(teacher_logits, is_target)
  target_part = -jnp.exp(t_target) * s_target
  _, _, s_log_q = split_log_probs(student_logits / t, is_target)
  _, _, t_log_q = split_log_probs(teacher_logits / t, is_target)
  # With a zero "log p_t", kl is the cross-entropy -sum q_t log q_s, 0 * log 0 = 0 included.
  cross_entropy = kl(non_target_probs(t_log_q, is_target), jnp.zeros_like(t_log_q),
                      s_log_q)
  weight = jnp.asarray(non_target_weight, cross_entropy.dtype)
  loss = target_part + weight * t**2 * cross_entropy
  return jnp.where(in_range, loss, jnp.nan)


@dataclasses.dataclass(frozen=True)
class NKD(LogitTerm):
  """Normalized KD (Yang et al. 2023, `nkd_loss`): the teacher's target probability weighs the
  student's target log-probability; the non-target parts are matched after normalisation."""

  temperature: Hyperparam = 1.0
  non_target_weight: float = 1.5

  name = 'nkd'
  # yzd-v/cls_KD NKDLoss: temp 1, gamma 1.5, CE 1.
  paper = Paper('Yang et al. 2023, From Knowledge Distillation to Self-Knowledge Distillation '
                '(NKD)',
                'https://arxiv.org/abs/2303.13005', weight=1.0, ce_weight=1.0)
  needs_labels = True

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    return nkd_loss(student_logits, teacher_logits, labels, temperature=temperature,
                    non_target_weight=self.non_target_weight)
