"""Logit matching by mean squared error (Kim et al. 2021): the student's logits regress the
teacher's, with no softmax and no temperature."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import student_teacher
from jaxkd.losses.terms import LogitTerm, Paper


def mse_logit_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Mean squared error between student and teacher logits, per example.

  .. math::
    \ell = \frac{1}{C} \sum_c \left(z^s_c - z^t_c\right)^2

  Kim et al. show that KD's ``T^2 KL`` tends to this (up to a factor) as ``T -> inf``, and
  that matching the logits directly, without the softmax's loss of their scale, is at least
  as good a transfer; the student learns the teacher's logit values, not only their ranks.

  Args:
    student_logits: ``[..., C]`` student logits (any float dtype; computed in >= float32).
    teacher_logits: ``[..., C]`` teacher logits, same shape. Gradients flow into it too;
      wrap it in ``jax.lax.stop_gradient`` if the teacher must not be trained.

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Kim et al., `Comparing Kullback-Leibler Divergence and Mean Squared Error Loss in
    Knowledge Distillation <https://arxiv.org/abs/2105.08919>`_, IJCAI 2021.
  """
  student_logits, teacher_logits = student_teacher(student_logits, teacher_logits)
  return jnp.mean(jnp.square(student_logits - teacher_logits), axis=-1)


@dataclasses.dataclass(frozen=True)
class LogitMSE(LogitTerm):
  """Logit MSE (Kim et al. 2021, `mse_logit_loss`): the student's logits regress the
  teacher's; no temperature."""


  name = 'logit_mse'
  # Their best CIFAR-100 setting: the MSE alone (alpha = 1, no cross-entropy).
  paper = Paper('Kim et al. 2021, Comparing Kullback-Leibler Divergence and Mean Squared Error '
                'Loss in Knowledge Distillation',
                'https://arxiv.org/abs/2105.08919', weight=1.0, ce_weight=0.0)

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    return mse_logit_loss(student_logits, teacher_logits)
