"""Transformed teacher matching (TTM) and its sample-weighted form (WTTM).

Temperature on the teacher only: the student's plain softmax is matched to the power
transform of the teacher's distribution. One value per example.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxkd.losses.kd import _check_static_temperature, _kl
from jaxkd.losses.logit._common import _student_teacher

__all__ = ['ttm_loss', 'wttm_loss']


def _ttm_parts(student_logits, teacher_logits, temperature):
  """``KL(softmax(z_t / T) || softmax(z_s))`` and ``log sum_c softmax(z_t)_c ** (1/T)``."""
  _check_static_temperature(temperature)
  student_logits, teacher_logits = _student_teacher(student_logits, teacher_logits)
  t = jnp.asarray(temperature, student_logits.dtype)
  log_p_s = jax.nn.log_softmax(student_logits, axis=-1)
  # log p_t^(1/T) = log_softmax(z_t) / T; normalising it gives log_softmax(z_t / T).
  log_powered = jax.nn.log_softmax(teacher_logits, axis=-1) / t
  log_power_sum = jax.nn.logsumexp(log_powered, axis=-1)
  log_p_t = log_powered - log_power_sum[..., None]
  return _kl(jnp.exp(log_p_t), log_p_t, log_p_s), log_power_sum


def ttm_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Transformed-teacher-matching loss, per example.

  .. math::
    \ell = \mathrm{KL}\!\left(\tilde p^t \,\|\, p^s\right),\quad
    \tilde p^t_c = \frac{(p^t_c)^{1/T}}{\sum_j (p^t_j)^{1/T}}
    = \mathrm{softmax}(z^t / T)_c,\quad p = \mathrm{softmax}(z)

  KD with the temperature dropped on the student's side. Zheng & Yang show this equals
  KD plus a Rényi-entropy regulariser on the student. As in the paper (and the authors'
  code), there is no ``T**2`` factor: the student's logits are not divided by ``T``, so
  its gradient, ``p^s - \tilde p^t``, does not shrink with ``T``. The authors' code takes
  the exponent ``gamma = 1 / T`` instead of ``T``.

  Args:
    student_logits: ``[..., C]`` student logits, used at temperature 1 (any float dtype;
      computed in >= float32).
    teacher_logits: ``[..., C]`` teacher logits, same shape. Gradients flow into it too;
      wrap it in ``jax.lax.stop_gradient`` if the teacher must not be trained.
    temperature: teacher temperature ``T > 0`` (Python float or scalar array); the
      student is not softened.

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Zheng & Yang, `Knowledge Distillation Based on Transformed Teacher Matching
    <https://arxiv.org/abs/2402.11148>`_, ICLR 2024.
  """
  kl, _ = _ttm_parts(student_logits, teacher_logits, temperature)
  return kl


def wttm_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Weighted transformed-teacher-matching loss, per example.

  .. math::
    \ell = U(p^t)\, \mathrm{KL}\!\left(\tilde p^t \,\|\, p^s\right),\quad
    U(p^t) = \sum_c (p^t_c)^{1/T},\quad p = \mathrm{softmax}(z)

  with ``\tilde p^t`` as in :func:`ttm_loss`. The weight ``U`` is the normaliser of the
  power transform; for ``T > 1`` it lies in ``[1, C^{1 - 1/T}]`` and grows with the
  smoothness of the teacher's (temperature-1) distribution, so examples where the
  teacher is unsure count more. No ``T**2`` factor, as in the paper and the authors'
  code.

  Args:
    student_logits: ``[..., C]`` student logits, used at temperature 1 (any float dtype;
      computed in >= float32).
    teacher_logits: ``[..., C]`` teacher logits, same shape; they set both the target
      ``\tilde p^t`` and the weight ``U``, and gradients reach them through both (wrap
      them in ``jax.lax.stop_gradient`` if the teacher must not be trained).
    temperature: ``T > 0`` (Python float or scalar array): the target is
      ``softmax(z^t / T)`` and the weight's exponent is ``1 / T``.

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) weighted loss per example.

  References:
    Zheng & Yang, `Knowledge Distillation Based on Transformed Teacher Matching
    <https://arxiv.org/abs/2402.11148>`_, ICLR 2024 (sec. 4, WTTM).
  """
  kl, log_power_sum = _ttm_parts(student_logits, teacher_logits, temperature)
  return jnp.exp(log_power_sum) * kl
