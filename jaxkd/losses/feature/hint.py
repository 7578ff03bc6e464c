"""FitNets hint loss: mean squared error between (already projected) feature maps."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxkd.losses.kd import _upcast

__all__ = ['hint_loss']


def hint_loss(
    student_features: jax.typing.ArrayLike,
    teacher_features: jax.typing.ArrayLike,
) -> jax.Array:
  r"""FitNets hint loss: mean squared error over all non-batch axes, per example.

  .. math::
    \ell_b = \frac{1}{D} \sum_{d} \left(r(f^s)_{b,d} - f^t_{b,d}\right)^2

  where ``d`` runs over the ``D`` entries of one example's features (e.g. ``H * W * C``).
  The regressor ``r`` that maps the student's features to the teacher's shape (a 1x1 or
  3x3 convolution in FitNets) is trained with the student and lives in the term that
  wraps this function: pass its output here. The batch mean of this loss equals
  ``F.mse_loss`` over the whole batch, as in mdistiller's FitNet; the paper's
  ``1/2 ||.||^2`` is a sum, not a mean, so it differs by the constant ``D / 2``.

  Args:
    student_features: ``[B, ...]`` student features, already mapped to the teacher's
      shape (any float dtype; computed in >= float32).
    teacher_features: ``[B, ...]`` teacher features, same shape. Gradients flow into it
      too; wrap it in ``jax.lax.stop_gradient`` if the teacher must not be trained.

  Returns:
    ``[B]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Romero et al., `FitNets: Hints for Thin Deep Nets <https://arxiv.org/abs/1412.6550>`_,
    ICLR 2015.
  """
  student_features = _upcast(student_features)
  teacher_features = _upcast(teacher_features)
  if student_features.shape != teacher_features.shape:
    raise ValueError(
        f'student_features shape {student_features.shape} and teacher_features shape '
        f'{teacher_features.shape} differ; map the student features to the teacher\'s shape '
        '(the hint regressor) before the loss.')
  if student_features.ndim == 0:
    raise ValueError('student_features must have a batch axis, got a scalar.')
  squared = jnp.square(student_features - teacher_features)
  return jnp.mean(squared.reshape(squared.shape[0], -1), axis=-1)
