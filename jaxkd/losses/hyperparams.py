"""Hyper-parameters of terms: constants or optax-style schedules `step -> value`, their
checks (a schedule at every step up to 10,000, vectorised), and their JSON descriptions.

A term's field states its check beside its default, run when the term is built
(`jaxkd.losses.terms.Term`):

  power: float = setting(2.0, positive)
  mixing_weight: float = setting(0.5, within(0, 1, open_low=True, open_high=True))
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# A constant, or an optax-style schedule `step -> value` (evaluated inside the step).
Hyperparam = float | Callable[[jax.typing.ArrayLike], jax.typing.ArrayLike]


def is_constant_zero(value: Hyperparam | None) -> bool:
  """True for a constant 0 (a schedule is never treated as zero)."""
  return not callable(value) and value == 0


def value_at(value: Hyperparam, step) -> jax.Array:
  """A constant or a schedule evaluated at `step`, as a float32 scalar."""
  return jnp.asarray(value(step) if callable(value) else value, jnp.float32)


# Where a schedule is checked: every step up to SCHEDULE_CHECK_EVERY_UNTIL, then steps 2e4,
# 5e4, 1e5, ... up to 10^7 (a schedule cannot be checked at every step, and the run's length
# is not known when a term is built). The steps are evaluated at once (`jax.vmap`); a schedule
# with Python control flow on the step, which cannot be, is checked one step at a time at
# every step up to SCHEDULE_CHECK_LOOP_UNTIL and at the sampled steps beyond.
SCHEDULE_CHECK_EVERY_UNTIL = 10_000
SCHEDULE_CHECK_LOOP_UNTIL = 100
SCHEDULE_CHECK_STEPS = tuple(sorted({m * 10 ** e for e in range(8) for m in (1, 2, 5)} | {0}))


def _schedule_values(schedule) -> tuple[np.ndarray, np.ndarray]:
  """`(steps, values)`: a schedule at the steps it is checked at (see above)."""
  sampled = [s for s in SCHEDULE_CHECK_STEPS if s > SCHEDULE_CHECK_EVERY_UNTIL]
  steps = np.concatenate([np.arange(SCHEDULE_CHECK_EVERY_UNTIL + 1), sampled]).astype(np.int32)
  try:
    values = np.asarray(jax.vmap(schedule)(jnp.asarray(steps)), np.float64)
  except (jax.errors.ConcretizationTypeError, TypeError):
    values = None
  if values is None or values.shape != steps.shape:
    steps = np.asarray(sorted(set(range(SCHEDULE_CHECK_LOOP_UNTIL + 1)) |
                              set(SCHEDULE_CHECK_STEPS)))
    values = np.asarray([float(schedule(int(step))) for step in steps])
  return steps, values


def validated(name: str, value: Any, *, positive: bool) -> Hyperparam:
  """Checks a weight (>= 0) or a temperature (> 0); a schedule at the steps above."""
  kind = 'positive' if positive else 'non-negative'
  if callable(value):
    at_zero = value(0)
    if jnp.ndim(at_zero) != 0:
      raise ValueError(f'{name} schedule must return a scalar, got shape {jnp.shape(at_zero)}.')
    steps, values = _schedule_values(value)
  elif isinstance(value, numbers.Real) and not isinstance(value, bool):
    steps, values = None, np.asarray([float(value)])
  else:
    raise ValueError(
        f'{name} must be a number or a schedule (callable of the step), got {value!r}.')
  bad = np.flatnonzero(~np.isfinite(values) | (values <= 0 if positive else values < 0))
  if bad.size:
    where = '' if steps is None else f' at step {int(steps[bad[0]])}'
    raise ValueError(f'{name} must be finite and {kind}, got {float(values[bad[0]])}{where}; '
                     f'pass a {kind} {name}.')
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


# --- a term's settings, each with its check ------------------------------------------------------

# A check of one setting: `check(name, value)` raises a ValueError naming the setting.
Check = Callable[[str, Any], None]


def setting(default: Any, check: Check) -> Any:
  """A term's field: its default and the check run when the term is built."""
  return dataclasses.field(default=default, metadata={'check': check})


def positive(name: str, value: Any) -> None:
  """A number or schedule > 0 (see `validated`)."""
  validated(name, value, positive=True)


def non_negative(name: str, value: Any) -> None:
  """A number or schedule >= 0 (see `validated`)."""
  validated(name, value, positive=False)


def optional(check: Check) -> Check:
  """`check`, or None."""
  return lambda name, value: None if value is None else check(name, value)


def whole(minimum: int) -> Check:
  """An int >= `minimum` (not a bool)."""
  def check(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      raise ValueError(f'{name} must be an int >= {minimum}, got {value!r}.')
  return check


def whole_steps(name: str, value: Any) -> None:
  """A setting counted in steps: an int >= 0."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError(f'{name} must be a whole number of steps >= 0, got {value!r}.')


def within(low: float, high: float, *, open_low: bool = False,
           open_high: bool = False) -> Check:
  """A number between `low` and `high`, each end included unless open."""
  interval = f'{"(" if open_low else "["}{low}, {high}{")" if open_high else "]"}'

  def check(name, value):
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (number and (low < value if open_low else low <= value) and
            (value < high if open_high else value <= high)):
      raise ValueError(f'{name} must be in {interval}, got {value!r}.')
  return check


def one_of(valid: Sequence[str]) -> Check:
  """One of the names `valid` (see `pick`)."""
  return lambda name, value: pick(name, value, valid)


def implied_check(name: str) -> Check | None:
  """The check of a setting that declares none, by its name: a `temperature` > 0, a
  `*_weight` >= 0, `*_steps` a whole number of steps."""
  if name == 'temperature':
    return positive
  if name.endswith('_weight'):
    return non_negative
  if name.endswith('_steps'):
    return whole_steps
  return None
