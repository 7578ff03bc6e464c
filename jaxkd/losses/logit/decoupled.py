"""Losses that treat the target class apart from the others: DKD and NKD.

Both need the integer label of each example; both give one value per example.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxkd.losses.kd import _check_static_temperature, _kl
from jaxkd.losses.logit._common import (_check_static_non_negative, _scaled_logits,
                                        _student_teacher)

__all__ = ['dkd_loss', 'dkd_parts', 'nkd_loss']


def _target_mask(logits: jax.Array, labels) -> tuple[jax.Array, jax.Array]:
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


def _split_log_probs(scaled_logits: jax.Array, is_target: jax.Array):
  """Log-probabilities of the target, of "any non-target", and within the non-targets.

  Returns ``(log b_target, log b_rest, log q)`` where ``b`` is the binary (target, rest)
  distribution of ``softmax(scaled_logits)`` and ``q`` the softmax over the non-target
  classes only (its target entry is meaningless: read it only where ``~is_target``).
  """
  log_all = jax.nn.logsumexp(scaled_logits, axis=-1)
  log_rest = jax.nn.logsumexp(scaled_logits, axis=-1, where=~is_target)
  log_target = jnp.sum(jnp.where(is_target, scaled_logits, 0.0), axis=-1)
  log_q = scaled_logits - log_rest[..., None]
  return log_target - log_all, log_rest - log_all, log_q


def _non_target_probs(log_q: jax.Array, is_target: jax.Array) -> jax.Array:
  """``exp(log_q)`` with the target class set to exactly 0."""
  return jnp.where(is_target, 0.0, jnp.exp(jnp.where(is_target, 0.0, log_q)))


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
  student_scaled, teacher_scaled, t = _scaled_logits(student_logits, teacher_logits,
                                                     temperature)
  is_target, in_range = _target_mask(student_scaled, labels)
  s_target, s_rest, s_log_q = _split_log_probs(student_scaled, is_target)
  t_target, t_rest, t_log_q = _split_log_probs(teacher_scaled, is_target)
  log_b_t = jnp.stack([t_target, t_rest], axis=-1)
  log_b_s = jnp.stack([s_target, s_rest], axis=-1)
  tckd = _kl(jnp.exp(log_b_t), log_b_t, log_b_s)
  nckd = _kl(_non_target_probs(t_log_q, is_target), t_log_q, s_log_q)
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
  _check_static_non_negative(target_weight, 'target_weight')
  _check_static_non_negative(non_target_weight, 'non_target_weight')
  tckd, nckd = dkd_parts(student_logits, teacher_logits, labels, temperature=temperature)
  return (jnp.asarray(target_weight, tckd.dtype) * tckd +
          jnp.asarray(non_target_weight, nckd.dtype) * nckd)


def nkd_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
    non_target_weight: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Normalized knowledge-distillation loss, per example.

  .. math::
    \ell = -p^t_y \log p^s_y
    \;-\; w\, T^2 \sum_{i \ne y} \hat q^t_i \log \hat q^s_i,\quad
    p = \mathrm{softmax}(z),\ \hat q = \mathrm{softmax}(z_{i \ne y} / T)

  The target part uses temperature 1 on both sides and weighs the student's
  log-likelihood of the label by the teacher's target probability; the non-target part is
  a cross-entropy between the *normalised* non-target distributions at temperature ``T``
  (the same ``\hat q`` as DKD's NCKD). Both parts are cross-entropies, not KLs, so the
  loss is not 0 when student and teacher agree; and the target part, a label term
  weighted by the teacher's confidence, keeps pushing ``p^s_y`` up, so a student equal
  to the teacher is not a stationary point either (NKD replaces KD, it is not a
  divergence).

  Args:
    student_logits: ``[..., C]`` student logits, ``C >= 2`` (any float dtype; computed in
      >= float32).
    teacher_logits: ``[..., C]`` teacher logits, same shape. Gradients flow into it too
      (the authors detach the teacher's target probability); wrap it in
      ``jax.lax.stop_gradient`` if the teacher must not be trained.
    labels: ``[...]`` integer class indices in ``[0, C)``.
    temperature: temperature ``T > 0`` of the non-target part only (Python float or
      scalar array).
    non_target_weight: ``w`` (``gamma`` in the paper, 1.5 on ImageNet), ``>= 0``.

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per example; ``NaN`` where the
    label is out of range.

  References:
    Yang et al., `From Knowledge Distillation to Self-Knowledge Distillation: A Unified
    Approach with Normalized Loss and Customized Soft Labels
    <https://arxiv.org/abs/2303.13005>`_, ICCV 2023.
  """
  _check_static_temperature(temperature)
  _check_static_non_negative(non_target_weight, 'non_target_weight')
  student_logits, teacher_logits = _student_teacher(student_logits, teacher_logits)
  is_target, in_range = _target_mask(student_logits, labels)
  t = jnp.asarray(temperature, student_logits.dtype)
  s_target, _, _ = _split_log_probs(student_logits, is_target)
  t_target, _, _ = _split_log_probs(teacher_logits, is_target)
  target_part = -jnp.exp(t_target) * s_target
  _, _, s_log_q = _split_log_probs(student_logits / t, is_target)
  _, _, t_log_q = _split_log_probs(teacher_logits / t, is_target)
  # With a zero "log p_t", _kl is the cross-entropy -sum q_t log q_s, 0 * log 0 = 0 included.
  cross_entropy = _kl(_non_target_probs(t_log_q, is_target), jnp.zeros_like(t_log_q),
                      s_log_q)
  weight = jnp.asarray(non_target_weight, cross_entropy.dtype)
  loss = target_part + weight * t**2 * cross_entropy
  return jnp.where(in_range, loss, jnp.nan)
