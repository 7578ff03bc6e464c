"""Curriculum temperature KD (Li et al. 2023): a learnable temperature trained adversarially
through a gradient reversal."""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxkd.losses.methods.kd import kd_loss
from jaxkd.losses.numerics import upcast
from jaxkd.losses.terms import LogitTerm, Paper, non_negative, positive, setting


@jax.custom_vjp
def _reverse(x: jax.Array, scale: jax.Array) -> jax.Array:
  """Identity in ``x``; the backward pass is defined below."""
  del scale
  return x


def _reverse_fwd(x, scale):
  return x, scale


def _reverse_bwd(scale, cotangent):
  # `scale` is a hyper-parameter (a schedule value), not something to train.
  return ((-scale * cotangent).astype(cotangent.dtype), jnp.zeros_like(scale))


_reverse.defvjp(_reverse_fwd, _reverse_bwd)


def gradient_reversal(x: jax.typing.ArrayLike, scale: jax.typing.ArrayLike) -> jax.Array:
  r"""Returns ``x`` unchanged, but multiplies the gradient flowing back through it by ``-scale``.

  .. math::
    \mathrm{GRL}(x) = x,\qquad
    \frac{\partial\, \mathrm{GRL}(x)}{\partial x} = -\lambda I

  Placed between a learnable quantity and a loss, it turns gradient descent on the loss
  into gradient *ascent* for that quantity, scaled by ``lambda``, while everything
  upstream of the loss still descends. CTKD uses it on a learnable temperature so the
  temperature maximises the distillation loss the student minimises, with ``lambda``
  raised from 0 to 1 on a cosine schedule (a curriculum). ``scale`` gets no gradient.
  CTKD's code multiplies by ``lambda`` itself and feeds it values in ``[-1, 0]``; here the
  sign is built in, so pass the paper's ``lambda`` in ``[0, 1]``.

  Args:
    x: array of any shape and float dtype; returned as is.
    scale: ``lambda``, a scalar (a Python number or a traced scalar array from a
      schedule); ``0`` stops the gradient, ``1`` reverses it exactly.

  Returns:
    ``x``, same shape and dtype.

  References:
    Ganin & Lempitsky, `Unsupervised Domain Adaptation by Backpropagation
    <https://arxiv.org/abs/1409.7495>`_, ICML 2015 (the gradient reversal layer).
    Li et al., `Curriculum Temperature for Knowledge Distillation
    <https://arxiv.org/abs/2211.16231>`_, AAAI 2023.
  """
  x = jnp.asarray(x)
  scale = upcast(scale)
  if scale.ndim != 0:
    raise ValueError(f'scale must be a scalar, got shape {scale.shape}.')
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    raise TypeError(f'x must be a float array to carry a gradient, got dtype {x.dtype}.')
  return _reverse(x, scale)


@dataclasses.dataclass(frozen=True)
class CTKD(LogitTerm):
  """Curriculum temperature KD (Li et al. 2023): KD at a learnable global temperature
  ``T = min_temperature + temperature_range * sigmoid(theta)`` that plays against the student
  through a gradient reversal whose strength rises from 0 to `max_reversal` along a cosine
  over `curriculum_steps` (the paper: 10 epochs). `theta` is the term's trainable parameter
  (it starts at `initial_logit`; the paper's 1.0 gives T = 15.6)."""

  min_temperature: float = setting(1.0, positive)
  temperature_range: float = setting(20.0, non_negative)
  curriculum_steps: int = 0
  max_reversal: float = setting(1.0, non_negative)
  initial_logit: float = 1.0

  name = 'ctkd'
  # zhengli97/CTKD: T in [1, 21], reversal 0 -> 1 over 10 epochs, KD weights 0.1 / 0.9.
  paper = Paper('Li et al. 2023, Curriculum Temperature for Knowledge Distillation',
                'https://arxiv.org/abs/2211.16231', weight=0.9, ce_weight=0.1,
                epochs={'curriculum': 10.0})
  owns_params = True

  def init(self, key, student, teachers):
    del key, student, teachers
    return {'temperature_logit': jnp.asarray(self.initial_logit, jnp.float32)}, {}

  def reversal(self, step) -> jax.Array:
    """The curriculum: ``max_reversal * (1 - cos(pi * min(step / curriculum_steps, 1))) / 2``."""
    if not self.curriculum_steps:
      return jnp.asarray(self.max_reversal, jnp.float32)
    progress = jnp.minimum(jnp.asarray(step, jnp.float32) / self.curriculum_steps, 1.0)
    return self.max_reversal * (1.0 - jnp.cos(math.pi * progress)) / 2.0

  def temperature_of(self, theta: jax.Array, step) -> jax.Array:
    theta = gradient_reversal(theta, self.reversal(step))
    return self.min_temperature + self.temperature_range * jax.nn.sigmoid(theta)

  def hyperparams(self, step, params=None):
    values = {'reversal': self.reversal(step)}
    if params:
      values['temperature'] = self.temperature_of(params['temperature_logit'], step)
    return values

  def temperature_value(self, step, params):
    return self.temperature_of(params['temperature_logit'], step)

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    return kd_loss(student_logits, teacher_logits, temperature=temperature)
