"""Gradient reversal: identity forward, negated and scaled gradient backward."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxkd.losses.kd import _upcast

__all__ = ['gradient_reversal']


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
  scale = _upcast(scale)
  if scale.ndim != 0:
    raise ValueError(f'scale must be a scalar, got shape {scale.shape}.')
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    raise TypeError(f'x must be a float array to carry a gradient, got dtype {x.dtype}.')
  return _reverse(x, scale)
