"""Relational KD (Park et al. 2019): the batch's pairwise distances and triplet angles."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import (NORM_EPS, PRECISION, batch_pair, check_static_non_negative,
                                   gram, normalize)
from jaxkd.losses.terms import Paper, RelationTerm


# RepDistiller's RKD pdist clamps squared distances to at least this.
_DISTANCE_FLOOR = 1e-12


def _smooth_l1(a: jax.Array, b: jax.Array) -> jax.Array:
  """``F.smooth_l1_loss`` (Huber with ``delta = 1``), mean over every entry."""
  diff = jnp.abs(a - b)
  return jnp.mean(jnp.where(diff < 1.0, 0.5 * diff * diff, diff - 0.5))


def _normalized_distances(embeddings: jax.Array) -> jax.Array:
  """Pairwise distances ``[B, B]`` divided by their mean over distinct pairs.

  As RepDistiller's ``pdist``: squared distances from the Gram matrix, clamped to at least
  ``1e-12`` before the square root, and a zero diagonal.
  """
  batch = embeddings.shape[0]
  squared_norms = jnp.sum(embeddings * embeddings, axis=-1)
  squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * gram(embeddings)
  distances = jnp.sqrt(jnp.maximum(squared, _DISTANCE_FLOOR))
  distances = jnp.where(jnp.eye(batch, dtype=bool), 0.0, distances)
  # Off the diagonal every distance is >= 1e-6, so this is the authors' mean over d > 0.
  mean = jnp.sum(distances) / (batch * (batch - 1))
  return distances / mean


def _squared_distances(embeddings: jax.Array) -> jax.Array:
  """Squared distances ``[B, B]`` summed over the differences, exactly symmetric.

  Not from the Gram matrix: an entry is 0 exactly when two rows are equal (where
  ``F.normalize`` meets the zero vector), and short distances keep their relative
  precision rather than an error of order ``eps * ||x||**2``. XLA fuses the broadcast
  differences into the reduction.
  """
  diff = embeddings[:, None, :] - embeddings[None, :, :]
  squared = jnp.sum(diff * diff, axis=-1)
  return 0.5 * (squared + squared.T)


def _inverse_lengths(squared: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``1 / max(||x_j - x_i||, 1e-12)``, 0 for equal rows, and its derivative in ``squared``."""
  positive = squared > 0
  length = jnp.sqrt(jnp.where(positive, squared, 1.0))
  inverse = jnp.where(positive, 1.0 / jnp.maximum(length, NORM_EPS), 0.0)
  derivative = jnp.where(positive & (length > NORM_EPS), -0.5 * inverse * inverse * inverse,
                         0.0)
  return inverse, derivative


def _doubled_cosines(numerator: jax.Array, inverse_a: jax.Array,
                     inverse_b: jax.Array) -> jax.Array:
  """Twice the cosines, from ``numerator = S_ij + S_ik - S_jk = 2 (x_j - x_i).(x_k - x_i)``.

  Halved only in the student-teacher difference (exact: a power of 2), which saves an
  operation per triplet. One expression for every pass, so all passes round alike. A pair
  with ``x_j == x_i`` (``j == i`` included) has inverse length 0, so its cosines are
  exactly 0, as for ``F.normalize``'s zero vector, without relying on cancellation.
  Not clipped to ``[-1, 1]``, as the direct formulation is not: there too ``|u|**2`` of a
  normalised vector may exceed 1 by round-off (``j == k``, collinear triplets). A clip
  would change such values by round-off only, but zero their gradients, and XLA:CPU does
  not fuse a clamp into the triplet loop.
  """
  return numerator * (inverse_a * inverse_b)


def _huber_sum(diff: jax.Array) -> jax.Array:
  """Sum of ``_smooth_l1``'s terms (the same values), without a select for XLA:CPU to fuse."""
  size = jnp.abs(diff)
  clipped = jnp.minimum(size, 1.0)
  return jnp.sum(clipped * (size - 0.5 * clipped))


def _huber_slope(diff: jax.Array) -> jax.Array:
  """Derivative of the Huber term: ``diff`` clipped to ``[-1, 1]``."""
  return diff / jnp.maximum(jnp.abs(diff), 1.0)


# On XLA:CPU the [B, B, B] work of the angle loss runs in a loop over the vertices, this
# many per step. In one step XLA:CPU fuses it badly, materialising several [B, B, B]
# temporaries: 3-15x slower at B = 64..256 (JAX 0.10.2); steps of 8-32 vertices ran
# 1.1-1.5x slower than 4 (step 0: the whole batch at once, `lax.map`'s batch_size 0).
_CPU_ANGLE_ROWS = 4


def _by_rows(fn, rows: tuple[jax.Array, ...], step: int) -> jax.Array:
  """``fn`` of each row of ``rows`` (leading axis), ``step`` rows per loop step."""
  return jax.lax.map(lambda row: fn(*row), rows, batch_size=step)


def _angle_huber_sum(student: jax.Array, teacher: jax.Array, step: int) -> jax.Array:
  """Sum over all ``B**3`` triplets of the Huber term of the cosine differences."""
  squared_s, squared_t = _squared_distances(student), _squared_distances(teacher)
  inverse_s, _ = _inverse_lengths(squared_s)
  inverse_t, _ = _inverse_lengths(squared_t)

  def vertex(row_s, inv_s, row_t, inv_t):  # vertex i: [B, B] over (j, k)
    cos_s = _doubled_cosines((row_s[:, None] + row_s[None, :]) - squared_s, inv_s[:, None],
                             inv_s)
    cos_t = _doubled_cosines((row_t[:, None] + row_t[None, :]) - squared_t, inv_t[:, None],
                             inv_t)
    return _huber_sum(0.5 * (cos_s - cos_t))

  return jnp.sum(_by_rows(vertex, (squared_s, inverse_s, squared_t, inverse_t), step))


def _angle_gradient(x: jax.Array, other: jax.Array, cotangent: jax.Array,
                    step: int) -> jax.Array:
  """Gradient of ``_angle_huber_sum`` w.r.t. the embeddings ``x`` of one side.

  With ``n_ijk = S_ij + S_ik - S_jk`` and ``u_ij`` the inverse length, the cosine is
  ``c_ijk = n_ijk u_ij u_ik / 2``; ``g_ijk`` is the Huber slope at ``c_ijk - c'_ijk`` (the
  other side's cosine). Since ``c_ijk = c_ikj``, the derivative in the squared distance
  ``S_ij``, taken as independent of ``S_ji``, is
  ``W_ij = sum_k g_ijk u_ik (u_ij + u'_ij n_ijk) - 1/2 sum_i' g_i'ij u_i'i u_i'j``
  (``u'`` the derivative of ``u``; the second sum is ``S_ij`` as the side opposite a vertex
  ``i'``). Each sum is computed row by row (vertex rows, then pair rows) as a reduction over
  the last axis. ``dS_ij / dx_i = 2 (x_i - x_j)`` then gives the gradient from ``W + W^T``.
  """
  squared, squared_o = _squared_distances(x), _squared_distances(other)
  inverse, derivative = _inverse_lengths(squared)
  inverse_o, _ = _inverse_lengths(squared_o)

  def vertex(row, inv, der, row_o, inv_o):  # vertex i: [B(j), B(k)] -> [B(j)]
    numerator = (row[:, None] + row[None, :]) - squared
    slope = _huber_slope(0.5 * (
        _doubled_cosines(numerator, inv[:, None], inv) -
        _doubled_cosines((row_o[:, None] + row_o[None, :]) - squared_o, inv_o[:, None], inv_o)))
    return jnp.sum(slope * inv * (inv[:, None] + der[:, None] * numerator), axis=-1)

  def opposite(row, inv, row_o, inv_o):  # pair row j: [B(k), B(i)] -> [B(k)]
    # S and the inverse lengths are symmetric: S_ik = squared[k, i], S_ij = row[i].
    slope = _huber_slope(0.5 * (
        _doubled_cosines((row[None, :] + squared) - row[:, None], inv[None, :], inverse) -
        _doubled_cosines((row_o[None, :] + squared_o) - row_o[:, None], inv_o[None, :],
                         inverse_o)))
    return jnp.sum(slope * (inv[None, :] * inverse), axis=-1)

  adjacent = _by_rows(vertex, (squared, inverse, derivative, squared_o, inverse_o), step)
  facing = _by_rows(opposite, (squared, inverse, squared_o, inverse_o), step)
  weights = adjacent - 0.5 * facing
  weights = weights + weights.T
  # sum_j W_ij (x_i - x_j) is translation invariant; centring keeps its cancellation small.
  x = x - jnp.mean(x, axis=0)
  grad = jnp.sum(weights, axis=1)[:, None] * x - jnp.dot(weights, x, precision=PRECISION)
  return 2.0 * cotangent * grad


@jax.custom_vjp
def _angle_loss(student: jax.Array, teacher: jax.Array) -> jax.Array:
  """Mean Huber term over all ``B**3`` triplets of the student and teacher cosines (CPU)."""
  return _angle_huber_sum(student, teacher, _CPU_ANGLE_ROWS) / student.shape[0]**3


def _angle_loss_fwd(student, teacher):
  return _angle_loss(student, teacher), (student, teacher)


def _angle_loss_bwd(residuals, cotangent):
  student, teacher = residuals
  scale = cotangent / student.shape[0]**3
  return (_angle_gradient(student, teacher, scale, _CPU_ANGLE_ROWS),
          _angle_gradient(teacher, student, scale, _CPU_ANGLE_ROWS))


def _angles(embeddings: jax.Array) -> jax.Array:
  """``[B, B, B]`` cosines at vertex ``i`` between ``e_j - e_i`` and ``e_k - e_i``."""
  directions = normalize(embeddings[None, :, :] - embeddings[:, None, :])
  return jnp.einsum('ijd,ikd->ijk', directions, directions, precision=PRECISION)


_angle_loss.defvjp(_angle_loss_fwd, _angle_loss_bwd)


def rkd_distance_loss(
    student_embeddings: jax.typing.ArrayLike,
    teacher_embeddings: jax.typing.ArrayLike,
) -> jax.Array:
  r"""RKD distance loss: match the batch's mean-normalised pairwise distances.

  .. math::
    \psi_D(x_i, x_j) = \frac{\|x_i - x_j\|_2}{\mu},\quad
    \mu = \frac{1}{B(B-1)} \sum_{i \ne j} \|x_i - x_j\|_2,\qquad
    \ell = \frac{1}{B^2} \sum_{i,j} h_1\!\left(\psi^s_D(i, j) - \psi^t_D(i, j)\right)

  with ``h_1`` the Huber (smooth-L1, ``delta = 1``) loss, averaged over all ``B**2``
  entries including the zero diagonal, as ``F.smooth_l1_loss`` does in RepDistiller's
  ``RKDLoss`` and the authors' code; the paper writes a sum over pairs. Distances are
  computed as the authors do, from the Gram matrix with squared distances clamped to
  ``>= 1e-12`` (so coincident examples are ``1e-6`` apart). Scaling either side's
  embeddings by a positive constant leaves the loss unchanged. The authors stop the
  teacher's gradient; here it flows unless the caller stops it.

  Args:
    student_embeddings: ``[B, ...]`` student embeddings (flattened to ``[B, D_s]``; any
      float dtype, computed in >= float32), ``B >= 2``.
    teacher_embeddings: ``[B, ...]`` teacher embeddings (flattened to ``[B, D_t]``).

  Returns:
    ``[]`` float32 (float64 for float64 inputs) loss for the batch.

  References:
    Park et al., `Relational Knowledge Distillation <https://arxiv.org/abs/1904.05068>`_,
    CVPR 2019.
  """
  student, teacher = batch_pair(student_embeddings, teacher_embeddings,
                                 'student_embeddings', 'teacher_embeddings')
  return _smooth_l1(_normalized_distances(student), _normalized_distances(teacher))


def rkd_angle_loss(
    student_embeddings: jax.typing.ArrayLike,
    teacher_embeddings: jax.typing.ArrayLike,
) -> jax.Array:
  r"""RKD angle loss: match the cosines of the angles formed by every triplet of examples.

  .. math::
    \psi_A(x_i, x_j, x_k) = \left\langle
      \frac{x_j - x_i}{\|x_j - x_i\|_2}, \frac{x_k - x_i}{\|x_k - x_i\|_2} \right\rangle,
    \qquad
    \ell = \frac{1}{B^3} \sum_{i,j,k} h_1\!\left(\psi^s_A - \psi^t_A\right)

  with ``h_1`` the Huber (smooth-L1, ``delta = 1``) loss. The mean runs over all ``B**3``
  triplets, degenerate ones included (a zero difference, ``j = i`` or two equal examples,
  normalises to the zero vector, cosine 0), as ``F.smooth_l1_loss`` does in RepDistiller's
  ``RKDLoss`` and the authors' code; the paper writes a sum over triplets. With ``B = 2``
  no triangle exists and the loss is 0. Scaling either side's embeddings by a positive
  constant leaves the loss unchanged.

  The cosines are computed from the pairwise squared distances ``S`` (summed over the
  differences), as ``(x_j - x_i).(x_k - x_i) = (S_ij + S_ik - S_jk) / 2``, not from the
  ``[B, B, D]`` normalised differences, so time grows as ``B**3 + B**2 * D``, on CPU:
  four vertices per loop step (``[4, B, B]`` temporaries) and a hand-written gradient
  (checked against autodiff of the direct formulation), so the loss supports reverse-mode
  differentiation (``jax.grad``, ``jax.vjp``) but not forward mode (``jax.jvp``). GPUs
  and TPUs compute the direct formulation, a ``B**3 * D`` batched matrix product with
  ``[B, B, D]`` temporaries.

  Args:
    student_embeddings, teacher_embeddings: ``[B, ...]``, as for `rkd_distance_loss`.

  Returns:
    ``[]`` float32 (float64 for float64 inputs) loss for the batch.

  References:
    Park et al. 2019, as for `rkd_distance_loss`.
  """
  student, teacher = batch_pair(student_embeddings, teacher_embeddings,
                                 'student_embeddings', 'teacher_embeddings')
  # CPU: the distance formulation with its own gradient (2.5-2.9x faster at B = 256 than
  # the direct one on XLA:CPU); accelerators: the direct [B, B, D] one, a batched matmul.
  return jax.lax.platform_dependent(
      student, teacher, cpu=_angle_loss,
      default=lambda s, t: _smooth_l1(_angles(s), _angles(t)))


def rkd_loss(
    student_embeddings: jax.typing.ArrayLike,
    teacher_embeddings: jax.typing.ArrayLike,
    *,
    distance_weight: jax.typing.ArrayLike,
    angle_weight: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Relational KD loss: weighted distance and angle losses, one scalar for the batch.

  .. math::
    \ell = w_D\, \ell_D + w_A\, \ell_A

  with ``\ell_D`` from :func:`rkd_distance_loss` and ``\ell_A`` from
  :func:`rkd_angle_loss`. RepDistiller's ``RKDLoss`` defaults are ``w_D = 25`` and
  ``w_A = 50`` (applied to the penultimate embeddings, term weight 1). Scaling either
  side's embeddings by a positive constant leaves the loss unchanged.

  Args:
    student_embeddings: ``[B, ...]`` student embeddings (flattened to ``[B, D_s]``; any
      float dtype, computed in >= float32), ``B >= 2``.
    teacher_embeddings: ``[B, ...]`` teacher embeddings (flattened to ``[B, D_t]``).
      Gradients flow into them too; wrap them in ``jax.lax.stop_gradient`` if the teacher
      must not be trained (the authors do).
    distance_weight: weight ``w_D >= 0`` of the distance loss.
    angle_weight: weight ``w_A >= 0`` of the angle loss.

  Returns:
    ``[]`` float32 (float64 for float64 inputs) loss for the batch.

  References:
    Park et al., `Relational Knowledge Distillation <https://arxiv.org/abs/1904.05068>`_,
    CVPR 2019.
  """
  check_static_non_negative(distance_weight, 'distance_weight')
  check_static_non_negative(angle_weight, 'angle_weight')
  distance = rkd_distance_loss(student_embeddings, teacher_embeddings)
  angle = rkd_angle_loss(student_embeddings, teacher_embeddings)
  return (jnp.asarray(distance_weight, distance.dtype) * distance +
          jnp.asarray(angle_weight, angle.dtype) * angle)


@dataclasses.dataclass(frozen=True)
class RKD(RelationTerm):
  """Relational KD (Park et al. 2019, `rkd_loss`): smooth-L1 between the normalised pairwise
  distances (`distance_weight`) and the triplet angles (`angle_weight`) of the embeddings."""

  distance_weight: float = 25.0
  angle_weight: float = 50.0

  name = 'rkd'
  # RepDistiller: distance 25, angle 50, weight 1, the penultimate layer.
  paper = Paper('Park et al. 2019, Relational Knowledge Distillation',
                'https://arxiv.org/abs/1904.05068', weight=1.0, ce_weight=1.0)

  def relation(self, student, teacher):
    return rkd_loss(student, teacher, distance_weight=self.distance_weight,
                    angle_weight=self.angle_weight)
