"""Statistics of feature maps: match channel-by-channel statistics, one value per example.

Feature maps are channels-last (NHWC for images; any number of spatial axes works), as
our Flax models produce them. The authors' PyTorch code is channels-first; the
statistics below do not depend on the layout.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxkd.losses.feature.attention import _common_spatial_shape, _pool_to
from jaxkd.losses.kd import _upcast

__all__ = ['fsp_loss', 'fsp_matrix', 'ickd_loss', 'nst_loss']

# F.normalize's default floor on the norm, as in the authors' code.
_NORM_EPS = 1e-12
# Channel Gram matrices at full float32 precision (PyTorch's default), not TF32/bfloat16.
_PRECISION = jax.lax.Precision.HIGHEST


def _normalize(x: jax.Array, axis: int) -> jax.Array:
  """``F.normalize``: ``x / max(||x||, 1e-12)``; the zero vector maps to 0 with zero gradient."""
  squared = jnp.sum(x * x, axis=axis, keepdims=True)
  positive = squared > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
  return jnp.where(positive, x / jnp.maximum(norm, _NORM_EPS), 0.0)


def _check_feature_map(features: jax.Array, name: str) -> None:
  """Feature maps need a batch axis, at least one spatial axis and a channel axis."""
  if features.ndim < 3:
    raise ValueError(
        f'{name} must be [batch, *spatial, channels] (NHWC for images), got shape '
        f'{features.shape}.')


def _check_same_batch(first_shape, second_shape, first_name: str, second_name: str) -> None:
  """Batch size and rank must agree."""
  if len(first_shape) != len(second_shape) or first_shape[0] != second_shape[0]:
    raise ValueError(
        f'{first_name} shape {tuple(first_shape)} and {second_name} shape '
        f'{tuple(second_shape)} must have the same batch size and number of spatial axes.')


def _pooled_pair(first, second, first_name: str,
                 second_name: str) -> tuple[jax.Array, jax.Array]:
  """Upcasts both to one dtype, average-pools the larger map to the smaller, flattens space.

  Returns ``[B, S, C_first]`` and ``[B, S, C_second]`` with ``S`` the common positions.
  """
  first = _upcast(first)
  second = _upcast(second)
  _check_feature_map(first, first_name)
  _check_feature_map(second, second_name)
  _check_same_batch(first.shape, second.shape, first_name, second_name)
  spatial = _common_spatial_shape(first.shape, second.shape, first_name, second_name)
  dtype = jnp.promote_types(first.dtype, second.dtype)
  batch = first.shape[0]
  first = _pool_to(first.astype(dtype), spatial).reshape(batch, -1, first.shape[-1])
  second = _pool_to(second.astype(dtype), spatial).reshape(batch, -1, second.shape[-1])
  return first, second


# ------------------------------------------------------------------------------------ NST


def nst_loss(
    student_features: jax.typing.ArrayLike,
    teacher_features: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Neural selectivity transfer: squared MMD between the channels' spatial patterns.

  .. math::
    \ell_b = \frac{1}{C_t^2} \sum_{i,j} k(t_i, t_j) + \frac{1}{C_s^2} \sum_{i,j} k(s_i, s_j)
      - \frac{2}{C_s C_t} \sum_{i,j} k(s_i, t_j),\qquad k(x, y) = (x^\top y)^2

  where ``s_i`` (``t_j``) is channel ``i`` (``j``) of example ``b``'s student (teacher)
  feature map, flattened over space and L2-normalised (``F.normalize``): each channel's
  pattern of where it fires is a sample, and the loss is the squared maximum mean
  discrepancy between the two sets of samples under the polynomial kernel of degree 2
  with ``c = 0`` (one of the paper's kernels, the one RepDistiller's ``NSTLoss`` uses).
  The channel counts may differ. RepDistiller takes the mean of each kernel matrix over
  the whole batch, so its value is the batch mean of this loss; it detaches the
  teacher-only term, which carries no gradient to the student anyway. RepDistiller
  weighs it by 50 on each of the intermediate feature maps and sums over them. When the
  spatial sizes differ, the larger map is average-pooled to the smaller first, as
  RepDistiller does (it assumes square maps and uses adaptive pooling); here each
  spatial axis is pooled separately and must differ by a whole factor. 0 for identical
  features.

  Args:
    student_features: ``[B, H, W, C_s]`` student features (NHWC; any float dtype,
      computed in >= float32).
    teacher_features: ``[B, H', W', C_t]`` teacher features, ``H'`` and ``H`` whole
      multiples of each other (likewise ``W``). Gradients flow into them too; wrap them
      in ``jax.lax.stop_gradient`` if the teacher must not be trained.

  Returns:
    ``[B]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Huang & Wang, `Like What You Like: Knowledge Distill via Neuron Selectivity Transfer
    <https://arxiv.org/abs/1707.01219>`_, 2017.
  """
  student, teacher = _pooled_pair(student_features, teacher_features, 'student_features',
                                  'teacher_features')
  student = _normalize(student, axis=1)
  teacher = _normalize(teacher, axis=1)

  def kernel_mean(a, b):
    products = jnp.einsum('bsi,bsj->bij', a, b, precision=_PRECISION)
    return jnp.mean(products * products, axis=(1, 2))

  return (kernel_mean(teacher, teacher) + kernel_mean(student, student) -
          2.0 * kernel_mean(student, teacher))


# ------------------------------------------------------------------------------------ FSP


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
  first, second = _pooled_pair(first, second, 'first', 'second')
  return jnp.einsum('bsi,bsj->bij', first, second, precision=_PRECISION) / first.shape[1]


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


# ----------------------------------------------------------------------------------- ICKD


def _channel_correlation(features: jax.Array) -> jax.Array:
  """``[B, C, C]`` channel Gram matrices over space, each row L2-normalised."""
  gram = jnp.einsum('bsi,bsj->bij', features, features, precision=_PRECISION)
  return _normalize(gram, axis=-1)


def ickd_loss(
    student_features: jax.typing.ArrayLike,
    teacher_features: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Inter-channel correlation KD (ICKD-C): match row-normalised channel Gram matrices.

  .. math::
    G_{b} = F_b^\top F_b,\quad
    \tilde G_{b,i,:} = \frac{G_{b,i,:}}{\max(\|G_{b,i,:}\|_2,\ 10^{-12})},\qquad
    \ell_b = \frac{1}{C} \sum_{i,j} \left(\tilde G^s_{b,i,j} - \tilde G^t_{b,i,j}\right)^2

  with ``F_b`` example ``b``'s ``[H * W, C]`` feature map, so ``G_b`` is ``[C, C]``: how
  strongly each pair of channels fires together over space. The authors' CIFAR-100 code
  (``ICKDLoss.batch_loss``) reduces by ``sum / (C * B)``, whose value is the batch mean
  of this loss; their ImageNet (torchdistill ``ChSimLoss``) code divides by ``C * B**2``,
  i.e. the batch mean divided again by ``B``. The student's features must already be
  projected to the teacher's channels: the authors' trainable 1x1 convolution plus batch
  norm belongs to the term that wraps this function. The authors apply it to the last
  convolutional feature maps, weighted 2.5 (CIFAR-100 README). 0 for identical features.

  Args:
    student_features: ``[B, H, W, C]`` projected student features (NHWC; any float dtype,
      computed in >= float32).
    teacher_features: ``[B, H, W, C]`` teacher features, same shape. Gradients flow into
      them too; wrap them in ``jax.lax.stop_gradient`` if the teacher must not be
      trained.

  Returns:
    ``[B]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Liu et al., `Exploring Inter-Channel Correlation for Diversity-preserved Knowledge
    Distillation <https://arxiv.org/abs/2202.03680>`_, ICCV 2021.
  """
  student = _upcast(student_features)
  teacher = _upcast(teacher_features)
  if student.shape != teacher.shape:
    raise ValueError(
        f'student_features shape {student.shape} and teacher_features shape '
        f'{teacher.shape} differ; project the student features to the teacher\'s channels '
        '(the 1x1 embedding) and match the spatial size before the loss.')
  _check_feature_map(student, 'student_features')
  dtype = jnp.promote_types(student.dtype, teacher.dtype)
  batch, channels = student.shape[0], student.shape[-1]
  student = student.astype(dtype).reshape(batch, -1, channels)
  teacher = teacher.astype(dtype).reshape(batch, -1, channels)
  diff = _channel_correlation(student) - _channel_correlation(teacher)
  return jnp.sum(diff * diff, axis=(1, 2)) / channels
