"""Numerics shared by the losses: upcasting, KL with zero-mass support, temperature and shape
checks, log-softmax splits around the target class, logit standardisation, and the norms,
Gram matrices and batch pairs of the relation losses. Every method file imports from here;
nothing here is a method."""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

# F.normalize's default floor on the norm, as in the authors' code.
NORM_EPS = 1e-12
# Gram matrices at full float32 precision (PyTorch's default), not TF32 or bfloat16 passes.
PRECISION = jax.lax.Precision.HIGHEST


# --- casting, temperatures, shapes ---------------------------------------------------------------

def upcast(x: jax.typing.ArrayLike) -> jax.Array:
  """Casts to at least float32 (bfloat16/float16 -> float32; float64 stays)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def check_static_temperature(temperature) -> None:
  """Rejects a concrete temperature (a number or an array of them) with a value <= 0 or
  non-finite; traced values cannot be checked here."""
  if isinstance(temperature, jax.core.Tracer):
    return
  # np.asarray('4', np.float64) is 4.0: a string would otherwise pass as a number.
  if isinstance(temperature, (str, bytes, bool, np.bool_)) or not (
      isinstance(temperature, numbers.Number) or jnp.issubdtype(
          getattr(temperature, 'dtype', np.asarray(temperature).dtype), np.number)):
    raise ValueError(f'temperature must be a number or an array of numbers, got '
                     f'{temperature!r}; pass e.g. temperature=4.0.')
  try:
    values = np.asarray(temperature, np.float64)
  except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
    return
  if not np.all(values > 0) or not np.all(np.isfinite(values)):
    raise ValueError(
        f'temperature must be finite and > 0, got {temperature!r}; pass a positive '
        'temperature (Hinton et al. use 1-20).')


def check_last_dims(student_shape, teacher_shape, teacher_name: str) -> None:
  """Raises if the class axes (and batch axes) of student and teacher differ."""
  if tuple(student_shape) != tuple(teacher_shape):
    raise ValueError(
        f'student_logits shape {tuple(student_shape)} and {teacher_name} shape '
        f'{tuple(teacher_shape)} differ; the teacher must give one distribution over the '
        'same classes for each student example.')


def student_teacher(student_logits, teacher_logits) -> tuple[jax.Array, jax.Array]:
  """Upcasts both to >= float32, checks their shapes match, and gives them one dtype."""
  student_logits = upcast(student_logits)
  teacher_logits = upcast(teacher_logits)
  check_last_dims(student_logits.shape, teacher_logits.shape, 'teacher_logits')
  if student_logits.ndim == 0:
    raise ValueError('student_logits must have a class axis, got a scalar.')
  dtype = jnp.promote_types(student_logits.dtype, teacher_logits.dtype)
  return student_logits.astype(dtype), teacher_logits.astype(dtype)


def scaled_logits(student_logits, teacher_logits,
                   temperature) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Checks ``T``, upcasts, and returns ``(z_s / T, z_t / T, T)`` in one dtype."""
  check_static_temperature(temperature)
  student_logits, teacher_logits = student_teacher(student_logits, teacher_logits)
  t = jnp.asarray(temperature, student_logits.dtype)
  return student_logits / t, teacher_logits / t, t


def check_static_non_negative(value, name: str) -> None:
  """Rejects a Python-number weight < 0 (or NaN); traced values cannot be checked here."""
  if isinstance(value, numbers.Real) and not value >= 0:
    raise ValueError(f'{name} must be >= 0, got {value!r}.')


def check_static_open_unit(value, name: str) -> None:
  """Rejects a Python number outside the open interval (0, 1)."""
  if isinstance(value, numbers.Real) and not 0 < value < 1:
    raise ValueError(f'{name} must be in the open interval (0, 1), got {value!r}.')


# --- divergences and softmax splits --------------------------------------------------------------

def kl(p_t: jax.Array, log_p_t: jax.Array, log_p_s: jax.Array) -> jax.Array:
  """KL(p_t || p_s) over the last axis, with 0 * log 0 = 0 and NaN-free gradients; a NaN
  anywhere in a row gives NaN for it."""
  # `!= 0`, not `> 0`: a NaN probability must stay inside the support, so that it shows.
  support = p_t != 0
  # optax.losses.kl_divergence{,_with_log_targets} give NaN values (0 * -inf) or NaN
  # gradients (the unselected log(0) branch) when the teacher puts zero mass on a class;
  # the inner `where`s keep both branches finite so the outer one is gradient-safe.
  safe_log_p_t = jnp.where(support, log_p_t, 0.0)
  safe_log_p_s = jnp.where(support, log_p_s, 0.0)
  terms = jnp.where(support, p_t * (safe_log_p_t - safe_log_p_s), 0.0)
  return jnp.sum(terms, axis=-1)


def temperature_scale(temperature: jax.Array, scale_by_temperature_squared: bool):
  """T**2, or 1 when the paper's scaling is switched off."""
  return temperature**2 if scale_by_temperature_squared else jnp.ones_like(temperature)


def log_probs(student_logits, teacher_logits, temperature):
  """Temperature-``T`` log-probabilities of student and teacher, and ``T`` as an array."""
  student_scaled, teacher_scaled, t = scaled_logits(student_logits, teacher_logits,
                                                     temperature)
  return (jax.nn.log_softmax(student_scaled, axis=-1),
          jax.nn.log_softmax(teacher_scaled, axis=-1), t)


def target_mask(logits: jax.Array, labels) -> tuple[jax.Array, jax.Array]:
  """One-hot mask of the label over the class axis, and which labels are in range."""
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f'labels must be integer class indices, got dtype {labels.dtype}.')
  if labels.shape != logits.shape[:-1]:
    raise ValueError(
        f'labels shape {labels.shape} does not match student_logits shape {logits.shape} '
        'without its class axis; pass one integer label per example.')
  num_classes = logits.shape[-1]
  if num_classes < 2:
    raise ValueError(
        f'student_logits has {num_classes} class; target/non-target losses need >= 2.')
  in_range = (labels >= 0) & (labels < num_classes)
  is_target = jnp.arange(num_classes) == labels[..., None]
  return is_target, in_range


def split_log_probs(logits: jax.Array, is_target: jax.Array):
  """Log-probabilities of the target, of "any non-target", and within the non-targets.

  Returns ``(log b_target, log b_rest, log q)`` where ``b`` is the binary (target, rest)
  distribution of ``softmax(logits)`` and ``q`` the softmax over the non-target
  classes only (its target entry is meaningless: read it only where ``~is_target``).
  """
  # Each log-softmax is formed from logits less their maximum (over all classes for ``b``,
  # over the non-targets for ``q``), as `jax.nn.log_softmax` does: ``z - logsumexp(z)`` with
  # logits of 1e4 loses ~4e-4 to float32 rounding of the two large terms (Hardening II).
  shifted = logits - _finite_max(logits, None)
  log_all = jax.nn.logsumexp(shifted, axis=-1)
  log_rest = jax.nn.logsumexp(shifted, axis=-1, where=~is_target)
  log_target = jnp.sum(jnp.where(is_target, shifted, 0.0), axis=-1)
  rest = logits - _finite_max(logits, ~is_target)
  log_q = rest - jax.nn.logsumexp(rest, axis=-1, where=~is_target, keepdims=True)
  return log_target - log_all, log_rest - log_all, log_q


def _finite_max(logits: jax.Array, where) -> jax.Array:
  """The maximum over the last axis (where `where`), kept as an axis and without gradient;
  0 where it is infinite (all ``-inf``, or a ``+inf`` that must stay non-finite), NaN where a
  logit is NaN (a NaN row stays NaN)."""
  top = jnp.max(logits, axis=-1, keepdims=True, where=where, initial=-jnp.inf)
  top = jnp.where(jnp.isinf(top), 0.0, top)
  return jax.lax.stop_gradient(jnp.where(jnp.isnan(logits).any(-1, keepdims=True), jnp.nan, top))


def non_target_probs(log_q: jax.Array, is_target: jax.Array) -> jax.Array:
  """``exp(log_q)`` with the target class set to exactly 0."""
  return jnp.where(is_target, 0.0, jnp.exp(jnp.where(is_target, 0.0, log_q)))


def standardize_logits(logits: jax.typing.ArrayLike, *, eps: float = 1e-7) -> jax.Array:
  r"""Z-scores logits over the class axis.

  .. math::
    \mathcal{Z}(z)_c = \frac{z_c - \bar z}{\epsilon + \sigma(z)},\quad
    \bar z = \frac{1}{C} \sum_j z_j,\quad
    \sigma(z) = \sqrt{\frac{1}{C - 1} \sum_j (z_j - \bar z)^2}

  Applied to both student and teacher logits before a KD-style loss, so the student
  matches the teacher's logit *relations* and not their range (a temperature then acts
  on unit-variance logits). ``sigma`` is the unbiased (``C - 1``) standard deviation,
  as in the authors' code (``torch.std``'s default); a ``1 / C`` standard deviation
  would make every output ``sqrt(C / (C - 1))`` times larger. ``eps = 1e-7`` is the
  authors'; logits that are all equal map to zeros, with finite gradients.

  Args:
    logits: ``[..., C]`` logits, ``C >= 2`` (any float dtype; computed in >= float32).
    eps: ``>= 0`` added to the standard deviation.

  Returns:
    ``[..., C]`` float32 (float64 for float64 inputs) standardised logits.

  References:
    Sun et al., `Logit Standardization in Knowledge Distillation
    <https://arxiv.org/abs/2403.01427>`_, CVPR 2024.
  """
  if isinstance(eps, numbers.Real) and not eps >= 0:
    raise ValueError(f'eps must be >= 0, got {eps!r}.')
  logits = upcast(logits)
  if logits.ndim == 0 or logits.shape[-1] < 2:
    raise ValueError(
        f'logits shape {logits.shape} needs a class axis of size >= 2 for an unbiased '
        'standard deviation.')
  centred = logits - jnp.mean(logits, axis=-1, keepdims=True)
  variance = jnp.sum(centred**2, axis=-1, keepdims=True) / (logits.shape[-1] - 1)
  positive = variance > 0
  # sqrt has an infinite derivative at 0; the inner `where` keeps equal logits NaN-free.
  std = jnp.where(positive, jnp.sqrt(jnp.where(positive, variance, 1.0)), 0.0)
  return centred / (jnp.asarray(eps, logits.dtype) + std)


# --- norms and batch relations -------------------------------------------------------------------

def safe_norm(x: jax.Array, axis: int, *, keepdims: bool = True) -> jax.Array:
  """Euclidean norm along ``axis`` (kept unless not `keepdims`) with a zero (not NaN)
  gradient at the zero vector."""
  squared = jnp.sum(x * x, axis=axis, keepdims=keepdims)
  positive = squared != 0  # NaN stays NaN
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """``F.normalize``: ``x / max(||x||, 1e-12)``; the zero vector maps to 0 with zero gradient."""
  norm = safe_norm(x, axis)
  return jnp.where(norm != 0, x / jnp.maximum(norm, NORM_EPS), 0.0)


def gram(x: jax.Array) -> jax.Array:
  """``x x^T`` of a ``[B, D]`` array, at full float32 precision."""
  return jnp.einsum('id,jd->ij', x, x, precision=PRECISION)


def batch_pair(student, teacher, student_name: str,
                teacher_name: str) -> tuple[jax.Array, jax.Array]:
  """Upcasts, flattens both to ``[B, D]`` in one dtype and checks the batch (``B >= 2``)."""
  student = upcast(student)
  teacher = upcast(teacher)
  for x, name in ((student, student_name), (teacher, teacher_name)):
    if x.ndim == 0:
      raise ValueError(f'{name} must have a batch axis, got a scalar.')
  if student.shape[0] != teacher.shape[0]:
    raise ValueError(
        f'{student_name} shape {student.shape} and {teacher_name} shape {teacher.shape} '
        'have different batch sizes; both sides must describe the same examples.')
  if student.shape[0] < 2:
    raise ValueError(
        f'{student_name} has batch size {student.shape[0]}; a relation loss relates the '
        'examples of a batch and needs at least 2.')
  dtype = jnp.promote_types(student.dtype, teacher.dtype)
  batch = student.shape[0]
  return (student.reshape(batch, -1).astype(dtype), teacher.reshape(batch, -1).astype(dtype))
