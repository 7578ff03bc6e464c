"""Inter-channel correlation KD (Liu et al. 2021): match row-normalised channel Gram matrices."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import PRECISION, normalize, upcast
from jaxkd.losses.pooling import check_feature_map
from jaxkd.losses.projectors import conv1x1_batch_norm
from jaxkd.losses.terms import Paper, ProjectedMaps, conv_batch_norm_init


def _channel_correlation(features: jax.Array) -> jax.Array:
  """``[B, C, C]`` channel Gram matrices over space, each row L2-normalised."""
  gram = jnp.einsum('bsi,bsj->bij', features, features, precision=PRECISION)
  return normalize(gram, axis=-1)


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
  strongly each pair of channels fires together over space. Each side's Gram matrix is
  taken over its own positions, so the two maps may differ in height and width (the
  authors flatten each side with ``view(bsz, ch, -1)`` and pool neither). The authors'
  CIFAR-100 code (``ICKDLoss.batch_loss``) reduces by ``sum / (C * B)``, whose value is the
  batch mean of this loss; their ImageNet (torchdistill ``ChSimLoss``) code divides by
  ``C * B**2``, i.e. the batch mean divided again by ``B``. The student's features must
  already be projected to the teacher's channels: the authors' trainable 1x1 convolution
  plus batch norm (``Embed``) belongs to the term that wraps this function (`ICKD`). The
  authors apply it to the last convolutional feature maps, weighted 2.5 (CIFAR-100
  README). 0 for identical features.

  Args:
    student_features: ``[B, H, W, C]`` projected student features (NHWC; any float dtype,
      computed in >= float32).
    teacher_features: ``[B, H', W', C]`` teacher features, the same batch and channels
      (any height and width). Gradients flow into
      them too; wrap them in ``jax.lax.stop_gradient`` if the teacher must not be
      trained.

  Returns:
    ``[B]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Liu et al., `Exploring Inter-Channel Correlation for Diversity-preserved Knowledge
    Distillation <https://arxiv.org/abs/2202.03680>`_, ICCV 2021.
  """
  student = upcast(student_features)
  teacher = upcast(teacher_features)
  check_feature_map(student, 'student_features')
  check_feature_map(teacher, 'teacher_features')
  if student.shape[::student.ndim - 1] != teacher.shape[::teacher.ndim - 1]:
    raise ValueError(
        f'student_features shape {student.shape} and teacher_features shape '
        f'{teacher.shape} differ in batch size or channels; project the student features to '
        'the teacher\'s channels (the 1x1 embedding) before the loss.')
  dtype = jnp.promote_types(student.dtype, teacher.dtype)
  batch, channels = student.shape[0], student.shape[-1]
  student = student.astype(dtype).reshape(batch, -1, channels)
  teacher = teacher.astype(dtype).reshape(batch, -1, channels)  # its own positions
  diff = _channel_correlation(student) - _channel_correlation(teacher)
  return jnp.sum(diff * diff, axis=(1, 2)) / channels


@dataclasses.dataclass(frozen=True)
class ICKD(ProjectedMaps):
  """Inter-channel correlation KD (Liu et al. 2021, `ickd_loss`): the student's map, embedded
  onto the teacher's channels as the authors' ``Embed`` does (a bias-free 1x1 convolution then
  a BatchNorm on the batch's statistics, trained with the student), matches the teacher's
  channel-correlation (Gram) matrix; summed over the tap pairs. Neither map is pooled: each
  Gram matrix is over its own side's positions. Until Hardening II the BatchNorm was left out
  and a student map larger than the teacher's was pooled onto it, so runs give other numbers
  now."""

  student_taps: tuple[str, ...] = ('pool2',)
  teacher_taps: tuple[str, ...] = ('pool2',)

  name = 'ickd'
  # The ICKD CIFAR-100 README: weight 2.5, the last conv stage.
  paper = Paper('Liu et al. 2021, Exploring Inter-Channel Correlation for Diversity-preserved KD',
                'https://arxiv.org/abs/2202.03680', weight=2.5, ce_weight=1.0)
  batch_statistics = True  # the embedding's BatchNorm

  def init_pair(self, key, c_in, c_out):
    return conv_batch_norm_init(key, c_in, c_out)

  def pair_loss(self, student, teacher, params, teacher_outputs, axis_name):
    total = 0.0
    for i, (s, t) in enumerate(zip(student, teacher)):
      p = params[f'pair{i}']
      embedded = conv1x1_batch_norm(s, p['conv']['kernel'], p['bn_scale'], p['bn_bias'],
                                    axis_name)
      total = total + ickd_loss(embedded, t)
    return total
