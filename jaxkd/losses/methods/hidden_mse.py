"""Hidden-state transfer through a learned projection (TinyBERT's hidden-state loss)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import upcast
from jaxkd.losses.projectors import conv1x1_init
from jaxkd.losses.terms import OneTap, Paper, Term


def hidden_mse_loss(
    projected_student: jax.typing.ArrayLike,
    teacher_hidden: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Mean squared error between hidden states, per position.

  .. math::
    \ell_{b,l} = \frac{1}{D_t} \sum_d \big((h^s W + c)_{b,l,d} - h^t_{b,l,d}\big)^2

  The projection ``W [D_s, D_t]``, ``c [D_t]`` maps the student's width onto the teacher's;
  it is trained with the student and lives in the term that wraps this function: pass its
  output here.

  Args:
    projected_student: ``[..., D_t]`` the student's hidden states, projected.
    teacher_hidden: ``[..., D_t]`` the teacher's hidden states, same shape.

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per position.

  References:
    Jiao et al., `TinyBERT: Distilling BERT for Natural Language Understanding
    <https://arxiv.org/abs/1909.10351>`_, Findings of EMNLP 2020, eq. (8).
  """
  projected_student, teacher_hidden = upcast(projected_student), upcast(teacher_hidden)
  if projected_student.shape != teacher_hidden.shape:
    raise ValueError(f'projected_student shape {projected_student.shape} and teacher_hidden '
                     f'shape {teacher_hidden.shape} differ; project the student onto the '
                     "teacher's width first.")
  return jnp.mean(jnp.square(projected_student - teacher_hidden), axis=-1)


@dataclasses.dataclass(frozen=True)
class HiddenMSE(OneTap, Term):
  """The student's hidden states at `student_tap` (`[B, L, D_s]`, e.g. a block's residual
  stream), projected by a trainable dense map onto the teacher's width, matched to the
  teacher's at `teacher_tap` per position (`hidden_mse_loss`). One teacher."""

  student_tap: str = 'block1'
  teacher_tap: str = 'block3'

  name = 'hidden_mse'
  family = 'feature'
  # TinyBERT's intermediate-layer stage: the hidden-state loss alone, weight 1.
  paper = Paper('Jiao et al. 2020, TinyBERT', 'https://arxiv.org/abs/1909.10351', weight=1.0,
                ce_weight=0.0)
  owns_params = True

  def init(self, key, student, teachers):
    if len(teachers) != 1:
      raise ValueError(f'hidden_mse projects onto one teacher, got {len(teachers)}.')
    s = student.features[self.student_tap].shape
    t = teachers[0].features[self.teacher_tap].shape
    if s[:-1] != t[:-1]:
      raise ValueError(f'hidden_mse pairs positions: the student feature at '
                       f'{self.student_tap!r} is {tuple(s)}, the teacher feature at '
                       f'{self.teacher_tap!r} {tuple(t)}; they must agree but for the width.')
    return conv1x1_init(key, s[-1], t[-1]), {}

  def __call__(self, ctx):
    hidden = ctx.student.features[self.student_tap].astype(jnp.float32)
    target = ctx.teachers[0].features[self.teacher_tap].astype(jnp.float32)
    projected = hidden @ ctx.params['kernel'] + ctx.params['bias']
    return hidden_mse_loss(projected, target), {}, ctx.state
