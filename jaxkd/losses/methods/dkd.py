"""Decoupled knowledge distillation (Zhao et al. 2022): target and non-target KD apart."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import (check_static_non_negative, kl, non_target_probs,
                                   scaled_logits, split_log_probs, target_mask)
from jaxkd.losses.terms import Hyperparam, LogitTerm, Paper


def dkd_parts(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
) -> tuple[jax.Array, jax.Array]:
  r"""The two parts of Decoupled KD, TCKD and NCKD, per example.

  .. math::
    \mathrm{TCKD} = T^2\, \mathrm{KL}(b^t \,\|\, b^s),\quad
    b = (p_y,\ 1 - p_y),\qquad
    \mathrm{NCKD} = T^2\, \mathrm{KL}(\hat p^t \,\|\, \hat p^s),\quad
    \hat p_i = \frac{p_i}{1 - p_y}\ (i \ne y)

  with ``p = softmax(z / T)`` and ``y`` the label. ``\hat p`` is the softmax of the
  non-target logits alone. Together they rebuild the KD loss exactly:
  ``kd_loss = TCKD + (1 - p^t_y) * NCKD`` (the paper's reformulation of KD), the factor
  ``1 - p^t_y`` being what suppresses NCKD when the teacher is confident.

  ``log(1 - p_y)`` is a ``logsumexp`` over the non-target logits, exact even when
  ``p_y`` rounds to 1; the non-target softmax excludes the target class outright (the
  authors subtract 1000 from its logit). Labels outside ``[0, C)`` give ``NaN`` for that
  example, as in ``cross_entropy``.

  Args:
    student_logits: ``[..., C]`` student logits, ``C >= 2`` (any float dtype; computed in
      >= float32).
    teacher_logits: ``[..., C]`` teacher logits, same shape. Gradients flow into it too;
      wrap it in ``jax.lax.stop_gradient`` if the teacher must not be trained.
    labels: ``[...]`` integer class indices in ``[0, C)``.
    temperature: softmax temperature ``T > 0`` (Python float or scalar array).

  Returns:
    ``(tckd, nckd)``, each ``[...]`` float32 (float64 for float64 inputs).

  References:
    Zhao et al., `Decoupled Knowledge Distillation <https://arxiv.org/abs/2203.08679>`_,
    CVPR 2022.
  """
  student_scaled, teacher_scaled, t = scaled_logits(student_logits, teacher_logits,
                                                     temperature)
  is_target, in_range = target_mask(student_scaled, labels)
  s_target, s_rest, s_log_q = split_log_probs(student_scaled, is_target)
  t_target, t_rest, t_log_q = split_log_probs(teacher_scaled, is_target)
  log_b_t = jnp.stack([t_target, t_rest], axis=-1)
  log_b_s = jnp.stack([s_target, s_rest], axis=-1)
  tckd = kl(jnp.exp(log_b_t), log_b_t, log_b_s)
  nckd = kl(non_target_probs(t_log_q, is_target), t_log_q, s_log_q)
  scale = t**2
  return (jnp.where(in_range, scale * tckd, jnp.nan),
          jnp.where(in_range, scale * nckd, jnp.nan))


def dkd_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
    target_weight: jax.typing.ArrayLike,
    non_target_weight: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Decoupled knowledge-distillation loss, per example.

  .. math::
    \ell = w_{\mathrm{target}}\, \mathrm{TCKD} + w_{\mathrm{non\text{-}target}}\,
    \mathrm{NCKD}

  with TCKD and NCKD as in :func:`dkd_parts` (both carry ``T**2``, as in the authors'
  code). Plain KD is the special case ``w_target = 1``, ``w_non_target = 1 - p^t_y``;
  DKD frees the second weight (the paper uses ``w_target = 1``, ``w_non_target = 8`` on
  CIFAR-100, with a linear warm-up of the whole term, which belongs to the caller).

  Args:
    student_logits: ``[..., C]`` student logits, ``C >= 2`` (any float dtype; computed in
      >= float32).
    teacher_logits: ``[..., C]`` teacher logits, same shape.
    labels: ``[...]`` integer class indices in ``[0, C)``.
    temperature: softmax temperature ``T > 0`` (Python float or scalar array).
    target_weight: weight of TCKD (``alpha`` in the paper), ``>= 0``.
    non_target_weight: weight of NCKD (``beta`` in the paper), ``>= 0``.

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per example; ``NaN`` where the
    label is out of range.

  References:
    Zhao et al., `Decoupled Knowledge Distillation <https://arxiv.org/abs/2203.08679>`_,
    CVPR 2022.
  """
  check_static_non_negative(target_weight, 'target_weight')
  check_static_non_negative(non_target_weight, 'non_target_weight')
  tckd, nckd = dkd_parts(student_logits, teacher_logits, labels, temperature=temperature)
  return (jnp.asarray(target_weight, tckd.dtype) * tckd +
          jnp.asarray(non_target_weight, nckd.dtype) * nckd)


@dataclasses.dataclass(frozen=True)
class DKD(LogitTerm):
  """Decoupled KD (Zhao et al. 2022, `dkd_loss`): target and non-target parts with their own
  weights, the whole term ramped in linearly over `warmup_steps` (the paper: 20 epochs)."""

  temperature: Hyperparam = 4.0
  target_weight: float = 1.0
  non_target_weight: float = 8.0
  warmup_steps: int = 0

  name = 'dkd'
  # mdistiller DKD: CE 1, alpha 1, beta 8, T 4, 20 warm-up epochs.
  paper = Paper('Zhao et al. 2022, Decoupled Knowledge Distillation',
                'https://arxiv.org/abs/2203.08679', weight=1.0, ce_weight=1.0,
                epochs={'warmup': 20.0})
  needs_labels = True

  def warmup(self, step) -> jax.Array:
    """`min((step + 1) / warmup_steps, 1)`: the paper's epoch ramp, counted in steps."""
    if not self.warmup_steps:
      return jnp.ones((), jnp.float32)
    return jnp.minimum((jnp.asarray(step, jnp.float32) + 1.0) / self.warmup_steps, 1.0)

  def hyperparams(self, step, params=None):
    return {**super().hyperparams(step, params), 'warmup': self.warmup(step)}

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    return dkd_loss(student_logits, teacher_logits, labels, temperature=temperature,
                    target_weight=self.target_weight, non_target_weight=self.non_target_weight)

  def __call__(self, ctx):
    value, parts, state = super().__call__(ctx)
    ramp = self.warmup(ctx.step)
    return ramp * value, {k: ramp * v for k, v in parts.items()}, state
