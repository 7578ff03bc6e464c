"""Terms, the named parts of a distillation objective (`jaxkd.losses.objective` sums them).

A term reads the student's and the teachers' outputs (logits, and the features at the module
paths it taps), may own trainable parameters (a projector, a learnable temperature) and
non-trainable state (a memory bank), created from shapes by `init`, and gives one value per
example, or one per batch for a term that relates the examples of a batch (`per_example =
False`). An `Objective` weighs its terms (constants or optax schedules) and adds them per
example; the step reduces once:

  objective = Objective.of(ce=(0.1, CrossEntropy()), kd=(0.9, KD(temperature=4.0)))
  total_B, components, loss_state = objective.apply(student, teachers, batch, step=step)
  loss = jnp.mean(total_B)

A batch-level term's value is the same for every example of the batch, so the mean adds it
once. Under `pmap`/`shard_map` such a term gathers its inputs over the data axis (`gather`)
and gives every device the loss of the global batch.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp

from jaxkd.losses.classification import cross_entropy
from jaxkd.losses.kd import _upcast, kd_loss, kd_loss_from_probs
from jaxkd.losses.logit.standardize import standardize_logits

PyTree = Any
# A constant, or an optax-style schedule `step -> value` (evaluated inside the step).
Hyperparam = float | Callable[[jax.typing.ArrayLike], jax.typing.ArrayLike]
MULTI_TEACHER = ('sum', 'ensemble')


@flax.struct.dataclass
class Outputs:
  """What a model gives the terms: logits `[B, C]` and its features by tapped module path;
  `top1`, a teacher's own top-1 class when its logits are rebuilt (from a top-k cache);
  `variables`, the model's (for terms that read its parameters: OFD's BatchNorm margins,
  SDD's classifier) whenever terms tap its features."""

  logits: jax.Array
  features: dict = flax.struct.field(default_factory=dict)
  top1: jax.Array | None = None
  variables: dict | None = None


# --- hyper-parameters ----------------------------------------------------------------------------

def is_constant_zero(value: Hyperparam | None) -> bool:
  """True for a constant 0 (a schedule is never treated as zero)."""
  return not callable(value) and value == 0


def value_at(value: Hyperparam, step) -> jax.Array:
  """A constant or a schedule evaluated at `step`, as a float32 scalar."""
  return jnp.asarray(value(step) if callable(value) else value, jnp.float32)


# Where a schedule is checked: steps 0, 1, 2, 5, 10, ... up to 10^7 (a schedule cannot be
# checked at every step, and the run's length is not known when a term is built).
SCHEDULE_CHECK_STEPS = tuple(sorted({m * 10 ** e for e in range(8) for m in (1, 2, 5)} | {0}))


def validated(name: str, value: Any, *, positive: bool) -> Hyperparam:
  """Checks a weight (>= 0) or a temperature (> 0); a schedule at `SCHEDULE_CHECK_STEPS`."""
  kind = 'positive' if positive else 'non-negative'
  if callable(value):
    at_zero = value(0)
    if jnp.ndim(at_zero) != 0:
      raise ValueError(f'{name} schedule must return a scalar, got shape {jnp.shape(at_zero)}.')
    checked = [(float(value(step)), f' at step {step}') for step in SCHEDULE_CHECK_STEPS]
  elif isinstance(value, numbers.Real) and not isinstance(value, bool):
    checked = [(float(value), '')]
  else:
    raise ValueError(
        f'{name} must be a number or a schedule (callable of the step), got {value!r}.')
  for number, where in checked:
    if not math.isfinite(number) or (number <= 0 if positive else number < 0):
      raise ValueError(f'{name} must be finite and {kind}, got {number}{where}; pass a {kind} '
                       f'{name}.')
  return value


def pick(kind: str, name: str, valid) -> str:
  """Returns `name` if it is one of `valid`, else raises listing the valid names."""
  if name not in valid:
    raise ValueError(f'Unknown {kind} {name!r}; valid: {", ".join(map(repr, valid))}.')
  return name


def describe_value(value: Any) -> Any:
  """A hyper-parameter as JSON: numbers and strings as they are, a schedule by its values at
  a few steps (enough to tell two schedules apart when a run is resumed)."""
  if callable(value):
    return {'schedule': [float(value(s)) for s in (0, 1, 10, 100, 1000, 10000)]}
  if isinstance(value, tuple):
    return [describe_value(v) for v in value]
  return value


def gather(x: jax.Array, axis_name: str | None) -> jax.Array:
  """The global batch of a per-device array under `pmap`/`shard_map` (as is under `jit`).

  Its transpose sums the cotangents of every device's copy, so a loss computed identically
  on each device and averaged by the step's `pmean` gets the single-device gradient."""
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


# --- the term protocol ---------------------------------------------------------------------------

class Term:
  """A part of an objective. Subclasses are frozen dataclasses of their hyper-parameters.

  Class attributes (or properties) say what a term reads and owns:
    student_taps, teacher_taps: module paths whose outputs it reads ('' = logits only).
    per_example: False for a term that relates the examples of a batch (one value per batch).
    needs_teacher, needs_labels: which inputs it reads; needs_index: the examples' dataset
      indices (`batch['index']`, e.g. for a memory bank).
    owns_params, owns_state: whether `init` creates trainable parameters / state.
  """

  name = ''  # its key in `jaxkd.losses.LOSSES`
  student_taps: tuple[str, ...] = ()
  teacher_taps: tuple[str, ...] = ()
  per_example = True
  needs_teacher = True
  needs_labels = False
  needs_index = False
  owns_params = False
  owns_state = False

  def init(self, key: jax.Array, student: Outputs,
           teachers: Sequence[Outputs]) -> tuple[PyTree, PyTree]:
    """`(params, state)` from shapes: `student`/`teachers` hold `jax.ShapeDtypeStruct`s."""
    del key, student, teachers
    return {}, {}

  def hyperparams(self, step, params: PyTree = None) -> dict[str, jax.Array]:
    """Current values worth logging (a scheduled or learned temperature), float32 scalars;
    `params` are the term's own (None when the caller has none to give)."""
    del step, params
    return {}

  def describe(self) -> dict:
    """What the term is, as JSON (stored with checkpoints; a resume compares it)."""
    fields = {f.name: describe_value(getattr(self, f.name)) for f in dataclasses.fields(self)}
    return {'loss': self.name, **fields}

  def __call__(self, student: Outputs, teachers: Sequence[Outputs], batch: dict, *,
               step: jax.Array, key: jax.Array | None, params: PyTree, state: PyTree,
               axis_name: str | None) -> tuple[jax.Array, dict[str, jax.Array], PyTree]:
    """`(value [B] or scalar, parts {prefix: [B]}, new_state)`."""
    raise NotImplementedError


class OneTap:
  """For a term with fields `student_tap` and `teacher_tap` (one module path each): the taps
  it reads. Put it before `Term` in the bases."""

  @property
  def student_taps(self) -> tuple[str, ...]:
    return (self.student_tap,)

  @property
  def teacher_taps(self) -> tuple[str, ...]:
    return (self.teacher_tap,)


class LogitTerm(Term):
  """A term over student and teacher logits, one value per example, with the options every
  logit term has: `temperature` (constant or schedule), several teachers (`multi_teacher`
  'sum' of per-teacher losses or 'ensemble' of their softened distributions is the KD term's;
  the others sum with `teacher_weights`), and logit standardisation (Sun et al. 2024)."""

  def __post_init__(self):
    """Checks what every logit term has: a temperature > 0 (unless None: the term is never
    computed) and non-negative `*_weight` hyper-parameters."""
    if self._temperature is not None:
      validated('temperature', self._temperature, positive=True)
    for f in dataclasses.fields(self):
      if f.name.endswith('_weight') and f.name != 'mixing_weight':
        validated(f.name, getattr(self, f.name), positive=False)

  def per_teacher(self, student_logits: jax.Array, teacher_logits: jax.Array,
                  labels: jax.Array | None, temperature: jax.Array) -> jax.Array:
    raise NotImplementedError

  @property
  def _temperature(self) -> Hyperparam | None:
    return getattr(self, 'temperature', None)

  def hyperparams(self, step, params=None) -> dict[str, jax.Array]:
    del params
    t = self._temperature
    return {} if t is None else {'temperature': value_at(t, step)}

  def _prepare(self, logits: jax.Array) -> jax.Array:
    logits = _upcast(logits)
    return standardize_logits(logits) if getattr(self, 'standardize', False) else logits

  def temperature_value(self, step, params) -> jax.Array | None:
    """The temperature at `step` (a learned one reads the term's `params`)."""
    del params
    t = self._temperature
    return None if t is None else value_at(t, step)

  def __call__(self, student, teachers, batch, *, step, key, params, state, axis_name):
    """Each teacher's loss, combined with `teacher_weights`; a batch-level term (`per_example
    = False`) sees the global batch's logits."""
    del key
    temperature = self.temperature_value(step, params)
    prepare = lambda logits: gather(self._prepare(logits), None if self.per_example else axis_name)
    student_logits = prepare(student.logits)
    per_teacher = [self.per_teacher(student_logits, prepare(teacher.logits), batch.get('label'),
                                    temperature) for teacher in teachers]
    return (*combine_teachers(getattr(self, 'teacher_weights', None), per_teacher), state)


def combine_teachers(weights: tuple[float, ...] | None,
                     per_teacher: Sequence[jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`(sum_i w_i * loss_i, {'teacher<i>': loss_i})` over the teachers (parts only for several),
  with normalised `weights` (equal when None)."""
  count = len(per_teacher)
  if weights is None:
    weights = (1.0 / count,) * count
  if len(weights) != count:
    raise ValueError(f'teacher_weights has {len(weights)} entries but {count} teacher_logits '
                     'were given; pass one weight per teacher.')
  value = sum(w * part for w, part in zip(weights, per_teacher))
  return value, ({f'teacher{i}': part for i, part in enumerate(per_teacher)} if count > 1 else {})


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


# --- the two classic terms -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CrossEntropy(Term):
  """Hard-label cross-entropy with optional label smoothing (`jaxkd.losses.cross_entropy`)."""

  label_smoothing: float = 0.0

  name = 'ce'
  needs_teacher = False
  needs_labels = True

  def __post_init__(self):
    s = self.label_smoothing
    if not isinstance(s, numbers.Real) or isinstance(s, bool) or not 0.0 <= s <= 1.0:
      raise ValueError(f'label_smoothing must be a float in [0, 1], got {s!r}.')

  def __call__(self, student, teachers, batch, *, step, key, params, state, axis_name):
    del teachers, step, key, params, axis_name
    return cross_entropy(student.logits, batch['label'],
                         label_smoothing=self.label_smoothing), {}, state


@dataclasses.dataclass(frozen=True)
class KD(LogitTerm):
  r"""Hinton et al.'s soft-target loss, ``T^2 KL(softmax(z_t/T) || softmax(z_s/T))``
  (`jaxkd.losses.kd_loss`). With several teachers, 'sum' adds the per-teacher losses with
  `teacher_weights` (normalised), 'ensemble' distils from the weighted average of their
  softened distributions (Hinton et al. 2015, sec. 2). `temperature=None` is allowed only
  for a term that is never computed (weight 0, the supervised shorthand)."""

  temperature: Hyperparam | None = None
  teacher_weights: tuple[float, ...] | None = None
  multi_teacher: str = 'sum'
  standardize: bool = False
  scale_by_temperature_squared: bool = True

  name = 'kd'

  def __post_init__(self):
    super().__post_init__()
    pick('multi_teacher', self.multi_teacher, MULTI_TEACHER)

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    del labels
    return kd_loss(student_logits, teacher_logits, temperature=temperature,
                   scale_by_temperature_squared=self.scale_by_temperature_squared)

  def __call__(self, student, teachers, batch, *, step, key, params, state, axis_name):
    zeros = jnp.zeros(student.logits.shape[:-1], jnp.float32)
    if self.temperature is None:
      return zeros, {}, state
    if self.multi_teacher != 'ensemble' or len(teachers) < 2:
      return super().__call__(student, teachers, batch, step=step, key=key, params=params,
                              state=state, axis_name=axis_name)
    temperature = value_at(self.temperature, step)
    weights = self.teacher_weights or (1.0 / len(teachers),) * len(teachers)
    probs = sum(w * jax.nn.softmax(self._prepare(t.logits) / temperature, axis=-1)
                for w, t in zip(weights, teachers))
    return kd_loss_from_probs(
        self._prepare(student.logits), probs, temperature=temperature,
        scale_by_temperature_squared=self.scale_by_temperature_squared), {}, state
