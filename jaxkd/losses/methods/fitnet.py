"""FitNets hints (Romero et al. 2015): a regressed student feature matched to the teacher's."""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import upcast
from jaxkd.losses.pooling import pool_to
from jaxkd.losses.projectors import channel_mix, conv1x1_init
from jaxkd.losses.terms import OneTap, Paper, Term


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
  student_features = upcast(student_features)
  teacher_features = upcast(teacher_features)
  if student_features.shape != teacher_features.shape:
    raise ValueError(
        f'student_features shape {student_features.shape} and teacher_features shape '
        f'{teacher_features.shape} differ; map the student features to the teacher\'s shape '
        '(the hint regressor) before the loss.')
  if student_features.ndim == 0:
    raise ValueError('student_features must have a batch axis, got a scalar.')
  squared = jnp.square(student_features - teacher_features)
  return jnp.mean(squared.reshape(squared.shape[0], -1), axis=-1)


@dataclasses.dataclass(frozen=True)
class FitNet(OneTap, Term):
  """FitNets hints (Romero et al. 2015): the student's feature at `student_tap`, mapped to
  the teacher's at `teacher_tap` by a trainable regressor, matched by mean squared error
  (`jaxkd.losses.hint_loss`).

  The regressor's shape is inferred: for image features (NHWC) a 1x1 convolution from the
  student's to the teacher's channels, after average-pooling the student down to the
  teacher's size when it is an integer multiple of it; otherwise both are flattened and a
  dense layer maps one onto the other. One teacher.
  """

  student_tap: str = 'stage2'
  teacher_tap: str = 'stage2'

  name = 'fitnet'
  family = 'feature'
  # mdistiller FITNET: hint weight 100, CE 1.
  paper = Paper('Romero et al. 2015, FitNets: Hints for Thin Deep Nets',
                'https://arxiv.org/abs/1412.6550', weight=100.0, ce_weight=1.0)
  owns_params = True

  def _spatial(self, student_shape, teacher_shape) -> bool:
    """Whether both are NHWC images whose sizes pool onto each other (else: flattened)."""
    if len(student_shape) != 4 or len(teacher_shape) != 4:
      return False
    (sh, sw), (th, tw) = student_shape[1:3], teacher_shape[1:3]
    if sh % th or sw % tw:
      raise ValueError(
          f'fitnet: the student feature at {self.student_tap!r} is {sh}x{sw}, the teacher '
          f'feature at {self.teacher_tap!r} {th}x{tw}; the student must be an integer '
          'multiple of the teacher in height and width. Tap other paths.')
    return True

  def init(self, key, student, teachers):
    if len(teachers) != 1:
      raise ValueError(f'fitnet regresses onto one teacher, got {len(teachers)}.')
    s = student.features[self.student_tap].shape
    t = teachers[0].features[self.teacher_tap].shape
    if self._spatial(s, t):
      fan_in, fan_out, kernel_shape = s[-1], t[-1], (1, 1, s[-1], t[-1])
    else:
      fan_in, fan_out = math.prod(s[1:]), math.prod(t[1:])
      kernel_shape = (fan_in, fan_out)
    params = conv1x1_init(key, fan_in, fan_out)
    return {**params, 'kernel': params['kernel'].reshape(kernel_shape)}, {}

  def __call__(self, ctx):
    params = ctx.params
    features = ctx.student.features[self.student_tap].astype(jnp.float32)
    target = ctx.teachers[0].features[self.teacher_tap].astype(jnp.float32)
    if self._spatial(features.shape, target.shape):
      features = pool_to(features, target.shape[1:3])
      regressed = channel_mix(features, params['kernel'][0, 0])
    else:
      target = target.reshape(target.shape[0], -1)
      regressed = features.reshape(features.shape[0], -1) @ params['kernel']
    return hint_loss(regressed + params['bias'], target), {}, ctx.state
