"""Similarity-preserving KD (Tung & Mori 2019): the batch's row-normalised similarity matrices."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import batch_pair, gram, normalize
from jaxkd.losses.terms import Paper, RelationTerm


def sp_loss(
    student_features: jax.typing.ArrayLike,
    teacher_features: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Similarity-preserving KD loss: match the batch's row-normalised similarity matrices.

  .. math::
    G = f f^\top,\quad \tilde G_{i,:} = \frac{G_{i,:}}{\max(\|G_{i,:}\|_2,\ 10^{-12})},\quad
    \ell = \frac{1}{B^2} \left\| \tilde G^s - \tilde G^t \right\|_F^2

  with ``f`` the ``[B, D]`` flattened features of each side, so ``G`` is ``[B, B]``: how
  similar each example's activations are to every other example's. Student and teacher
  may have different ``D``. This is the paper's loss and RepDistiller's ``Similarity``,
  which returns the same value (as a ``[1]`` tensor) for the batch; RepDistiller weighs
  it by 3000 and applies it to the last convolutional feature maps.
  Permuting the batch consistently on both sides leaves the value unchanged.

  Args:
    student_features: ``[B, ...]`` student features (flattened to ``[B, D_s]``; any float
      dtype, computed in >= float32), ``B >= 2``.
    teacher_features: ``[B, ...]`` teacher features (flattened to ``[B, D_t]``). Gradients
      flow into them too; wrap them in ``jax.lax.stop_gradient`` if the teacher must not
      be trained.

  Returns:
    ``[]`` float32 (float64 for float64 inputs) loss for the batch.

  References:
    Tung & Mori, `Similarity-Preserving Knowledge Distillation
    <https://arxiv.org/abs/1907.09682>`_, ICCV 2019.
  """
  student, teacher = batch_pair(student_features, teacher_features, 'student_features',
                                 'teacher_features')
  batch = student.shape[0]
  diff = normalize(gram(student)) - normalize(gram(teacher))
  return jnp.sum(diff * diff) / (batch * batch)


@dataclasses.dataclass(frozen=True)
class SP(RelationTerm):
  """Similarity-preserving KD (Tung & Mori 2019, `sp_loss`): the batch's row-normalised
  similarity matrices of the features at the taps (the paper: the last stage)."""

  name = 'sp'
  # RepDistiller's run script: weight 3000, the last conv stage.
  paper = Paper('Tung & Mori 2019, Similarity-Preserving Knowledge Distillation',
                'https://arxiv.org/abs/1907.09682', weight=3000.0, ce_weight=1.0)

  def relation(self, student, teacher):
    return sp_loss(student, teacher)
