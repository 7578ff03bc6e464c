"""Skew KL, ``T^2 KL(p_t || a p_t + (1 - a) p_s)``: DistiLLM's forward divergence."""
from __future__ import annotations

import dataclasses
import numbers

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import kl, log_probs, temperature_scale
from jaxkd.losses.terms import Hyperparam, LogitTerm, Paper, setting, within


def check_skew(skew) -> None:
  """Rejects a Python-number skew outside [0, 1) (at 1 the divergence is identically 0)."""
  if isinstance(skew, numbers.Real) and not 0.0 <= skew < 1.0:
    raise ValueError(f'skew must be in [0, 1), got {skew!r}.')


def skewed_kl(log_p: jax.Array, log_q: jax.Array, skew) -> jax.Array:
  """``KL(p || a p + (1 - a) q)`` over the last axis from log-probabilities."""
  a = jnp.asarray(skew, log_p.dtype)
  # log(a p + (1 - a) q) without forming the mixture in probability space, where a class
  # both give little mass would underflow; classes outside p's support contribute 0 (`kl`).
  log_mixture = jnp.logaddexp(jnp.log(a) + log_p, jnp.log1p(-a) + log_q)
  return kl(jnp.exp(log_p), log_p, log_mixture)


def skew_divergence(student_logits, teacher_logits, *, skew, temperature,
                    scale_by_temperature_squared: bool, reverse: bool) -> jax.Array:
  """`skew_kl_loss`, or with `reverse` `skew_reverse_kl_loss` (the roles swapped)."""
  check_skew(skew)
  log_p_s, log_p_t, t = log_probs(student_logits, teacher_logits, temperature)
  first, second = (log_p_s, log_p_t) if reverse else (log_p_t, log_p_s)
  return temperature_scale(t, scale_by_temperature_squared) * skewed_kl(first, second, skew)


def skew_kl_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    *,
    skew: jax.typing.ArrayLike = 0.1,
    temperature: jax.typing.ArrayLike = 1.0,
    scale_by_temperature_squared: bool = True,
) -> jax.Array:
  r"""Skew Kullback-Leibler divergence of DistiLLM, per position.

  .. math::
    \ell = T^2\, \mathrm{KL}\big(p^t \,\|\, a\, p^t + (1 - a)\, p^s\big),\quad
    p = \mathrm{softmax}(z / T)

  ``a = 0`` is the forward KL of ``kd_loss``; as ``a`` grows the mixture keeps the student
  side of the log away from 0 where the student gives a class little mass, which bounds the
  loss (by ``-log a``) and its gradient. The authors' code computes the cross-entropy
  ``-sum p^t log m`` (the same gradient; the loss differs by the teacher's entropy): this is
  the divergence, 0 when the student equals the teacher.

  Args:
    student_logits: ``[..., V]`` student logits (any float dtype; computed in >= float32).
    teacher_logits: ``[..., V]`` teacher logits, same shape.
    skew: ``a`` in ``[0, 1)``, the teacher's share of the mixture (0.1 in the authors' code).
    temperature: softmax temperature ``T > 0`` for both.
    scale_by_temperature_squared: multiply by ``T**2`` (default; 1 at the default ``T``).

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per position.

  References:
    Ko, Kim, Chen, Yun, `DistiLLM: Towards Streamlined Distillation for Large Language
    Models <https://arxiv.org/abs/2402.03898>`_, ICML 2024, eq. (4).
  """
  return skew_divergence(student_logits, teacher_logits, skew=skew, temperature=temperature,
                         scale_by_temperature_squared=scale_by_temperature_squared,
                         reverse=False)


@dataclasses.dataclass(frozen=True)
class SkewKL(LogitTerm):
  """DistiLLM's skew KL ``T^2 KL(p_t || a p_t + (1 - a) p_s)`` (`skew_kl_loss`)."""

  skew: float = setting(0.1, within(0, 1, open_high=True))
  temperature: Hyperparam = 1.0
  teacher_weights: tuple[float, ...] | None = None
  standardize: bool = False

  name = 'skew_kl'
  # DistiLLM trains on the skew divergence alone (a = 0.1, T = 1 in the authors' code).
  paper = Paper('Ko et al. 2024, DistiLLM', 'https://arxiv.org/abs/2402.03898', weight=1.0,
                ce_weight=0.0)

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    return skew_kl_loss(student_logits, teacher_logits, skew=self.skew, temperature=temperature)
