"""The classic objective: hard-label cross-entropy + soft (distillation) loss, per example.

`make_objective(hard_weight=, soft_weight=, temperature=)` is the shorthand for the terms
`hard` (`ce`) and `soft` (`kd`) of a `jaxkd.losses.Objective`, with the metric names the
steps log (`hard_loss`, `soft_loss`, `hard_weight`, `soft_weight`, `temperature`):

  objective = make_objective(hard_weight=0.1, soft_weight=0.9, temperature=4.0)
  per_example, components = objective(student_logits, labels, teacher_logits, step=step)
  loss = jnp.mean(per_example)  # the step reduces, once
"""
from __future__ import annotations

from typing import Sequence

from jaxkd.losses.terms import (KD, CrossEntropy, Hyperparam, Objective, is_constant_zero,
                                normalised_teacher_weights, validated)

__all__ = ['make_objective']


def make_objective(
    *,
    hard_weight: Hyperparam,
    soft_weight: Hyperparam,
    temperature: Hyperparam | None = None,
    label_smoothing: float = 0.0,
    teacher_weights: Sequence[float] | None = None,
    num_teachers: int | None = None,
    multi_teacher: str = 'sum',
    standardize: bool = False,
    scale_by_temperature_squared: bool = True,
) -> Objective:
  r"""Builds and validates the classic per-example training objective.

  .. math::
    \ell = w_h(s)\,\ell_{CE}(z^s, y) + w_s(s)\,\ell_{KD}(z^s, z^{t_1..t_N}; T(s))

  with ``soft = sum_i v_i * kd_loss(student, teacher_i)`` for ``multi_teacher='sum'``, or
  ``soft = kd_loss(student, sum_i v_i * softmax(teacher_i / T))`` for ``'ensemble'``
  (Hinton et al. 2015, sec. 2: ensemble of soft targets), where ``v`` is `teacher_weights`
  normalised to sum to 1 (equal weights when None). With one teacher both modes are plain
  KD. Because ``v`` sums to 1 the soft term keeps one teacher's scale for any ``N``; scale
  `soft_weight` for an unnormalised sum.

  Args:
    hard_weight: weight ``w_h >= 0`` of the hard-label loss; a float or a schedule of the
      step (``optax.Schedule``). A constant 0 gives a soft-only objective (labels may then
      be None).
    soft_weight: weight ``w_s >= 0`` of the soft loss; a float or a schedule. A constant 0
      gives a supervised objective (no teacher needed, `temperature` may be None).
    temperature: ``T > 0``, a float or a schedule; required unless `soft_weight` is 0.
    label_smoothing: in ``[0, 1]``, passed to the hard loss.
    teacher_weights: non-negative per-teacher weights, not all zero; normalised to sum 1.
    num_teachers: if given, the number of teachers the objective will be called with
      (checked against `teacher_weights` now, and against the call's teachers).
    multi_teacher: 'sum' or 'ensemble'.
    standardize: z-score both logits before softening (logit standardisation, Sun et al.
      2024); `temperature` is then their base temperature.
    scale_by_temperature_squared: multiply the soft loss by ``T**2`` (Hinton et al.).

  Returns:
    An `Objective` with terms ``hard`` and ``soft``: ``objective(student_logits [B, C],
    labels [B] | None, teacher_logits [B, C] | sequence | None, *, step) -> (total [B],
    {'hard': [B], 'soft': [B], ...})``, ``objective.hyperparams(step)`` giving the current
    weights and temperature.

  Raises:
    ValueError: naming the argument, for a temperature <= 0 (a schedule's value at step
      0), negative or non-finite weights, both weights constant 0, unknown names, a bad
      label_smoothing, or teacher_weights of the wrong length, negative or all zero.

  References:
    Hinton, Vinyals, Dean, `Distilling the Knowledge in a Neural Network
    <https://arxiv.org/abs/1503.02531>`_, 2015.
  """
  hard_weight = validated('hard_weight', hard_weight, positive=False)
  soft_weight = validated('soft_weight', soft_weight, positive=False)
  if is_constant_zero(hard_weight) and is_constant_zero(soft_weight):
    raise ValueError('hard_weight and soft_weight are both 0, so the objective is '
                     'identically zero; set at least one of them > 0.')
  if temperature is None and not is_constant_zero(soft_weight):
    raise ValueError('temperature is required when soft_weight is not 0; pass e.g. '
                     'temperature=4.0.')
  if num_teachers is not None and (isinstance(num_teachers, bool) or
                                   not isinstance(num_teachers, int) or num_teachers < 1):
    raise ValueError(f'num_teachers must be a positive int, got {num_teachers!r}.')
  soft = KD(temperature=temperature,
            teacher_weights=normalised_teacher_weights(teacher_weights, num_teachers),
            multi_teacher=multi_teacher, standardize=standardize,
            scale_by_temperature_squared=bool(scale_by_temperature_squared))
  return Objective.of(num_teachers=num_teachers,
                      hard=(hard_weight, CrossEntropy(label_smoothing=label_smoothing)),
                      soft=(soft_weight, soft))
