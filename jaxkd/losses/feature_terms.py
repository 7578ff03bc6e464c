"""Feature terms: what a student's intermediate features should look like, read at module
paths (`jaxkd.models.feature_paths` lists a model's) on both sides."""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from jaxkd.losses.feature import attention_transfer_loss, hint_loss
from jaxkd.losses.feature.attention import _pool_to
from jaxkd.losses.projectors import channel_mix, conv1x1_init
from jaxkd.losses.terms import OneTap, Term, combine_teachers


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

  def __call__(self, student, teachers, batch, *, step, key, params, state, axis_name):
    del batch, step, key, axis_name
    features = student.features[self.student_tap].astype(jnp.float32)
    target = teachers[0].features[self.teacher_tap].astype(jnp.float32)
    if self._spatial(features.shape, target.shape):
      features = _pool_to(features, target.shape[1:3])
      regressed = channel_mix(features, params['kernel'][0, 0])
    else:
      target = target.reshape(target.shape[0], -1)
      regressed = features.reshape(features.shape[0], -1) @ params['kernel']
    return hint_loss(regressed + params['bias'], target), {}, state


@dataclasses.dataclass(frozen=True)
class AT(Term):
  """Attention transfer (Zagoruyko & Komodakis 2017): spatial attention maps (channel mean of
  ``|f|^power``, L2-normalised) of each student/teacher tap pair matched by squared error
  (`jaxkd.losses.attention_transfer_loss`), summed over the pairs. No parameters."""

  student_taps: tuple[str, ...] = ('stage1', 'stage2', 'stage3')
  teacher_taps: tuple[str, ...] = ('stage1', 'stage2', 'stage3')
  power: float = 2.0
  teacher_weights: tuple[float, ...] | None = None

  name = 'at'

  def __post_init__(self):
    if len(self.student_taps) != len(self.teacher_taps) or not self.student_taps:
      raise ValueError(f'at pairs student_taps with teacher_taps one to one, got '
                       f'{list(self.student_taps)} and {list(self.teacher_taps)}.')
    if not self.power > 0:
      raise ValueError(f'power must be > 0, got {self.power!r}.')

  def __call__(self, student, teachers, batch, *, step, key, params, state, axis_name):
    del batch, step, key, params, axis_name
    per_teacher = [
        sum(attention_transfer_loss(student.features[s], teacher.features[t], power=self.power)
            for s, t in zip(self.student_taps, self.teacher_taps))
        for teacher in teachers]
    return (*combine_teachers(self.teacher_weights, per_teacher), state)
