"""Hinton-style knowledge-distillation losses: KL between temperature-softened distributions.

Every loss here returns one value per example (no reduction) and computes in at least
float32, whatever the input dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ['kd_loss', 'kd_loss_from_probs']


def _upcast(x: jax.typing.ArrayLike) -> jax.Array:
  """Casts to at least float32 (bfloat16/float16 -> float32; float64 stays)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_static_temperature(temperature) -> None:
  """Rejects a concrete temperature (a number or an array of them) with a value <= 0 or
  non-finite; traced values cannot be checked here."""
  if isinstance(temperature, jax.core.Tracer):
    return
  try:
    values = np.asarray(temperature, np.float64)
  except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
    return
  if not np.all(values > 0) or not np.all(np.isfinite(values)):
    raise ValueError(
        f'temperature must be finite and > 0, got {temperature!r}; pass a positive '
        'temperature (Hinton et al. use 1-20).')


def _check_last_dims(student_shape, teacher_shape, teacher_name: str) -> None:
  """Raises if the class axes (and batch axes) of student and teacher differ."""
  if tuple(student_shape) != tuple(teacher_shape):
    raise ValueError(
        f'student_logits shape {tuple(student_shape)} and {teacher_name} shape '
        f'{tuple(teacher_shape)} differ; the teacher must give one distribution over the '
        'same classes for each student example.')


def _kl(p_t: jax.Array, log_p_t: jax.Array, log_p_s: jax.Array) -> jax.Array:
  """KL(p_t || p_s) over the last axis, with 0 * log 0 = 0 and NaN-free gradients."""
  support = p_t > 0
  # optax.losses.kl_divergence{,_with_log_targets} give NaN values (0 * -inf) or NaN
  # gradients (the unselected log(0) branch) when the teacher puts zero mass on a class;
  # the inner `where`s keep both branches finite so the outer one is gradient-safe.
  safe_log_p_t = jnp.where(support, log_p_t, 0.0)
  safe_log_p_s = jnp.where(support, log_p_s, 0.0)
  terms = jnp.where(support, p_t * (safe_log_p_t - safe_log_p_s), 0.0)
  return jnp.sum(terms, axis=-1)


def _temperature_scale(temperature: jax.Array, scale_by_temperature_squared: bool):
  """T**2, or 1 when the paper's scaling is switched off."""
  return temperature**2 if scale_by_temperature_squared else jnp.ones_like(temperature)


def kd_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
    scale_by_temperature_squared: bool = True,
) -> jax.Array:
  r"""Knowledge-distillation loss between student and teacher logits, per example.

  .. math::
    \ell = T^2 \sum_c p^t_c (\log p^t_c - \log p^s_c),\quad
    p^t = \mathrm{softmax}(z^t / T),\ p^s = \mathrm{softmax}(z^s / T)

  i.e. ``T**2 * KL(softmax(teacher / T) || softmax(student / T))``. The ``T**2`` factor
  keeps the gradient magnitude, ``d loss / d student_logits = T * (p_s - p_t)``, comparable
  across temperatures (Hinton et al., sec. 2). Both distributions are formed with
  ``log_softmax``; classes the teacher gives probability exactly 0 (logit ``-inf``, or an
  underflowed softmax) contribute 0, with finite gradients.

  Args:
    student_logits: ``[..., C]`` student logits (any float dtype; computed in >= float32).
    teacher_logits: ``[..., C]`` teacher logits, same shape. Gradients flow into it too;
      wrap it in ``jax.lax.stop_gradient`` if the teacher must not be trained.
    temperature: softmax temperature ``T > 0``; a Python float or a scalar array (a traced
      value from a schedule is fine, but then ``T > 0`` is the caller's responsibility).
    scale_by_temperature_squared: multiply by ``T**2`` (default, as in the paper). If
      False the loss is the plain KL, ``T**2`` times smaller.

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Hinton, Vinyals, Dean, `Distilling the Knowledge in a Neural Network
    <https://arxiv.org/abs/1503.02531>`_, 2015.
  """
  _check_static_temperature(temperature)
  student_logits = _upcast(student_logits)
  teacher_logits = _upcast(teacher_logits)
  _check_last_dims(student_logits.shape, teacher_logits.shape, 'teacher_logits')
  dtype = jnp.promote_types(student_logits.dtype, teacher_logits.dtype)
  t = jnp.asarray(temperature, dtype)
  log_p_s = jax.nn.log_softmax(student_logits.astype(dtype) / t, axis=-1)
  log_p_t = jax.nn.log_softmax(teacher_logits.astype(dtype) / t, axis=-1)
  return _temperature_scale(t, scale_by_temperature_squared) * _kl(
      jnp.exp(log_p_t), log_p_t, log_p_s)


def kd_loss_from_probs(
    student_logits: jax.typing.ArrayLike,
    teacher_probs: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
    scale_by_temperature_squared: bool = True,
) -> jax.Array:
  r"""Knowledge-distillation loss against a given teacher distribution, per example.

  .. math::
    \ell = T^2 \sum_c q_c (\log q_c - \log p^s_c),\quad p^s = \mathrm{softmax}(z^s / T)

  ``q`` is used as given: it must already be the temperature-``T`` target, e.g. the
  weighted average of several teachers' ``softmax(z^t_i / T)`` (ensemble distillation), or
  a distribution rebuilt over all ``C`` classes from a cached top-k teacher output.
  Entries with ``q_c = 0`` contribute exactly 0 (``0 * log 0 = 0``), with finite gradients.
  ``q`` is not renormalised; rows that do not sum to 1 give a loss that is not a KL.

  Args:
    student_logits: ``[..., C]`` student logits (any float dtype; computed in >= float32).
    teacher_probs: ``[..., C]`` non-negative target probabilities at temperature ``T``,
      each row summing to 1.
    temperature: softmax temperature ``T > 0`` applied to the student (Python float or
      scalar array).
    scale_by_temperature_squared: multiply by ``T**2`` (default, as in the paper).

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Hinton, Vinyals, Dean, `Distilling the Knowledge in a Neural Network
    <https://arxiv.org/abs/1503.02531>`_, 2015.
  """
  _check_static_temperature(temperature)
  student_logits = _upcast(student_logits)
  teacher_probs = _upcast(teacher_probs)
  _check_last_dims(student_logits.shape, teacher_probs.shape, 'teacher_probs')
  dtype = jnp.promote_types(student_logits.dtype, teacher_probs.dtype)
  t = jnp.asarray(temperature, dtype)
  log_p_s = jax.nn.log_softmax(student_logits.astype(dtype) / t, axis=-1)
  teacher_probs = teacher_probs.astype(dtype)
  positive = teacher_probs > 0
  log_p_t = jnp.log(jnp.where(positive, teacher_probs, 1.0))  # only read where positive
  return _temperature_scale(t, scale_by_temperature_squared) * _kl(
      teacher_probs, log_p_t, log_p_s)
