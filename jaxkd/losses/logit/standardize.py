"""Logit standardisation: a z-score over the class axis before any softmax."""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from jaxkd.losses.kd import _upcast

__all__ = ['standardize_logits']


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
  logits = _upcast(logits)
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
