"""Attention transfer: match L2-normalised spatial attention maps of feature maps."""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from jaxkd.losses.kd import _upcast

__all__ = ['attention_map', 'attention_transfer_loss']

# F.normalize's default floor on the norm, as in the authors' code.
_NORM_EPS = 1e-12


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
  positive = squared > 0
  # Zero gradient (not NaN) through the norm of an all-zero map.
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
  return flat / jnp.maximum(norm, _NORM_EPS)


def _pool_to(features: jax.Array, spatial_shape: tuple[int, ...]) -> jax.Array:
  """Average-pools each spatial axis down to ``spatial_shape`` by an integer factor."""
  batch, *spatial, channels = features.shape
  split = [batch]
  for size, target in zip(spatial, spatial_shape):
    split += [target, size // target]
  pooled = features.reshape(*split, channels)
  return jnp.mean(pooled, axis=tuple(range(2, 2 * len(spatial) + 1, 2)))


def _common_spatial_shape(first_shape, second_shape, first_name: str = 'student_features',
                          second_name: str = 'teacher_features') -> tuple[int, ...]:
  """The smaller size on each spatial axis, checking the larger is a whole multiple."""
  common = []
  for axis, (a, b) in enumerate(zip(first_shape[1:-1], second_shape[1:-1]), start=1):
    small, large = min(a, b), max(a, b)
    if large % small:
      raise ValueError(
          f'{first_name} shape {tuple(first_shape)} and {second_name} shape '
          f'{tuple(second_shape)}: spatial axis {axis} sizes {a} and {b} are not whole '
          'multiples of each other, so the larger cannot be average-pooled to the smaller.')
    common.append(small)
  return tuple(common)


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
  features = _upcast(features)
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
  student_features = _upcast(student_features)
  teacher_features = _upcast(teacher_features)
  _check_features(student_features, 'student_features')
  _check_features(teacher_features, 'teacher_features')
  if (student_features.ndim != teacher_features.ndim or
      student_features.shape[0] != teacher_features.shape[0]):
    raise ValueError(
        f'student_features shape {student_features.shape} and teacher_features shape '
        f'{teacher_features.shape} must have the same batch size and number of spatial '
        'axes.')
  spatial = _common_spatial_shape(student_features.shape, teacher_features.shape)
  dtype = jnp.promote_types(student_features.dtype, teacher_features.dtype)
  student_map = _attention_map(_pool_to(student_features.astype(dtype), spatial), power)
  teacher_map = _attention_map(_pool_to(teacher_features.astype(dtype), spatial), power)
  return jnp.mean(jnp.square(student_map - teacher_map), axis=-1)
