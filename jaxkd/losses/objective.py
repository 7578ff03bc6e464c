"""The composed training objective: hard-label loss + soft (distillation) loss, per example.

`make_objective` validates everything it can once, at construction; the returned
`Objective` is a pure function of arrays and the step, checked again against the static
shapes when traced:

  objective = make_objective(hard_weight=0.1, soft_weight=0.9, temperature=4.0)
  per_example, components = objective(student_logits, labels, teacher_logits, step=step)
  loss = jnp.mean(per_example)  # the step reduces, once
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxkd.losses.classification import cross_entropy
from jaxkd.losses.kd import _upcast, kd_loss, kd_loss_from_probs

__all__ = [
    'HARD_LOSSES', 'MULTI_TEACHER', 'SOFT_LOSSES', 'Hyperparam', 'Objective',
    'check_num_classes', 'make_objective',
]

# A constant, or an optax-style schedule `step -> value` (evaluated inside the step).
Hyperparam = float | Callable[[jax.typing.ArrayLike], jax.typing.ArrayLike]

# Soft losses: (student_logits [..., C], teacher_logits [..., C], *, temperature,
# scale_by_temperature_squared) -> [...].
SOFT_LOSSES: Mapping[str, Callable[..., jax.Array]] = {'kd': kd_loss}
# The same losses against a given teacher distribution; needed by multi_teacher='ensemble'.
_SOFT_LOSSES_FROM_PROBS: Mapping[str, Callable[..., jax.Array]] = {'kd': kd_loss_from_probs}
# Hard losses: (logits [..., C], integer labels [...], *, label_smoothing) -> [...].
HARD_LOSSES: Mapping[str, Callable[..., jax.Array]] = {'cross_entropy': cross_entropy}
# 'sum': weighted sum of per-teacher soft losses; 'ensemble': one soft loss against the
# weighted average of the teachers' temperature-softened distributions.
MULTI_TEACHER = ('sum', 'ensemble')


def _is_constant_zero(value: Hyperparam | None) -> bool:
  """True for a constant 0 (a schedule is never treated as zero)."""
  return not callable(value) and value == 0


def _value(value: Hyperparam, step) -> jax.Array:
  """A constant or a schedule evaluated at `step`, as a float32 scalar."""
  return jnp.asarray(value(step) if callable(value) else value, jnp.float32)


def _validated(name: str, value: Any, *, positive: bool) -> Hyperparam:
  """Checks a weight (>= 0) or temperature (> 0); a schedule is checked at step 0."""
  kind = 'positive' if positive else 'non-negative'
  if callable(value):
    at_zero = value(0)
    if jnp.ndim(at_zero) != 0:
      raise ValueError(f'{name} schedule must return a scalar, got shape {jnp.shape(at_zero)}.')
    number, where = float(at_zero), ' at step 0'
  elif isinstance(value, numbers.Real) and not isinstance(value, bool):
    number, where = float(value), ''
  else:
    raise ValueError(
        f'{name} must be a number or a schedule (callable of the step), got {value!r}.')
  if not math.isfinite(number) or (number <= 0 if positive else number < 0):
    raise ValueError(f'{name} must be finite and {kind}, got {number}{where}; pass a {kind} '
                     f'{name}.')
  return value


def _pick(kind: str, name: str, registry) -> str:
  """Returns `name` if it is a key of `registry`, else raises listing the valid names."""
  if name not in registry:
    raise ValueError(f'Unknown {kind} {name!r}; valid: {", ".join(map(repr, registry))}.')
  return name


def _shape_tuple(shape) -> tuple[int, ...]:
  """A shape as a tuple of Python ints."""
  return tuple(int(d) for d in shape)


def check_num_classes(student_logits_shape: Sequence[int],
                      teacher_logits_shape: Sequence[int] | Sequence[Sequence[int]]) -> None:
  """Raises `ValueError` unless student and teacher(s) have the same number of classes.

  Args:
    student_logits_shape: the student's logits shape ``[..., C]``.
    teacher_logits_shape: one teacher's logits shape ``[..., C]``, or a sequence of them
      (one per teacher).
  """
  shapes = teacher_logits_shape
  if all(isinstance(d, numbers.Integral) for d in shapes):
    shapes = [shapes]
  student_logits_shape = _shape_tuple(student_logits_shape)
  if not student_logits_shape:
    raise ValueError('student_logits must have a class axis, got a scalar shape ().')
  num_classes = student_logits_shape[-1]
  for i, shape in enumerate(shapes):
    shape = _shape_tuple(shape)
    if not shape or shape[-1] != num_classes:
      which = 'teacher_logits' if len(shapes) == 1 else f'teacher_logits[{i}]'
      raise ValueError(
          f'{which} has {shape[-1] if shape else "no"} classes (shape {shape}) but '
          f'student_logits has {num_classes} (shape {student_logits_shape}); give the '
          'student and every teacher the same output classes (same head size and order).')


@dataclasses.dataclass(frozen=True)
class Objective:
  """`hard_weight * hard_loss + soft_weight * soft_loss`, per example. Build with
  `make_objective`, which validates the fields."""

  hard_weight: Hyperparam
  soft_weight: Hyperparam
  temperature: Hyperparam | None
  soft_loss: str
  hard_loss: str
  label_smoothing: float
  teacher_weights: tuple[float, ...] | None  # normalised to sum to 1, or None (equal)
  num_teachers: int | None  # known up front, or None (any number)
  multi_teacher: str
  scale_by_temperature_squared: bool

  @property
  def needs_teacher(self) -> bool:
    """Whether the total depends on teacher logits (soft_weight is not a constant 0)."""
    return not _is_constant_zero(self.soft_weight)

  @property
  def needs_labels(self) -> bool:
    """Whether the total depends on labels (hard_weight is not a constant 0)."""
    return not _is_constant_zero(self.hard_weight)

  def hyperparams(self, step: jax.typing.ArrayLike) -> dict[str, jax.Array]:
    """Current `hard_weight`, `soft_weight` and `temperature` (if set), float32 scalars."""
    values = {'hard_weight': _value(self.hard_weight, step),
              'soft_weight': _value(self.soft_weight, step)}
    if self.temperature is not None:
      values['temperature'] = _value(self.temperature, step)
    return values

  def check_shapes(self, student_logits_shape: Sequence[int],
                   labels_shape: Sequence[int] | None = None,
                   teacher_logits_shapes: Sequence[Sequence[int]] = ()) -> None:
    """Raises `ValueError` if the shapes cannot go together (callable before tracing).

    Args:
      student_logits_shape: ``[..., C]``.
      labels_shape: ``[...]``, or None when there are no labels.
      teacher_logits_shapes: one ``[..., C]`` shape per teacher (possibly none).
    """
    student_logits_shape = _shape_tuple(student_logits_shape)
    teacher_logits_shapes = [_shape_tuple(s) for s in teacher_logits_shapes]
    if teacher_logits_shapes:
      check_num_classes(student_logits_shape, teacher_logits_shapes)
    examples = student_logits_shape[:-1]
    for i, shape in enumerate(teacher_logits_shapes):
      if shape[:-1] != examples:
        raise ValueError(f'teacher_logits[{i}] shape {shape} and student_logits shape '
                         f'{student_logits_shape} differ outside the class axis; feed the '
                         'teacher the same batch as the student.')
    if labels_shape is not None and _shape_tuple(labels_shape) != examples:
      raise ValueError(f'labels shape {_shape_tuple(labels_shape)} does not match '
                       f'student_logits shape {student_logits_shape} without its class axis.')
    given = len(teacher_logits_shapes)
    if given and self.num_teachers is not None and given != self.num_teachers:
      raise ValueError(f'num_teachers is {self.num_teachers} but {given} teacher_logits '
                       'were given; pass every teacher, or fix num_teachers.')
    if given and self.teacher_weights is not None and given != len(self.teacher_weights):
      raise ValueError(f'teacher_weights has {len(self.teacher_weights)} entries but '
                       f'{given} teacher_logits were given; pass one weight per teacher.')

  def __call__(
      self,
      student_logits: jax.Array,
      labels: jax.Array | None,
      teacher_logits: jax.Array | Sequence[jax.Array] | None = None,
      *,
      step: jax.typing.ArrayLike,
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-example total and its unweighted components.

    Args:
      student_logits: ``[B, C]`` (or ``[..., C]``) student logits.
      labels: ``[B]`` integer labels, or None when `hard_weight` is a constant 0.
      teacher_logits: ``[B, C]``, a sequence of them (one per teacher), or None when
        `soft_weight` is a constant 0. Gradients flow into them unless the caller wraps
        them in `jax.lax.stop_gradient`.
      step: the training step (an int, or a traced int array) at which schedules are read.

    Returns:
      ``(total [B], components)``: float32 ``total = hard_weight * hard + soft_weight *
      soft`` (a term whose weight is a constant 0 is left out), and components ``'hard'``
      and ``'soft'`` (each ``[B]``, unweighted; zeros when labels / teachers are absent),
      plus ``'teacher{i}_soft'`` per teacher for ``multi_teacher='sum'`` with several.
    """
    if teacher_logits is None:
      teachers = []
    elif isinstance(teacher_logits, (list, tuple)):
      teachers = list(teacher_logits)
    else:
      teachers = [teacher_logits]
    if self.needs_teacher and not teachers:
      raise ValueError('soft_weight is not zero but no teacher_logits were given; pass '
                       'teacher_logits or build the objective with soft_weight=0.')
    if self.needs_labels and labels is None:
      raise ValueError('hard_weight is not zero but labels is None; pass labels or build '
                       'the objective with hard_weight=0.')
    student_logits = jnp.asarray(student_logits)
    self.check_shapes(student_logits.shape, None if labels is None else jnp.shape(labels),
                      [jnp.shape(t) for t in teachers])

    hp = self.hyperparams(step)
    zeros = jnp.zeros(student_logits.shape[:-1], jnp.float32)
    components = {'hard': zeros, 'soft': zeros}
    if labels is not None:
      components['hard'] = HARD_LOSSES[self.hard_loss](
          student_logits, labels, label_smoothing=self.label_smoothing)
    if teachers and self.temperature is not None:
      components.update(self._soft(student_logits, teachers, hp['temperature']))

    total = zeros
    if self.needs_labels:
      total = total + hp['hard_weight'] * components['hard']
    if self.needs_teacher:
      total = total + hp['soft_weight'] * components['soft']
    return total, components

  def _soft(self, student_logits, teachers, temperature) -> dict[str, jax.Array]:
    """The soft component (and per-teacher parts for 'sum') against all teachers."""
    weights = self.teacher_weights or (1.0 / len(teachers),) * len(teachers)
    options = dict(temperature=temperature,
                   scale_by_temperature_squared=self.scale_by_temperature_squared)
    if self.multi_teacher == 'ensemble' and len(teachers) > 1:
      probs = sum(w * jax.nn.softmax(_upcast(t) / temperature, axis=-1)
                  for w, t in zip(weights, teachers))
      return {'soft': _SOFT_LOSSES_FROM_PROBS[self.soft_loss](
          student_logits, probs, **options)}
    loss_fn = SOFT_LOSSES[self.soft_loss]
    per_teacher = [loss_fn(student_logits, t, **options) for t in teachers]
    parts = {'soft': sum(w * part for w, part in zip(weights, per_teacher))}
    if len(teachers) > 1:
      parts.update({f'teacher{i}_soft': part for i, part in enumerate(per_teacher)})
    return parts


def make_objective(
    *,
    hard_weight: Hyperparam,
    soft_weight: Hyperparam,
    temperature: Hyperparam | None = None,
    soft_loss: str = 'kd',
    hard_loss: str = 'cross_entropy',
    label_smoothing: float = 0.0,
    teacher_weights: Sequence[float] | None = None,
    num_teachers: int | None = None,
    multi_teacher: str = 'sum',
    scale_by_temperature_squared: bool = True,
) -> Objective:
  r"""Builds and validates the per-example training objective.

  .. math::
    \ell = w_h(s)\,\ell_{hard}(z^s, y) + w_s(s)\,\ell_{soft}(z^s, z^{t_1..t_N}; T(s))

  with ``soft = sum_i v_i * soft_loss(student, teacher_i)`` for ``multi_teacher='sum'``, or
  ``soft = soft_loss(student, sum_i v_i * softmax(teacher_i / T))`` for ``'ensemble'``
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
    soft_loss: a key of `SOFT_LOSSES`.
    hard_loss: a key of `HARD_LOSSES`.
    label_smoothing: in ``[0, 1]``, passed to the hard loss.
    teacher_weights: non-negative per-teacher weights, not all zero; normalised to sum 1.
    num_teachers: if given, the number of teachers the objective will be called with
      (checked against `teacher_weights` now, and against the call's teachers).
    multi_teacher: one of `MULTI_TEACHER`.
    scale_by_temperature_squared: multiply the soft loss by ``T**2`` (Hinton et al.).

  Returns:
    An `Objective`: ``objective(student_logits [B, C], labels [B] | None, teacher_logits
    [B, C] | sequence | None, *, step) -> (total [B], {'hard': [B], 'soft': [B], ...})``,
    with ``objective.hyperparams(step)`` giving the current weights and temperature.

  Raises:
    ValueError: naming the argument, for a temperature <= 0 (a schedule's value at step
      0), negative or non-finite weights, both weights constant 0, unknown names, a bad
      label_smoothing, or teacher_weights of the wrong length, negative or all zero.

  References:
    Hinton, Vinyals, Dean, `Distilling the Knowledge in a Neural Network
    <https://arxiv.org/abs/1503.02531>`_, 2015.
  """
  hard_weight = _validated('hard_weight', hard_weight, positive=False)
  soft_weight = _validated('soft_weight', soft_weight, positive=False)
  if _is_constant_zero(hard_weight) and _is_constant_zero(soft_weight):
    raise ValueError('hard_weight and soft_weight are both 0, so the objective is '
                     'identically zero; set at least one of them > 0.')
  if temperature is None:
    if not _is_constant_zero(soft_weight):
      raise ValueError('temperature is required when soft_weight is not 0; pass e.g. '
                       'temperature=4.0.')
  else:
    temperature = _validated('temperature', temperature, positive=True)
  soft_loss = _pick('soft_loss', soft_loss, SOFT_LOSSES)
  hard_loss = _pick('hard_loss', hard_loss, HARD_LOSSES)
  multi_teacher = _pick('multi_teacher', multi_teacher, MULTI_TEACHER)
  if multi_teacher == 'ensemble' and soft_loss not in _SOFT_LOSSES_FROM_PROBS:
    raise ValueError(f"multi_teacher='ensemble' needs a soft_loss that accepts "
                     f'probabilities ({", ".join(sorted(_SOFT_LOSSES_FROM_PROBS))}), got '
                     f"{soft_loss!r}; use multi_teacher='sum'.")
  if (not isinstance(label_smoothing, numbers.Real) or isinstance(label_smoothing, bool)
      or not 0.0 <= label_smoothing <= 1.0):
    raise ValueError(f'label_smoothing must be a float in [0, 1], got {label_smoothing!r}.')
  if num_teachers is not None and (not isinstance(num_teachers, numbers.Integral)
                                   or num_teachers < 1):
    raise ValueError(f'num_teachers must be a positive int, got {num_teachers!r}.')
  if teacher_weights is not None:
    teacher_weights = _normalised_teacher_weights(teacher_weights, num_teachers)
  return Objective(
      hard_weight=hard_weight, soft_weight=soft_weight, temperature=temperature,
      soft_loss=soft_loss, hard_loss=hard_loss, label_smoothing=float(label_smoothing),
      teacher_weights=teacher_weights,
      num_teachers=None if num_teachers is None else int(num_teachers),
      multi_teacher=multi_teacher,
      scale_by_temperature_squared=bool(scale_by_temperature_squared))


def _normalised_teacher_weights(teacher_weights, num_teachers) -> tuple[float, ...]:
  """Validates per-teacher weights and returns them divided by their sum."""
  try:
    weights = tuple(float(w) for w in teacher_weights)
  except (TypeError, ValueError):
    raise ValueError(f'teacher_weights must be a sequence of numbers, got '
                     f'{teacher_weights!r}.') from None
  if not weights:
    raise ValueError('teacher_weights is empty; pass one weight per teacher, or None for '
                     'equal weights.')
  if num_teachers is not None and len(weights) != num_teachers:
    raise ValueError(f'teacher_weights has {len(weights)} entries but num_teachers is '
                     f'{num_teachers}; pass one weight per teacher.')
  if any(not math.isfinite(w) or w < 0 for w in weights):
    raise ValueError(f'teacher_weights must be finite and non-negative, got {weights}.')
  total = sum(weights)
  if total == 0:
    raise ValueError('teacher_weights are all 0; give at least one teacher a positive '
                     'weight.')
  return tuple(w / total for w in weights)
