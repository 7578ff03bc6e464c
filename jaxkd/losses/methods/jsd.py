"""The generalised Jensen-Shannon divergence of GKD (Agarwal et al. 2024)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import check_static_open_unit, log_probs, temperature_scale
from jaxkd.losses.terms import Hyperparam, LogitTerm, Paper, setting, within


def jsd_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
    mixing_weight: jax.typing.ArrayLike,
    scale_by_temperature_squared: bool = False,
) -> jax.Array:
  r"""Generalised Jensen-Shannon divergence between teacher and student, per example.

  .. math::
    \ell = w\, \mathrm{KL}(p^t \,\|\, m) + (1 - w)\, \mathrm{KL}(p^s \,\|\, m),\quad
    m = w\, p^t + (1 - w)\, p^s,\quad p = \mathrm{softmax}(z / T)

  as in the GKD paper (eq. 1) and TRL's ``GKDTrainer``: no ``T**2`` factor by default
  (``scale_by_temperature_squared=True`` multiplies by it, as ``kd_loss`` does; until
  Hardening II that was the default, so runs with ``T != 1`` give other numbers now).

  ``w`` (``mixing_weight``, the paper's and TRL's ``beta``) is the teacher's weight in the
  mixture. ``beta -> 0`` is the forward KL ``KL(p^t || p^s)`` (``loss / w`` tends to
  ``kd_loss`` without ``T**2``) and ``beta -> 1`` the reverse KL ``KL(p^s || p^t)``
  (``loss / (1 - w)`` tends to ``reverse_kl_loss``), as in the paper and TRL (which
  special-cases the two ends). EasyDeL's GKD loss names the ends the other way round
  (its ``beta -> 0`` is the reverse KL): to compare with it, pass ``mixing_weight = 1 -
  beta``. ``w = 0.5`` is the symmetric Jensen-Shannon divergence, bounded by ``log 2``.
  The loss itself goes to 0 at both ends, so a ``w`` close to 0 or 1 wants a larger term
  weight. The log-ratios ``log(m / p)`` are formed directly (a
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
    scale_by_temperature_squared: multiply by ``T**2``, as ``kd_loss`` does; off by
      default, as in the GKD paper and TRL.

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Agarwal et al., `On-Policy Distillation of Language Models: Learning from
    Self-Generated Mistakes <https://arxiv.org/abs/2306.13649>`_, ICLR 2024, eq. (1).
  """
  check_static_open_unit(mixing_weight, 'mixing_weight')
  log_p_s, log_p_t, t = log_probs(student_logits, teacher_logits, temperature)
  w = jnp.asarray(mixing_weight, log_p_s.dtype)
  log_w, log_1mw = jnp.log(w), jnp.log1p(-w)
  p_s, p_t = jnp.exp(log_p_s), jnp.exp(log_p_t)
  on_s, on_t = p_s != 0, p_t != 0  # a NaN row stays NaN
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
  return temperature_scale(t, scale_by_temperature_squared) * (w * kl_t + (1 - w) * kl_s)


@dataclasses.dataclass(frozen=True)
class JSD(LogitTerm):
  """Generalised Jensen-Shannon divergence (Agarwal et al. 2024, `jsd_loss`): the teacher
  has weight `mixing_weight` (the paper's beta) in the mixture; near 0 it is the forward KL
  times that weight, near 1 the reverse KL times one minus it. No `T**2` factor unless
  `scale_by_temperature_squared` (the paper's and TRL's definition; it was on by default
  before Hardening II, which changes the numbers of runs with `T != 1`)."""

  temperature: Hyperparam = 1.0
  mixing_weight: float = setting(0.5, within(0, 1, open_low=True, open_high=True))
  scale_by_temperature_squared: bool = False

  name = 'jsd'
  # GKD: mixing 0.5, T = 1 as in their experiments; the kd recipe's weights.
  paper = Paper('Agarwal et al. 2024, On-Policy Distillation of Language Models',
                'https://arxiv.org/abs/2306.13649', weight=0.9, ce_weight=0.1)

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    return jsd_loss(student_logits, teacher_logits, temperature=temperature,
                    mixing_weight=self.mixing_weight,
                    scale_by_temperature_squared=self.scale_by_temperature_squared)
