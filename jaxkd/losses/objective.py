"""The objective: named, weighted terms added per example, and the classic shorthand.

`make_objective(hard_weight=, soft_weight=, temperature=)` is the shorthand for the terms
`ce` and `kd` of a `jaxkd.losses.Objective`, the same terms (and metric names: `ce_loss`,
`kd_loss`, `ce_weight`, `kd_weight`, `temperature`) as `build_objective({'ce': ..., 'kd': ...})`:

  objective = make_objective(hard_weight=0.1, soft_weight=0.9, temperature=4.0)
  per_example, components, _ = objective.apply(
      Context(Outputs(student_logits), [Outputs(teacher_logits)], {'label': labels}, step=step))
  loss = jnp.mean(per_example)  # the step reduces, once
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxkd.losses.methods.ce import CrossEntropy
from jaxkd.losses.methods.kd import KD
from jaxkd.losses.terms import (Context, Hyperparam, Outputs, Term, describe_value,
                                is_constant_zero, validated, value_at)

__all__ = ['Objective', 'check_num_classes', 'make_objective']


def normalised_teacher_weights(teacher_weights, num_teachers) -> tuple[float, ...] | None:
  """Validates per-teacher weights and returns them divided by their sum (None: equal)."""
  if teacher_weights is None:
    return None
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


# --- the objective -------------------------------------------------------------------------------

def _shape(shape) -> tuple[int, ...]:
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
  student_logits_shape = _shape(student_logits_shape)
  if not student_logits_shape:
    raise ValueError('student_logits must have a class axis, got a scalar shape ().')
  num_classes = student_logits_shape[-1]
  for i, shape in enumerate(shapes):
    shape = _shape(shape)
    if not shape or shape[-1] != num_classes:
      which = 'teacher_logits' if len(shapes) == 1 else f'teacher_logits[{i}]'
      raise ValueError(
          f'{which} has {shape[-1] if shape else "no"} classes (shape {shape}) but '
          f'student_logits has {num_classes} (shape {student_logits_shape}); give the '
          'student and every teacher the same output classes (same head size and order).')


@dataclasses.dataclass(frozen=True)
class Objective:
  """Named, weighted terms added per example. Build with `Objective.of`, `make_objective`
  (the classic hard + soft shorthand) or `jaxkd.losses.build_objective` (terms by name).

  `terms` holds `(name, weight, term)`; `num_teachers`, if known, is checked at each call.
  """

  terms: tuple[tuple[str, Hyperparam, Term], ...]
  num_teachers: int | None = None

  @classmethod
  def of(cls, num_teachers: int | None = None, **terms: tuple[Hyperparam, Term]) -> 'Objective':
    """`Objective.of(ce=(0.1, CrossEntropy()), kd=(0.9, KD(temperature=4.0)))`."""
    checked = []
    for name, (weight, term) in terms.items():
      if not isinstance(term, Term):
        raise ValueError(f'Term {name!r} must be a jaxkd.losses Term (e.g. from LOSSES), got '
                         f'{term!r}.')
      checked.append((name, validated(f'{name}_weight', weight, positive=False), term))
    if not checked:
      raise ValueError('An objective needs at least one term.')
    if all(is_constant_zero(w) for _, w, _ in checked):
      names = ' and '.join(f'{name}_weight' for name, _, _ in checked)
      raise ValueError(f'{names} are all 0, so the objective is identically zero; set at '
                       'least one of them > 0.')
    if num_teachers is not None and (not isinstance(num_teachers, numbers.Integral)
                                     or num_teachers < 1):
      raise ValueError(f'num_teachers must be a positive int, got {num_teachers!r}.')
    return cls(tuple(checked), None if num_teachers is None else int(num_teachers))

  def _active(self):
    return [(name, w, term) for name, w, term in self.terms if not is_constant_zero(w)]

  @property
  def needs_teacher(self) -> bool:
    """Whether the total depends on teacher outputs (a term with a weight not constant 0)."""
    return any(term.needs_teacher for _, _, term in self._active())

  @property
  def needs_labels(self) -> bool:
    """Whether the total depends on labels."""
    return any(term.needs_labels for _, _, term in self._active())

  @property
  def needs_index(self) -> bool:
    """Whether a term reads the examples' dataset indices (`batch['index']`)."""
    return any(term.needs_index for _, _, term in self._active())

  @property
  def student_taps(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p for _, _, t in self.terms for p in t.student_taps))

  @property
  def teacher_taps(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p for _, _, t in self.terms for p in t.teacher_taps))

  @property
  def owns_variables(self) -> bool:
    """Whether any term has trainable parameters or state (a `DistillState` is needed)."""
    return any(t.owns_params or t.owns_state for _, _, t in self.terms)

  def term(self, name: str) -> Term:
    for term_name, _, term in self.terms:
      if term_name == name:
        return term
    raise KeyError(f'No term {name!r}; terms: {[n for n, _, _ in self.terms]}')

  def init(self, key: jax.Array, student: Outputs,
           teachers: Sequence[Outputs]) -> tuple[dict, dict]:
    """`(params, state)` by term name, for the terms that own any (from shapes)."""
    params, state = {}, {}
    for i, (name, _, term) in enumerate(self.terms):
      if term.owns_params or term.owns_state:
        params[name], state[name] = term.init(jax.random.fold_in(key, i), student, teachers)
    return params, state

  def hyperparams(self, step, params: dict | None = None) -> dict[str, jax.Array]:
    """`<name>_weight` of every term, and each term's own values (`temperature`, ...), under
    their own names when no other term reports the same, else as `<name>_<value>`.
    `params` (by term name) let a term report learned values."""
    params = params or {}
    values = {f'{name}_weight': value_at(w, step) for name, w, _ in self.terms}
    own = [(name, term.hyperparams(step, params.get(name))) for name, _, term in self.terms]
    counts: dict[str, int] = {}
    for _, hps in own:
      for key in hps:
        counts[key] = counts.get(key, 0) + 1
    for name, hps in own:
      values.update({(key if counts[key] == 1 else f'{name}_{key}'): v for key, v in hps.items()})
    return values

  def describe(self) -> dict:
    """The objective as JSON: each term's loss, weight and hyper-parameters, its taps."""
    return {name: {'weight': describe_value(w), **term.describe(),
                   'student_taps': list(term.student_taps),
                   'teacher_taps': list(term.teacher_taps)}
            for name, w, term in self.terms}

  def check_shapes(self, student_logits_shape: Sequence[int],
                   labels_shape: Sequence[int] | None = None,
                   teacher_logits_shapes: Sequence[Sequence[int]] = ()) -> None:
    """Raises `ValueError` if the shapes cannot go together (callable before tracing)."""
    student_logits_shape = _shape(student_logits_shape)
    teacher_logits_shapes = [_shape(s) for s in teacher_logits_shapes]
    if teacher_logits_shapes:
      check_num_classes(student_logits_shape, teacher_logits_shapes)
    examples = student_logits_shape[:-1]
    for i, shape in enumerate(teacher_logits_shapes):
      if shape[:-1] != examples:
        raise ValueError(f'teacher_logits[{i}] shape {shape} and student_logits shape '
                         f'{student_logits_shape} differ outside the class axis; feed the '
                         'teacher the same batch as the student.')
    if labels_shape is not None and _shape(labels_shape) != examples:
      raise ValueError(f'labels shape {_shape(labels_shape)} does not match '
                       f'student_logits shape {student_logits_shape} without its class axis.')
    given = len(teacher_logits_shapes)
    if given and self.num_teachers is not None and given != self.num_teachers:
      raise ValueError(f'num_teachers is {self.num_teachers} but {given} teacher_logits '
                       'were given; pass every teacher, or fix num_teachers.')
    for _, _, term in self.terms:
      weights = getattr(term, 'teacher_weights', None)
      if given and weights is not None and given != len(weights):
        raise ValueError(f'teacher_weights has {len(weights)} entries but {given} '
                         'teacher_logits were given; pass one weight per teacher.')

  def check_positions(self, student_logits_shape: Sequence[int]) -> None:
    """Refuses sequences (logits `[B, L, V]`) for a term that relates the examples of a
    batch (`per_example=False`): what it would relate (rows? positions?) is not defined."""
    if len(student_logits_shape) <= 2:
      return
    for name, _, term in self._active():
      if not term.per_example:
        raise ValueError(
            f'Term {name!r} ({term.name}) relates the examples of a batch (one value per '
            f'batch), and logits of shape {tuple(student_logits_shape)} are sequences; '
            'per-position terms (ce, kd, reverse_kl, jsd, skew_kl, ...) take them.')

  def apply(self, ctx: Context) -> tuple[jax.Array, dict[str, jax.Array], dict]:
    """Per-example total, each term's value (unweighted) and the terms' new state.

    `ctx.params` and `ctx.state` hold the terms' own by term name; each term is called with
    a copy of `ctx` holding its own, and its own key (`ctx.key` folded with its index).

    Returns:
      ``(total [B], components, state)``: float32 ``total = sum_i w_i(step) * term_i``
      (terms with a constant-0 weight are left out), ``components[name]`` ``[B]`` (zeros
      when its inputs are absent; a batch-level term's value repeated), plus
      ``'<prefix>_<name>'`` parts (per-teacher losses of a 'sum' over several teachers).
    """
    teachers = tuple(ctx.teachers or ())
    labels, step, key = ctx.labels, ctx.step, ctx.key
    for name, _, term in self._active():
      if term.needs_teacher and not teachers:
        raise ValueError(f'{name}_weight is not zero but no teacher_logits were given; pass '
                         f'teacher_logits or build the objective with {name}_weight=0.')
      if term.needs_labels and labels is None:
        raise ValueError(f'{name}_weight is not zero but labels is None; pass labels or '
                         f'build the objective with {name}_weight=0.')
    self.check_shapes(ctx.student.logits.shape, None if labels is None else jnp.shape(labels),
                      [t.logits.shape for t in teachers])
    self.check_positions(ctx.student.logits.shape)
    params, state = ctx.params or {}, dict(ctx.state or {})
    examples = ctx.student.logits.shape[:-1]
    total = jnp.zeros(examples, jnp.float32)
    components = {}
    for i, (name, weight, term) in enumerate(self.terms):
      if (term.needs_teacher and not teachers) or (term.needs_labels and labels is None):
        components[name] = jnp.zeros(examples, jnp.float32)
        continue
      value, parts, new_state = term(ctx.replace(
          teachers=teachers, key=None if key is None else jax.random.fold_in(key, i),
          params=params.get(name, {}), state=state.get(name, {})))
      if name in state:
        state[name] = new_state
      components[name] = jnp.broadcast_to(jnp.asarray(value, jnp.float32), examples)
      components.update({f'{prefix}_{name}': part for prefix, part in parts.items()})
      if not is_constant_zero(weight):
        total = total + value_at(weight, step) * components[name]
    return total, components, state


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
    An `Objective` with terms ``ce`` and ``kd`` (as `build_objective` names them):
    ``objective.apply(Context(student, teachers, batch, step=step)) -> (total [B],
    {'ce': [B], 'kd': [B], ...}, state)``, ``objective.hyperparams(step)`` giving the
    current weights (``ce_weight``, ``kd_weight``) and temperature.

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
                      ce=(hard_weight, CrossEntropy(label_smoothing=label_smoothing)),
                      kd=(soft_weight, soft))
