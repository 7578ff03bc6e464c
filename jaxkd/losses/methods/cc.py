"""Correlation congruence (Peng et al. 2019): the batch's approximate RBF kernel matrices."""
from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import batch_pair, gram, normalize
from jaxkd.losses.terms import Paper, RelationTerm, positive, setting, whole


def _check_cc_settings(gamma, order) -> None:
  """``gamma > 0`` (when a Python number) and ``order`` a Python int >= 1."""
  if isinstance(gamma, numbers.Real) and not gamma > 0:
    raise ValueError(f'gamma must be > 0, got {gamma!r}; the paper uses 0.4.')
  if isinstance(order, bool) or not isinstance(order, numbers.Integral) or order < 1:
    raise ValueError(
        f'order must be a Python int >= 1 (the number of Taylor terms past the constant), '
        f'got {order!r}; the paper uses 2.')


def _cc_matrix(embeddings: jax.Array, gamma: jax.Array, order: int) -> jax.Array:
  """Order-``P`` Taylor expansion of the RBF kernel matrix of L2-normalised embeddings."""
  similarity = gram(normalize(embeddings))
  scale = 2.0 * gamma
  total = jnp.ones_like(similarity)
  power = jnp.ones_like(similarity)
  for p in range(1, order + 1):
    power = power * similarity
    total = total + scale**p / math.factorial(p) * power
  return jnp.exp(-scale) * total


def cc_loss(
    student_embeddings: jax.typing.ArrayLike,
    teacher_embeddings: jax.typing.ArrayLike,
    *,
    gamma: jax.typing.ArrayLike,
    order: int,
) -> jax.Array:
  r"""Correlation-congruence loss: match the batch's (approximate) RBF kernel matrices.

  .. math::
    k(x_i, x_j) = e^{-2\gamma} \sum_{p=0}^{P} \frac{(2\gamma)^p}{p!}
      \left(\hat x_i^\top \hat x_j\right)^p,\qquad
    \ell = \frac{1}{B^2} \left\| K^s - K^t \right\|_F^2

  with ``\hat x = x / max(||x||, 1e-12)`` the L2-normalised embeddings and ``K`` the
  ``[B, B]`` matrix of ``k``. For unit vectors ``exp(-gamma ||x_i - x_j||^2) =
  exp(-2 gamma) exp(2 gamma x_i . x_j)``, and the sum is its order-``P`` Taylor
  expansion; the normalisation is what makes it approximate the Gaussian RBF. The
  reduction is the paper's ``1/n^2`` times the squared Frobenius norm, the same as
  ``F.mse_loss`` of the two matrices (as in Knowledge-Distillation-Zoo's ``CC``). Only the
  correlation-congruence term is here; the paper adds it to KD and cross-entropy.
  torchdistill's ``CCKDLoss`` differs in two ways: it does not normalise the embeddings
  (its ``Linear4CCKD`` is a bare linear layer), and it divides the *unsquared* Frobenius
  norm (``torch.dist``) by ``B**2`` (``reduction='batchmean'``), so for normalised
  embeddings its value is ``sqrt(loss) / B``. RepDistiller's ``Correlation`` is not this
  kernel loss at all (it multiplies the absolute student-teacher differences of
  neighbouring examples in the batch). torchdistill's ImageNet config uses
  ``gamma = 0.4``, ``P = 2`` and weighs the term 0.003.

  An all-zero embedding (e.g. a dead ReLU row) is normalised to 0 with a zero gradient: it
  takes no part in the kernel and gets no gradient, where the formula (and
  ``F.normalize``, ``x / max(||x||, 1e-12)``) has a derivative of ``1 / 1e-12`` there, in
  an arbitrary direction. Such a row stays where it is rather than receiving a 1e12 step.

  Args:
    student_embeddings: ``[B, ...]`` student embeddings (flattened to ``[B, D_s]``; in the
      paper and torchdistill, a linear projection of the pooled features), ``B >= 2``; any
      float dtype, computed in >= float32.
    teacher_embeddings: ``[B, ...]`` teacher embeddings (flattened to ``[B, D_t]``).
      Gradients flow into them too; wrap them in ``jax.lax.stop_gradient`` if the teacher
      (and its projection) must not be trained.
    gamma: RBF width ``gamma > 0`` (Python float or scalar array).
    order: Taylor order ``P >= 1``, a Python int.

  Returns:
    ``[]`` float32 (float64 for float64 inputs) loss for the batch.

  References:
    Peng et al., `Correlation Congruence for Knowledge Distillation
    <https://arxiv.org/abs/1904.01802>`_, ICCV 2019.
  """
  _check_cc_settings(gamma, order)
  student, teacher = batch_pair(student_embeddings, teacher_embeddings,
                                 'student_embeddings', 'teacher_embeddings')
  batch = student.shape[0]
  gamma = jnp.asarray(gamma, student.dtype)
  diff = _cc_matrix(student, gamma, order) - _cc_matrix(teacher, gamma, order)
  return jnp.sum(diff * diff) / (batch * batch)


@dataclasses.dataclass(frozen=True)
class CC(RelationTerm):
  """Correlation congruence (Peng et al. 2019, `cc_loss`): the batch's Gaussian-RBF kernel
  matrices (order-`order` Taylor expansion, `gamma`) of the L2-normalised embeddings."""

  gamma: float = setting(0.4, positive)
  order: int = setting(2, whole(1))

  name = 'cc'
  # gamma 0.4, order 2 (torchdistill); no released weight for this reduction (squared
  # Frobenius / B^2, as Knowledge-Distillation-Zoo's CC): 100, set a priori.
  paper = Paper('Peng et al. 2019, Correlation Congruence for Knowledge Distillation',
                'https://arxiv.org/abs/1904.01802', weight=100.0, ce_weight=1.0)

  def relation(self, student, teacher):
    return cc_loss(student, teacher, gamma=self.gamma, order=self.order)
