"""Divergences other than forward KL between temperature-softened distributions.

Reverse KL and the generalised Jensen-Shannon divergence of GKD (Agarwal et al. 2024),
which interpolates between forward and reverse KL. One value per example.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxkd.losses.kd import _kl, _temperature_scale
from jaxkd.losses.logit._common import _check_static_open_unit, _scaled_logits

__all__ = ['jsd_loss', 'reverse_kl_loss']


def _log_probs(student_logits, teacher_logits, temperature):
  """Temperature-``T`` log-probabilities of student and teacher, and ``T`` as an array."""
  student_scaled, teacher_scaled, t = _scaled_logits(student_logits, teacher_logits,
                                                     temperature)
  return (jax.nn.log_softmax(student_scaled, axis=-1),
          jax.nn.log_softmax(teacher_scaled, axis=-1), t)


def reverse_kl_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
    scale_by_temperature_squared: bool = True,
) -> jax.Array:
  r"""Reverse-KL distillation loss ``T**2 * KL(p_s || p_t)``, per example.

  .. math::
    \ell = T^2 \sum_c p^s_c (\log p^s_c - \log p^t_c),\quad
    p^s = \mathrm{softmax}(z^s / T),\ p^t = \mathrm{softmax}(z^t / T)

  The mode-seeking direction: the student is penalised for mass where the teacher has
  little, not for missing some of the teacher's modes. Classes the student gives
  probability exactly 0 contribute 0. The loss is infinite where the teacher gives
  probability exactly 0 (logit ``-inf``) to a class the student does not.

  Args:
    student_logits: ``[..., C]`` student logits (any float dtype; computed in >= float32).
    teacher_logits: ``[..., C]`` teacher logits, same shape. Gradients flow into it too;
      wrap it in ``jax.lax.stop_gradient`` if the teacher must not be trained.
    temperature: softmax temperature ``T > 0`` for both (Python float or scalar array).
    scale_by_temperature_squared: multiply by ``T**2`` (default), as in ``kd_loss``.

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Agarwal et al., `On-Policy Distillation of Language Models: Learning from
    Self-Generated Mistakes <https://arxiv.org/abs/2306.13649>`_, ICLR 2024 (reverse KL
    as the ``beta = 1`` end of the generalised JSD).
  """
  log_p_s, log_p_t, t = _log_probs(student_logits, teacher_logits, temperature)
  return _temperature_scale(t, scale_by_temperature_squared) * _kl(
      jnp.exp(log_p_s), log_p_s, log_p_t)


def jsd_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
    mixing_weight: jax.typing.ArrayLike,
    scale_by_temperature_squared: bool = True,
) -> jax.Array:
  r"""Generalised Jensen-Shannon divergence between teacher and student, per example.

  .. math::
    \ell = T^2 \left[ w\, \mathrm{KL}(p^t \,\|\, m) + (1 - w)\, \mathrm{KL}(p^s \,\|\, m)
    \right],\quad m = w\, p^t + (1 - w)\, p^s,\quad p = \mathrm{softmax}(z / T)

  ``w`` (``mixing_weight``) is the teacher's weight in the mixture. ``loss / w`` tends to
  the forward KL ``kd_loss`` as ``w -> 0`` and ``loss / (1 - w)`` to ``reverse_kl_loss``
  as ``w -> 1``; ``w = 0.5`` is the symmetric Jensen-Shannon divergence, bounded by
  ``T**2 * log 2``. The loss itself goes to 0 at both ends, so a ``w`` close to 0 or 1
  wants a larger term weight. The log-ratios ``log(m / p)`` are formed directly (a
  ``logaddexp`` of the log-ratio of the two distributions), which keeps the second-order
  term accurate for ``w`` near 0 or 1; classes where a distribution is exactly 0
  contribute 0 to its KL, with finite gradients.

  Args:
    student_logits: ``[..., C]`` student logits (any float dtype; computed in >= float32).
    teacher_logits: ``[..., C]`` teacher logits, same shape. Gradients flow into it too;
      wrap it in ``jax.lax.stop_gradient`` if the teacher must not be trained.
    temperature: softmax temperature ``T > 0`` for both (Python float or scalar array).
    mixing_weight: ``w`` in the open interval ``(0, 1)``, the teacher's share of the
      mixture ``m`` (``beta`` in the paper and in TRL's ``GKDTrainer``); a Python float
      or a scalar array.
    scale_by_temperature_squared: multiply by ``T**2`` (default), as in ``kd_loss``; the
      GKD paper and TRL use ``T = 1`` and no such factor.

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Agarwal et al., `On-Policy Distillation of Language Models: Learning from
    Self-Generated Mistakes <https://arxiv.org/abs/2306.13649>`_, ICLR 2024, eq. (1).
  """
  _check_static_open_unit(mixing_weight, 'mixing_weight')
  log_p_s, log_p_t, t = _log_probs(student_logits, teacher_logits, temperature)
  w = jnp.asarray(mixing_weight, log_p_s.dtype)
  log_w, log_1mw = jnp.log(w), jnp.log1p(-w)
  p_s, p_t = jnp.exp(log_p_s), jnp.exp(log_p_t)
  on_s, on_t = p_s > 0, p_t > 0
  # log(p_t / p_s) where both are positive; elsewhere the `where`s below pick the limit.
  both = on_s & on_t
  log_t_over_s = jnp.where(both, jnp.where(both, log_p_t, 0.0) - jnp.where(both, log_p_s, 0.0),
                           0.0)
  # log(m / p_s) = log(w p_t / p_s + 1 - w) and log(m / p_t) = log(w + (1 - w) p_s / p_t),
  # each tending to 0 at its own end: no cancellation between two O(1) logarithms.
  log_m_over_s = jnp.where(on_t, jnp.logaddexp(log_w + log_t_over_s, log_1mw), log_1mw)
  log_m_over_t = jnp.where(on_s, jnp.logaddexp(log_w, log_1mw - log_t_over_s), log_w)
  kl_t = -jnp.sum(jnp.where(on_t, p_t * log_m_over_t, 0.0), axis=-1)
  kl_s = -jnp.sum(jnp.where(on_s, p_s * log_m_over_s, 0.0), axis=-1)
  return _temperature_scale(t, scale_by_temperature_squared) * (w * kl_t + (1 - w) * kl_s)
