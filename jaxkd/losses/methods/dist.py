"""DIST (Huang et al. 2022): match the teacher's prediction relations by Pearson correlation.

The inter-class part relates the classes of one example (one value per example); the
intra-class part relates the examples of a batch for each class, so it gives one value
per batch and cannot be split by example.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import check_static_non_negative, safe_norm, scaled_logits
from jaxkd.losses.terms import Hyperparam, LogitTerm, Paper


# The authors' Pearson correlation adds this to the product of the two norms.
_PEARSON_EPS = 1e-8


def _centred(x: jax.Array, axis: int) -> jax.Array:
  """``x - mean(x)`` along ``axis``, exactly 0 where ``x`` is constant along it.

  Shifting by the first entry before taking the mean changes nothing mathematically (the
  derivative is the same centring matrix) but makes a constant row exactly 0: in float32 the
  mean of ten 0.1f is not 0.1f, and the ~1e-9 left over from a uniform distribution (a
  zero-initialised head) meets the 1e-8 eps of the correlation, which then gets its ~1e6
  gradient 44-78 % wrong."""
  x = x - jax.lax.index_in_dim(x, 0, axis)
  return x - jnp.mean(x, axis=axis, keepdims=True)


def _pearson(a: jax.Array, b: jax.Array, axis: int) -> jax.Array:
  """Pearson correlation along ``axis``, ``cov / (std_a std_b + eps)`` as the authors do."""
  a = _centred(a, axis)
  b = _centred(b, axis)
  return jnp.sum(a * b, axis=axis) / (
      safe_norm(a, axis, keepdims=False) * safe_norm(b, axis, keepdims=False) + _PEARSON_EPS)


def _probs(student_logits, teacher_logits, temperature):
  """Temperature-``T`` probabilities of student and teacher, and ``T`` as an array."""
  student_scaled, teacher_scaled, t = scaled_logits(student_logits, teacher_logits,
                                                     temperature)
  return jax.nn.softmax(student_scaled, axis=-1), jax.nn.softmax(teacher_scaled, axis=-1), t


def _check_batch(shape) -> None:
  """The batch relation needs a ``[B, C]`` array with ``B >= 2``."""
  if len(shape) != 2:
    raise ValueError(
        f'student_logits must be [batch, classes] for the intra-class (batch) relation, '
        f'got shape {tuple(shape)}; flatten other axes into the batch axis first.')
  if shape[0] < 2:
    raise ValueError(
        f'student_logits has batch size {shape[0]}; the intra-class relation correlates '
        'examples and needs at least 2.')


def dist_inter_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
) -> jax.Array:
  r"""DIST inter-class relation loss, per example.

  .. math::
    \ell_i = T^2 \left(1 - \rho(p^s_{i,:},\, p^t_{i,:})\right),\quad
    p = \mathrm{softmax}(z / T),\quad
    \rho(a, b) = \frac{\sum_c \bar a_c \bar b_c}{\|\bar a\|\, \|\bar b\| + 10^{-8}}

  with ``\bar a = a - mean(a)``: the Pearson correlation over classes of one example's
  two distributions. It is invariant to shifting and scaling either distribution, so
  the student need only rank and space classes like the teacher. ``0`` when student and
  teacher agree (up to the ``1e-8``), ``2 T**2`` at most. The ``1e-8`` is the authors';
  it also makes the correlation 0 (loss ``T**2``) for a uniform distribution.

  A uniform student (a zero-initialised head) sits where the correlation's denominator is
  the ``1e-8`` alone: the gradient is the formula's, ``-T b / (C 1e-8)`` per logit (``b``
  the teacher's centred probabilities), about 1e6 in size. A uniform row is centred to
  exactly 0 (see ``_centred``) so that float32 gives that gradient, not one 44-78 % off;
  the zero vector's norm counts as having zero gradient, as the formula's derivative
  there is undefined.

  Args:
    student_logits: ``[..., C]`` student logits, correlated with the teacher's over the
      class axis, one example at a time (any float dtype; computed in >= float32).
    teacher_logits: ``[..., C]`` teacher logits, same shape. Gradients flow into it too;
      wrap it in ``jax.lax.stop_gradient`` if the teacher must not be trained.
    temperature: softmax temperature ``T > 0`` of both (Python float or scalar array).

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Huang et al., `Knowledge Distillation from A Stronger Teacher
    <https://arxiv.org/abs/2205.10536>`_, NeurIPS 2022.
  """
  p_s, p_t, t = _probs(student_logits, teacher_logits, temperature)
  return t**2 * (1.0 - _pearson(p_s, p_t, axis=-1))


def dist_intra_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
) -> jax.Array:
  r"""DIST intra-class relation loss: one scalar for the whole batch.

  .. math::
    \ell = T^2 \left(1 - \frac{1}{C} \sum_c \rho(p^s_{:,c},\, p^t_{:,c})\right)

  with ``p`` and ``\rho`` as in :func:`dist_inter_loss`, but the correlation taken over
  the batch: for each class, how the student's probabilities of that class vary across
  the examples compared with the teacher's. It relates examples to each other, so it
  has no per-example value; every example in the array takes part (mask padding out by
  slicing before the call, not afterwards). At batch size 2 the centred columns are
  ``+-(x_1 - x_2) / 2``, so each correlation is ``+-1`` (or 0) and the term is constant
  (zero gradient) almost everywhere: use batches of more than 2. A class whose probability
  is the same for every example (a uniform student) has the large gradient described in
  :func:`dist_inter_loss`.

  Args:
    student_logits: ``[B, C]`` student logits, ``B >= 2`` (any float dtype; computed in
      >= float32).
    teacher_logits: ``[B, C]`` teacher logits.
    temperature: softmax temperature ``T > 0`` (Python float or scalar array).

  Returns:
    ``[]`` float32 (float64 for float64 inputs) loss for the batch.

  References:
    Huang et al., `Knowledge Distillation from A Stronger Teacher
    <https://arxiv.org/abs/2205.10536>`_, NeurIPS 2022.
  """
  p_s, p_t, t = _probs(student_logits, teacher_logits, temperature)
  _check_batch(p_s.shape)
  return t**2 * (1.0 - jnp.mean(_pearson(p_s, p_t, axis=0)))


def dist_loss(
    student_logits: jax.typing.ArrayLike,
    teacher_logits: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
    inter_weight: jax.typing.ArrayLike,
    intra_weight: jax.typing.ArrayLike,
) -> jax.Array:
  r"""The DIST loss: weighted inter- and intra-class relation losses, one scalar a batch.

  .. math::
    \ell = w_{\mathrm{inter}} \frac{1}{B} \sum_i \ell^{\mathrm{inter}}_i
    + w_{\mathrm{intra}}\, \ell^{\mathrm{intra}}

  The authors' defaults are ``w_inter = w_intra = 1`` (``beta`` and ``gamma`` in the
  paper) and ``T = 1``.

  Args:
    student_logits: ``[B, C]`` student logits, ``B >= 2``.
    teacher_logits: ``[B, C]`` teacher logits.
    temperature: softmax temperature ``T > 0`` (Python float or scalar array).
    inter_weight: weight of the mean inter-class loss, ``>= 0``.
    intra_weight: weight of the intra-class loss, ``>= 0``.

  Returns:
    ``[]`` float32 (float64 for float64 inputs) loss for the batch.

  References:
    Huang et al., `Knowledge Distillation from A Stronger Teacher
    <https://arxiv.org/abs/2205.10536>`_, NeurIPS 2022.
  """
  check_static_non_negative(inter_weight, 'inter_weight')
  check_static_non_negative(intra_weight, 'intra_weight')
  _check_batch(jnp.shape(student_logits))
  inter = jnp.mean(dist_inter_loss(student_logits, teacher_logits, temperature=temperature))
  intra = dist_intra_loss(student_logits, teacher_logits, temperature=temperature)
  return (jnp.asarray(inter_weight, inter.dtype) * inter +
          jnp.asarray(intra_weight, intra.dtype) * intra)


@dataclasses.dataclass(frozen=True)
class DIST(LogitTerm):
  """DIST (Huang et al. 2022, `dist_loss`): Pearson correlation of the softened predictions
  within each example (inter-class) and of each class across the batch (intra-class). The
  intra-class part relates the examples of a batch: one value per batch, computed on the
  global batch under every parallel mode."""

  temperature: Hyperparam = 1.0
  inter_weight: float = 1.0
  intra_weight: float = 1.0

  name = 'dist'
  # The reference implementation's defaults: beta = gamma = 1, tau = 1.
  paper = Paper('Huang et al. 2022, Knowledge Distillation from A Stronger Teacher',
                'https://arxiv.org/abs/2205.10536', weight=1.0, ce_weight=1.0)
  per_example = False

  def per_teacher(self, student_logits, teacher_logits, labels, temperature):
    return dist_loss(student_logits, teacher_logits, temperature=temperature,
                     inter_weight=self.inter_weight, intra_weight=self.intra_weight)
