"""Cross-entropy on the hard labels, with optional label smoothing (Szegedy et al. 2016)."""
from __future__ import annotations

import dataclasses
import numbers

import jax
import jax.numpy as jnp
import optax

from jaxkd.losses.numerics import upcast
from jaxkd.losses.terms import Paper, Term, setting, within


def cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    label_smoothing: float = 0.0,
) -> jax.Array:
  r"""Softmax cross-entropy with integer labels and optional label smoothing, per example.

  .. math::
    \ell = -\sum_c q_c \log \mathrm{softmax}(z)_c,\quad
    q = (1 - \epsilon)\,\mathrm{onehot}(y) + \epsilon / C

  i.e. ``(1 - eps) * (logsumexp(z) - z_y) + eps * (logsumexp(z) - mean_c z_c)``: the
  smoothing mass ``eps`` is spread uniformly over all ``C`` classes, the true one included
  (the ``optax.smooth_labels`` convention).

  Labels outside ``[0, C)`` (negative ones included, which would otherwise wrap around to
  the last classes) give ``NaN`` for that example rather than a plausible-looking number,
  so a non-finite-loss check catches them. Exclude padding examples with
  ``jnp.where(mask, loss, 0)`` or ``jnp.sum(..., where=mask)``, not ``loss * mask``
  (``NaN * 0`` is ``NaN``), or give them a valid label.

  Args:
    logits: ``[..., C]`` unnormalised log-probabilities (any float dtype; computed in
      >= float32).
    labels: ``[...]`` integer class indices in ``[0, C)``.
    label_smoothing: ``eps`` in ``[0, 1]``; a Python float or a scalar array.

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Szegedy et al., `Rethinking the Inception Architecture for Computer Vision
    <https://arxiv.org/abs/1512.00567>`_, 2016 (label smoothing, sec. 7).
  """
  logits = upcast(logits)
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(
        f'labels must be integer class indices, got dtype {labels.dtype}; for soft or '
        'one-hot targets use optax.losses.softmax_cross_entropy.')
  if labels.shape != logits.shape[:-1]:
    raise ValueError(
        f'labels shape {labels.shape} does not match logits shape {logits.shape} without '
        'its class axis; pass one integer label per example.')
  if isinstance(label_smoothing, numbers.Real) and not 0.0 <= label_smoothing <= 1.0:
    raise ValueError(f'label_smoothing must be in [0, 1], got {label_smoothing!r}.')
  num_classes = logits.shape[-1]
  in_range = (labels >= 0) & (labels < num_classes)
  loss = optax.losses.softmax_cross_entropy_with_integer_labels(
      logits, jnp.where(in_range, labels, 0))
  if not (isinstance(label_smoothing, numbers.Real) and label_smoothing == 0.0):
    eps = jnp.asarray(label_smoothing, logits.dtype)
    uniform = jax.nn.logsumexp(logits, axis=-1) - jnp.mean(logits, axis=-1)
    loss = (1.0 - eps) * loss + eps * uniform
  return jnp.where(in_range, loss, jnp.nan)


@dataclasses.dataclass(frozen=True)
class CrossEntropy(Term):
  """Hard-label cross-entropy with optional label smoothing (`jaxkd.losses.cross_entropy`)."""

  label_smoothing: float = setting(0.0, within(0, 1))

  name = 'ce'
  family = 'classic'
  # Plain supervised training.
  paper = Paper('Szegedy et al. 2016, Rethinking the Inception Architecture (label smoothing)',
                'https://arxiv.org/abs/1512.00567', weight=1.0, ce_weight=1.0)
  from_run = ('label_smoothing',)
  needs_teacher = False
  needs_labels = True

  def __call__(self, ctx):
    return cross_entropy(ctx.student.logits, ctx.labels,
                         label_smoothing=self.label_smoothing), {}, ctx.state
