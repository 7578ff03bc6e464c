"""Flow of solution procedure (Yim et al. 2017): FSP matrices between consecutive maps."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import PRECISION
from jaxkd.losses.pooling import pooled_pair
from jaxkd.losses.terms import Paper, ProjectedMaps


def fsp_matrix(
    first: jax.typing.ArrayLike,
    second: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Flow-of-solution-procedure (FSP) matrix between two feature maps of one network.

  .. math::
    G_{b,i,j} = \frac{1}{S} \sum_{s} F^{1}_{b,s,i}\, F^{2}_{b,s,j}

  with ``s`` running over the ``S = H * W`` spatial positions: the ``[C_1, C_2]`` inner
  products between the channels of a layer's input and output (or any two maps of the
  same network), i.e. how the solution "flows" between them. When the spatial sizes
  differ, the larger map is average-pooled to the smaller first, as RepDistiller's
  ``FSP`` does (it assumes square maps and uses adaptive pooling; torchdistill's
  ``FSPLoss`` max-pools instead); each spatial axis here is pooled separately and must
  differ by a whole factor. RepDistiller lays the matrix out the other way round
  (``[C_2, C_1]``); the loss does not depend on it. ``fsp_matrix(a, b)`` is the transpose
  of ``fsp_matrix(b, a)``.

  Args:
    first: ``[B, H, W, C_1]`` feature map (NHWC; any float dtype, computed in >= float32).
    second: ``[B, H', W', C_2]`` feature map of the same examples, ``H'`` and ``H`` whole
      multiples of each other (likewise ``W``).

  Returns:
    ``[B, C_1, C_2]`` float32 (float64 for float64 inputs) FSP matrices.

  References:
    Yim et al., `A Gift From Knowledge Distillation: Fast Optimization, Network
    Minimization and Transfer Learning
    <https://openaccess.thecvf.com/content_cvpr_2017/html/Yim_A_Gift_From_CVPR_2017_paper.html>`_,
    CVPR 2017.
  """
  first, second = pooled_pair(first, second, 'first', 'second')
  return jnp.einsum('bsi,bsj->bij', first, second, precision=PRECISION) / first.shape[1]


def _fsp_matrix_shape(first_shape, second_shape) -> tuple[int, ...]:
  """``(B, C_1, C_2)`` of the FSP matrix of maps with these shapes (checked later)."""
  return first_shape[:1] + first_shape[-1:] + second_shape[-1:]


def fsp_loss(
    student_pairs: Sequence[tuple[jax.typing.ArrayLike, jax.typing.ArrayLike]],
    teacher_pairs: Sequence[tuple[jax.typing.ArrayLike, jax.typing.ArrayLike]],
) -> jax.Array:
  r"""FSP loss: squared differences of student and teacher FSP matrices, per example.

  .. math::
    \ell_b = \sum_{n} \frac{1}{C_1^n C_2^n} \sum_{i,j}
      \left(G^{s,n}_{b,i,j} - G^{t,n}_{b,i,j}\right)^2

  with ``G^n`` the :func:`fsp_matrix` of pair ``n``: the mean squared difference of each
  pair's matrices, summed over the pairs. This is RepDistiller's ``FSP``
  (``(s - t).pow(2).mean()`` per pair, summed over pairs by its training loop), whose
  value is the batch mean of this loss; RepDistiller pairs consecutive feature maps of
  each network and uses the loss alone in an initialisation stage before ordinary
  training. The paper weighs each pair by ``lambda_n`` (all equal) and sums, rather than
  averages, the squared entries of each matrix; torchdistill's ``FSPLoss`` takes the
  (unsquared) norm over ``C_1``, sums over ``C_2`` and pairs and averages over the batch.
  Student and teacher matrices must have the same shape (the same channel counts per
  pair), as RepDistiller requires.

  Args:
    student_pairs: non-empty sequence of ``(first, second)`` student feature maps, each
      ``[B, H, W, C]`` (NHWC; any float dtype, computed in >= float32).
    teacher_pairs: the teacher's pairs, as many as the student's, with the same channel
      counts. Gradients flow into them too; wrap them in ``jax.lax.stop_gradient`` if
      the teacher must not be trained.

  Returns:
    ``[B]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Yim et al., `A Gift From Knowledge Distillation: Fast Optimization, Network
    Minimization and Transfer Learning
    <https://openaccess.thecvf.com/content_cvpr_2017/html/Yim_A_Gift_From_CVPR_2017_paper.html>`_,
    CVPR 2017.
  """
  student_pairs, teacher_pairs = list(student_pairs), list(teacher_pairs)
  if not student_pairs or len(student_pairs) != len(teacher_pairs):
    raise ValueError(
        f'student_pairs and teacher_pairs must be non-empty and equally long, got '
        f'{len(student_pairs)} and {len(teacher_pairs)} pairs.')
  for index, (student_pair, teacher_pair) in enumerate(zip(student_pairs, teacher_pairs)):
    for pair, name in ((student_pair, 'student_pairs'), (teacher_pair, 'teacher_pairs')):
      if len(pair) != 2:
        raise ValueError(
            f'{name}[{index}] must be a (first, second) pair of feature maps, got '
            f'{len(pair)} items.')
    student_shapes = [tuple(jnp.shape(x)) for x in student_pair]
    teacher_shapes = [tuple(jnp.shape(x)) for x in teacher_pair]
    if _fsp_matrix_shape(*student_shapes) != _fsp_matrix_shape(*teacher_shapes):
      raise ValueError(
          f'pair {index}: student shapes {student_shapes} and teacher shapes '
          f'{teacher_shapes} give FSP matrices of different shapes; student and teacher '
          'need the same batch size and the same channel counts in each pair.')
  total = None
  for student_pair, teacher_pair in zip(student_pairs, teacher_pairs):
    student_fsp = fsp_matrix(*student_pair)
    teacher_fsp = fsp_matrix(*teacher_pair)
    dtype = jnp.promote_types(student_fsp.dtype, teacher_fsp.dtype)
    term = jnp.mean(jnp.square(student_fsp.astype(dtype) - teacher_fsp.astype(dtype)),
                    axis=(1, 2))
    total = term if total is None else total + term
  return total


@dataclasses.dataclass(frozen=True)
class FSP(ProjectedMaps):
  """Flow of solution procedure (Yim et al. 2017, `fsp_loss`): the FSP matrices between
  consecutive taps (`taps[i]`, `taps[i+1]`) of each side, matched by mean squared error and
  summed over the pairs. FSP needs equal channel counts on both sides; where they differ the
  student's maps are first projected by 1x1 convolutions (trained with it). The two sides'
  maps may differ in size (an FSP matrix is within one side; a larger teacher map was refused
  before Hardening II)."""

  name = 'fsp'
  # RepDistiller trains FSP alone in a first stage, then CE; here one joint objective,
  # weight 1 (set a priori).
  paper = Paper('Yim et al. 2017, A Gift From Knowledge Distillation',
                'https://openaccess.thecvf.com/content_cvpr_2017/html/Yim_A_Gift_From_CVPR_2017_paper.html',
                weight=1.0, ce_weight=1.0)

  def __post_init__(self):
    super().__post_init__()
    if len(self.student_taps) < 2:
      raise ValueError(f'fsp relates consecutive taps and needs at least 2, got '
                       f'{list(self.student_taps)}.')

  def pair_loss(self, student, teacher, params, teacher_outputs, axis_name):
    # FSP matrices are [C1, C2] within each side: no spatial match across sides is needed
    # (RepDistiller pools only within a pair of one network's maps).
    student = self.projected(student, params)
    return fsp_loss(list(zip(student, student[1:])), list(zip(teacher, teacher[1:])))
