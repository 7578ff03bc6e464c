"""Input checks and upcasting shared by the logit losses."""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from jaxkd.losses.kd import _check_last_dims, _check_static_temperature, _upcast


def _student_teacher(student_logits, teacher_logits) -> tuple[jax.Array, jax.Array]:
  """Upcasts both to >= float32, checks their shapes match, and gives them one dtype."""
  student_logits = _upcast(student_logits)
  teacher_logits = _upcast(teacher_logits)
  _check_last_dims(student_logits.shape, teacher_logits.shape, 'teacher_logits')
  if student_logits.ndim == 0:
    raise ValueError('student_logits must have a class axis, got a scalar.')
  dtype = jnp.promote_types(student_logits.dtype, teacher_logits.dtype)
  return student_logits.astype(dtype), teacher_logits.astype(dtype)


def _scaled_logits(student_logits, teacher_logits,
                   temperature) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Checks ``T``, upcasts, and returns ``(z_s / T, z_t / T, T)`` in one dtype."""
  _check_static_temperature(temperature)
  student_logits, teacher_logits = _student_teacher(student_logits, teacher_logits)
  t = jnp.asarray(temperature, student_logits.dtype)
  return student_logits / t, teacher_logits / t, t


def _check_static_non_negative(value, name: str) -> None:
  """Rejects a Python-number weight < 0 (or NaN); traced values cannot be checked here."""
  if isinstance(value, numbers.Real) and not value >= 0:
    raise ValueError(f'{name} must be >= 0, got {value!r}.')


def _check_static_open_unit(value, name: str) -> None:
  """Rejects a Python number outside the open interval (0, 1)."""
  if isinstance(value, numbers.Real) and not 0 < value < 1:
    raise ValueError(f'{name} must be in the open interval (0, 1), got {value!r}.')
