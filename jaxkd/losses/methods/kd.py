"""Hinton et al.'s knowledge distillation: KL between temperature-softened distributions."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import (check_last_dims, check_static_temperature, kl,
                                   temperature_scale, upcast)
from jaxkd.losses.terms import (MULTI_TEACHER, Hyperparam, LogitTerm, Paper, one_of, optional,
                               positive, setting, value_at)


def _softened_student(student_logits, target, temperature, target_name):
  """`(log softmax(z_s / T), target, T)`, all in the promoted dtype (>= float32)."""
  check_static_temperature(temperature)
  student_logits = upcast(student_logits)
  target = upcast(target)
  check_last_dims(student_logits.shape, target.shape, target_name)
  dtype = jnp.promote_types(student_logits.dtype, target.dtype)
  t = jnp.asarray(temperature, dtype)
  log_p_s = jax.nn.log_softmax(student_logits.astype(dtype) / t, axis=-1)
  return log_p_s, target.astype(dtype), t


def kd_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
    scale_by_temperature_squared: bool = True,
) -> jax.Array:
  r"""Knowledge-distillation loss between student and teacher logits, per example.

  .. math::
    \ell = T^2 \sum_c p^t_c (\log p^t_c - \log p^s_c),\quad
    p^t = \mathrm{softmax}(z^t / T),\ p^s = \mathrm{softmax}(z^s / T)

  i.e. ``T**2 * KL(softmax(teacher / T) || softmax(student / T))``. The ``T**2`` factor
  keeps the gradient magnitude, ``d loss / d student_logits = T * (p_s - p_t)``, comparable
  across temperatures (Hinton et al., sec. 2). Both distributions are formed with
  ``log_softmax``; classes the teacher gives probability exactly 0 (logit ``-inf``, or an
  underflowed softmax) contribute 0, with finite gradients.

  Args:
    student_logits: ``[..., C]`` student logits (any float dtype; computed in >= float32).
    teacher_logits: ``[..., C]`` teacher logits, same shape. Gradients flow into it too;
      wrap it in ``jax.lax.stop_gradient`` if the teacher must not be trained.
    temperature: softmax temperature ``T > 0``; a Python float or a scalar array (a traced
      value from a schedule is fine, but then ``T > 0`` is the caller's responsibility).
    scale_by_temperature_squared: multiply by ``T**2`` (default, as in the paper). If
      False the loss is the plain KL, ``T**2`` times smaller.

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Hinton, Vinyals, Dean, `Distilling the Knowledge in a Neural Network
    <https://arxiv.org/abs/1503.02531>`_, 2015.
  """
  log_p_s, teacher_logits, t = _softened_student(
      student_logits, teacher_logits, temperature, 'teacher_logits')
  log_p_t = jax.nn.log_softmax(teacher_logits / t, axis=-1)
  return temperature_scale(t, scale_by_temperature_squared) * kl(
      jnp.exp(log_p_t), log_p_t, log_p_s)


def kd_loss_from_probs(student_logits: jax.typing.ArrayLike, teacher_probs: jax.typing.ArrayLike,
                       *, temperature: jax.typing.ArrayLike,
                       scale_by_temperature_squared: bool = True) -> jax.Array:
  r"""Knowledge-distillation loss against a given teacher distribution, per example.

  .. math::
    \ell = T^2 \sum_c q_c (\log q_c - \log p^s_c),\quad p^s = \mathrm{softmax}(z^s / T)

  ``q`` is used as given: it must already be the temperature-``T`` target, e.g. the
  weighted average of several teachers' ``softmax(z^t_i / T)`` (ensemble distillation), or
  a distribution rebuilt over all ``C`` classes from a cached top-k teacher output.
  Entries with ``q_c = 0`` contribute exactly 0 (``0 * log 0 = 0``), with finite gradients.
  ``q`` is not renormalised; rows that do not sum to 1 give a loss that is not a KL.

  Args:
    student_logits: ``[..., C]`` student logits (any float dtype; computed in >= float32).
    teacher_probs: ``[..., C]`` non-negative target probabilities at temperature ``T``,
      each row summing to 1.
    temperature: softmax temperature ``T > 0`` applied to the student (Python float or
      scalar array).
    scale_by_temperature_squared: multiply by ``T**2`` (default, as in the paper).

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Hinton et al. 2015, as for :func:`kd_loss`.
  """
  log_p_s, teacher_probs, t = _softened_student(
      student_logits, teacher_probs, temperature, 'teacher_probs')
  positive = teacher_probs != 0  # NaN stays NaN
  log_p_t = jnp.log(jnp.where(positive, teacher_probs, 1.0))  # only read where positive
  return temperature_scale(t, scale_by_temperature_squared) * kl(
      teacher_probs, log_p_t, log_p_s)


@dataclasses.dataclass(frozen=True)
class KD(LogitTerm):
  r"""Hinton et al.'s soft-target loss, ``T^2 KL(softmax(z_t/T) || softmax(z_s/T))``
  (`jaxkd.losses.kd_loss`). With several teachers, 'sum' adds the per-teacher losses with
  `teacher_weights` (normalised), 'ensemble' distils from the weighted average of their
  softened distributions (Hinton et al. 2015, sec. 2). `temperature=None` is allowed only
  for a term that is never computed (weight 0, the supervised shorthand)."""

  temperature: Hyperparam | None = setting(4.0, optional(positive))
  multi_teacher: str = setting('sum', one_of(MULTI_TEACHER))
  scale_by_temperature_squared: bool = True

  name = 'kd'
  family = 'classic'
  # The CIFAR-100 recipe's weights and T (mdistiller, CRD, DKD).
  paper = Paper('Hinton et al. 2015, Distilling the Knowledge in a Neural Network',
                'https://arxiv.org/abs/1503.02531', weight=0.9, ce_weight=0.1)

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    del labels
    return kd_loss(student_logits, teacher_logits, temperature=temperature,
                   scale_by_temperature_squared=self.scale_by_temperature_squared)

  def __call__(self, ctx):
    student, teachers = ctx.student, ctx.teachers
    if self.temperature is None:
      return jnp.zeros(student.logits.shape[:-1], jnp.float32), {}, ctx.state
    if self.multi_teacher != 'ensemble' or len(teachers) < 2:
      return super().__call__(ctx)
    temperature = value_at(self.temperature, ctx.step)
    weights = self.teacher_weights or (1.0 / len(teachers),) * len(teachers)
    probs = sum(w * jax.nn.softmax(self._prepare(t.logits) / temperature, axis=-1)
                for w, t in zip(weights, teachers))
    return kd_loss_from_probs(
        self._prepare(student.logits), probs, temperature=temperature,
        scale_by_temperature_squared=self.scale_by_temperature_squared), {}, ctx.state
