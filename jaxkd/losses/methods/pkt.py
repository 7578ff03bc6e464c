"""Probabilistic knowledge transfer (Passalis & Tefas 2018): KL between the batch's
cosine-kernel neighbour distributions."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import batch_pair, gram, safe_norm
from jaxkd.losses.terms import Paper, RelationTerm


# RepDistiller's PKT adds this to the norms and to both probabilities inside the log.
_PKT_EPS = 1e-7


def _pkt_probabilities(features: jax.Array) -> jax.Array:
  """Cosine similarities mapped to ``[0, 1]`` and normalised over each row: ``[B, B]``."""
  norm = safe_norm(features, -1)
  unit = jnp.where(norm != 0, features / (norm + _PKT_EPS), 0.0)
  similarity = (gram(unit) + 1.0) / 2.0
  return similarity / jnp.sum(similarity, axis=-1, keepdims=True)


def pkt_loss(
    student_features: jax.typing.ArrayLike,
    teacher_features: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Probabilistic knowledge transfer: KL between cosine-kernel neighbour distributions.

  .. math::
    K_{ij} = \frac{1}{2}\left(\frac{x_i^\top x_j}{(\|x_i\| + \epsilon)(\|x_j\| + \epsilon)}
      + 1\right),\quad
    p_{ij} = \frac{K_{ij}}{\sum_k K_{ik}},\qquad
    \ell = \frac{1}{B^2} \sum_{i,j} p^t_{ij}
      \log\frac{p^t_{ij} + \epsilon}{p^s_{ij} + \epsilon}

  with ``\epsilon = 1e-7``: each example's distribution over its neighbours in the batch,
  from the cosine kernel, and the teacher-to-student KL between them. This is
  RepDistiller's ``PKT.cosine_similarity_loss`` (the authors' code): the mean over all
  ``B**2`` entries, i.e. the row-summed KL averaged over rows and divided again by ``B``.
  The paper sums over pairs and leaves each example out of its own neighbour distribution
  (``k != j``); the code keeps the diagonal (``K_ii ~ 1``) and adds ``epsilon`` inside the
  log. RepDistiller weighs it by 30000 on the penultimate embeddings. 0 for identical
  inputs.

  An all-zero feature row gives cosine 0 to every neighbour (``K = 1/2``) with a zero
  gradient: the row gets no gradient, where the formula's ``x / (||x|| + 1e-7)`` has a
  derivative of ``1 / 1e-7`` there (RepDistiller's code would take that step, in the
  direction of the other rows' gradient). A dead row stays dead rather than jumping.

  Args:
    student_features, teacher_features: ``[B, ...]`` features of each side (flattened to
      ``[B, D_s]`` and ``[B, D_t]``; any float dtype, computed in >= float32), ``B >= 2``.
      Gradients flow into both; stop the teacher's if it must not be trained.

  Returns:
    ``[]`` float32 (float64 for float64 inputs) loss for the batch.

  References:
    Passalis & Tefas, `Learning Deep Representations with Probabilistic Knowledge Transfer
    <https://arxiv.org/abs/1803.10837>`_, ECCV 2018.
  """
  student, teacher = batch_pair(student_features, teacher_features, 'student_features',
                                 'teacher_features')
  p_s = _pkt_probabilities(student)
  p_t = _pkt_probabilities(teacher)
  return jnp.mean(p_t * jnp.log((p_t + _PKT_EPS) / (p_s + _PKT_EPS)))


@dataclasses.dataclass(frozen=True)
class PKT(RelationTerm):
  """Probabilistic knowledge transfer (Passalis & Tefas 2018, `pkt_loss`): KL between the
  batch's cosine-similarity distributions of the embeddings."""

  name = 'pkt'
  # RepDistiller: weight 30000, the penultimate layer.
  paper = Paper('Passalis & Tefas 2018, Learning Deep Representations with Probabilistic '
                'Knowledge Transfer',
                'https://arxiv.org/abs/1803.10837', weight=30000.0, ce_weight=1.0)

  def relation(self, student, teacher):
    return pkt_loss(student, teacher)
