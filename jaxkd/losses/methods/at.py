"""Attention transfer (Zagoruyko & Komodakis 2017): match L2-normalised spatial attention maps."""
from __future__ import annotations

import dataclasses
import numbers

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import NORM_EPS, upcast
from jaxkd.losses.pooling import common_spatial_shape, pool_to
from jaxkd.losses.terms import PairedMaps, Paper, combine_teachers, positive, setting


def _check_features(features: jax.Array, name: str) -> None:
  """Features need a batch axis, at least one spatial axis and a channel axis."""
  if features.ndim < 3:
    raise ValueError(
        f'{name} must be [batch, *spatial, channels] (NHWC for images), got shape '
        f'{features.shape}.')


def _check_power(power) -> None:
  """Rejects a Python-number power <= 0."""
  if isinstance(power, numbers.Real) and not power > 0:
    raise ValueError(f'power must be > 0, got {power!r}; the paper uses 2.')


def _attention_map(features: jax.Array, power) -> jax.Array:
  """Channel mean of ``|f|**power``, flattened over space and L2-normalised: ``[B, S]``."""
  energy = jnp.mean(jnp.abs(features)**power, axis=-1)
  flat = energy.reshape(energy.shape[0], -1)
  squared = jnp.sum(flat * flat, axis=-1, keepdims=True)
  positive = squared != 0  # NaN stays NaN
  # Zero gradient (not NaN) through the norm of an all-zero map.
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
  return flat / jnp.maximum(norm, NORM_EPS)


def attention_map(features: jax.typing.ArrayLike, *, power: float = 2) -> jax.Array:
  r"""Spatial attention map of a feature map, flattened and L2-normalised per example.

  .. math::
    Q_{b,s} = \frac{1}{C} \sum_c |f_{b,s,c}|^p,\qquad
    a_b = \frac{Q_b}{\max(\|Q_b\|_2,\ 10^{-12})}

  where ``s`` runs over the spatial positions. The paper sums over channels rather than
  averaging; the normalisation makes the two identical. The authors' code raises ``f``
  to the power without ``abs``, the same for the usual even ``p``.

  Args:
    features: ``[B, H, W, C]`` (NHWC; any number of spatial axes works) features, any
      float dtype (computed in >= float32).
    power: ``p > 0``; the paper uses 2.

  Returns:
    ``[B, H * W]`` float32 (float64 for float64 inputs) unit-norm attention maps.

  References:
    Zagoruyko & Komodakis, `Paying More Attention to Attention
    <https://arxiv.org/abs/1612.03928>`_, ICLR 2017.
  """
  _check_power(power)
  features = upcast(features)
  _check_features(features, 'features')
  return _attention_map(features, power)


def attention_transfer_loss(
    student_features: jax.typing.ArrayLike,
    teacher_features: jax.typing.ArrayLike,
    *,
    power: float = 2,
) -> jax.Array:
  r"""Attention-transfer loss between student and teacher feature maps, per example.

  .. math::
    \ell_b = \frac{1}{S} \sum_s \left(a^s_{b,s} - a^t_{b,s}\right)^2

  with ``a`` the unit-norm attention maps of :func:`attention_map` and ``S = H * W``. This
  is mdistiller's (and the authors' code's) loss: the *mean* over positions of the squared
  difference, so its batch mean equals their ``(a_s - a_t).pow(2).mean()``. The paper
  writes ``beta / 2`` times the (unsquared) L2 distance of the maps; the scale is the
  term's weight (mdistiller uses 1000). The channel counts may differ. When the spatial
  sizes differ, the larger feature map is average-pooled to the smaller one first, as in
  mdistiller (which assumes square maps); here each spatial axis is pooled separately
  and must differ by a whole factor.

  Args:
    student_features: ``[B, H, W, C_s]`` student features (NHWC; any float dtype, computed
      in >= float32).
    teacher_features: ``[B, H', W', C_t]`` teacher features, ``H'`` and ``H`` whole
      multiples of each other (likewise ``W``). Gradients flow into them too; wrap them
      in ``jax.lax.stop_gradient`` if the teacher must not be trained.
    power: ``p > 0``; the paper uses 2.

  Returns:
    ``[B]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Zagoruyko & Komodakis, `Paying More Attention to Attention
    <https://arxiv.org/abs/1612.03928>`_, ICLR 2017.
  """
  _check_power(power)
  student_features = upcast(student_features)
  teacher_features = upcast(teacher_features)
  _check_features(student_features, 'student_features')
  _check_features(teacher_features, 'teacher_features')
  if (student_features.ndim != teacher_features.ndim or
      student_features.shape[0] != teacher_features.shape[0]):
    raise ValueError(
        f'student_features shape {student_features.shape} and teacher_features shape '
        f'{teacher_features.shape} must have the same batch size and number of spatial '
        'axes.')
  spatial = common_spatial_shape(student_features.shape, teacher_features.shape)
  dtype = jnp.promote_types(student_features.dtype, teacher_features.dtype)
  student_map = _attention_map(pool_to(student_features.astype(dtype), spatial), power)
  teacher_map = _attention_map(pool_to(teacher_features.astype(dtype), spatial), power)
  return jnp.mean(jnp.square(student_map - teacher_map), axis=-1)


@dataclasses.dataclass(frozen=True)
class AT(PairedMaps):
  """Attention transfer (Zagoruyko & Komodakis 2017): spatial attention maps (channel mean of
  ``|f|^power``, L2-normalised) of each student/teacher tap pair matched by squared error
  (`jaxkd.losses.attention_transfer_loss`), summed over the pairs. No parameters. Reads the
  taps as they are (any rank `attention_transfer_loss` takes), not through `maps`."""

  student_taps: tuple[str, ...] = ('stage1', 'stage2', 'stage3')
  teacher_taps: tuple[str, ...] = ('stage1', 'stage2', 'stage3')
  power: float = setting(2.0, positive)

  name = 'at'
  # mdistiller AT: p = 2, weight 1000, CE 1, every stage.
  paper = Paper('Zagoruyko & Komodakis 2017, Paying More Attention to Attention',
                'https://arxiv.org/abs/1612.03928', weight=1000.0, ce_weight=1.0)

  def __call__(self, ctx):
    per_teacher = [
        sum(attention_transfer_loss(ctx.student.features[s], teacher.features[t],
                                    power=self.power)
            for s, t in zip(self.student_taps, self.teacher_taps))
        for teacher in ctx.teachers]
    return (*combine_teachers(self.teacher_weights, per_teacher), ctx.state)
