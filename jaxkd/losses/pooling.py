"""Resampling of NHWC feature maps shared by the map losses: average pooling by whole factors
onto the smaller of two maps, PyTorch's adaptive average pooling, and the shape checks."""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.losses.numerics import upcast


def pool_to(features: jax.Array, spatial_shape: tuple[int, ...]) -> jax.Array:
  """Average-pools each spatial axis down to ``spatial_shape`` by an integer factor."""
  batch, *spatial, channels = features.shape
  split = [batch]
  for size, target in zip(spatial, spatial_shape):
    split += [target, size // target]
  pooled = features.reshape(*split, channels)
  return jnp.mean(pooled, axis=tuple(range(2, 2 * len(spatial) + 1, 2)))


def common_spatial_shape(first_shape, second_shape, first_name: str = 'student_features',
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


def check_feature_map(features: jax.Array, name: str) -> None:
  """Feature maps need a batch axis, at least one spatial axis and a channel axis."""
  if features.ndim < 3:
    raise ValueError(
        f'{name} must be [batch, *spatial, channels] (NHWC for images), got shape '
        f'{features.shape}.')


def check_same_batch(first_shape, second_shape, first_name: str, second_name: str) -> None:
  """Batch size and rank must agree."""
  if len(first_shape) != len(second_shape) or first_shape[0] != second_shape[0]:
    raise ValueError(
        f'{first_name} shape {tuple(first_shape)} and {second_name} shape '
        f'{tuple(second_shape)} must have the same batch size and number of spatial axes.')


def pooled_pair(first, second, first_name: str,
                 second_name: str) -> tuple[jax.Array, jax.Array]:
  """Upcasts both to one dtype, average-pools the larger map to the smaller, flattens space.

  Returns ``[B, S, C_first]`` and ``[B, S, C_second]`` with ``S`` the common positions.
  """
  first = upcast(first)
  second = upcast(second)
  check_feature_map(first, first_name)
  check_feature_map(second, second_name)
  check_same_batch(first.shape, second.shape, first_name, second_name)
  spatial = common_spatial_shape(first.shape, second.shape, first_name, second_name)
  dtype = jnp.promote_types(first.dtype, second.dtype)
  batch = first.shape[0]
  first = pool_to(first.astype(dtype), spatial).reshape(batch, -1, first.shape[-1])
  second = pool_to(second.astype(dtype), spatial).reshape(batch, -1, second.shape[-1])
  return first, second


def check_nhwc(x: jax.Array, name: str) -> None:
  if x.ndim != 4:
    raise ValueError(f'{name} must be [batch, height, width, channels] (NHWC), got shape '
                     f'{x.shape}.')


def check_size(value, name: str) -> None:
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
    raise ValueError(f'{name} must be a positive Python int, got {value!r}.')


def _pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """``[out, in]`` averaging matrix of PyTorch's adaptive average pooling on one axis.

  Output cell ``i`` averages inputs ``floor(i * in / out)`` to ``ceil((i + 1) * in / out)``
  (exclusive), the windows of ``torch.nn.functional.adaptive_avg_pool2d``; they overlap when
  ``out`` does not divide ``in``.
  """
  matrix = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


def _pool_axis(x: jax.Array, axis: int, out_size: int) -> jax.Array:
  """Adaptive average pooling of one axis of ``x`` to ``out_size``."""
  in_size = x.shape[axis]
  if in_size == out_size:
    return x
  if in_size % out_size == 0:  # whole factor: plain block means, exact and cheap
    factor = in_size // out_size
    shape = x.shape[:axis] + (out_size, factor) + x.shape[axis + 1:]
    return jnp.mean(x.reshape(shape), axis=axis + 1)
  matrix = jnp.asarray(_pool_matrix(in_size, out_size), x.dtype)
  pooled = jnp.tensordot(matrix, x, axes=((1,), (axis,)), precision=jax.lax.Precision.HIGHEST)
  return jnp.moveaxis(pooled, 0, axis)


def _adaptive_avg_pool(x: jax.Array, height: int, width: int) -> jax.Array:
  return _pool_axis(_pool_axis(x, 1, height), 2, width)


def adaptive_avg_pool(features: jax.typing.ArrayLike, height: int, width: int) -> jax.Array:
  r"""Adaptive average pooling of NHWC features, as PyTorch's ``adaptive_avg_pool2d``.

  .. math::
    y_{b,i,j,c} = \frac{1}{|R_i|\,|C_j|} \sum_{h \in R_i} \sum_{w \in C_j} x_{b,h,w,c},\quad
    R_i = \left[\left\lfloor \tfrac{iH}{h'} \right\rfloor,
    \left\lceil \tfrac{(i+1)H}{h'} \right\rceil\right)

  (likewise ``C_j`` for the width). When the output size divides the input size the windows
  are the blocks of an ordinary average pooling; otherwise they overlap (e.g. ImageNet's 7x7
  maps pooled to 4x4 in ReviewKD and SDD), and an output larger than the input repeats
  entries.

  Args:
    features: ``[B, H, W, C]`` features (any float dtype; computed in >= float32).
    height: output height ``h' >= 1`` (Python int).
    width: output width ``w' >= 1`` (Python int).

  Returns:
    ``[B, height, width, C]`` float32 (float64 for float64 inputs) pooled features.
  """
  check_size(height, 'height')
  check_size(width, 'width')
  features = upcast(features)
  check_nhwc(features, 'features')
  return _adaptive_avg_pool(features, height, width)


def pool_student_down(student: jax.Array, teacher_shape, term: str, tap: str) -> jax.Array:
  """The student's NHWC map average-pooled onto the teacher's height and width on each axis
  where it is the larger (by a whole factor); kept where the teacher's is the larger, which
  the term pools down with `pool_teacher_down`, as the authors of VID and OFD do."""
  (sh, sw), (th, tw) = student.shape[1:3], teacher_shape[1:3]
  if (sh > th and sh % th) or (sw > tw and sw % tw):
    raise ValueError(f'{term}: the student feature at {tap!r} is {sh}x{sw}, the teacher\'s '
                     f'{th}x{tw}; where the student\'s is larger it must be an integer '
                     'multiple of the teacher\'s. Tap other paths.')
  return pool_to(student, (min(sh, th), min(sw, tw)))


def pool_teacher_down(teacher: jax.Array, student_shape) -> jax.Array:
  """The teacher's NHWC map adaptively average-pooled (`adaptive_avg_pool`, PyTorch's
  ``F.adaptive_avg_pool2d``) onto the student's height and width where it is the larger:
  RepDistiller's ``VIDLoss`` and mdistiller's ``OFD`` pool the teacher down so."""
  (sh, sw), (th, tw) = student_shape[1:3], teacher.shape[1:3]
  return _adaptive_avg_pool(teacher, min(sh, th), min(sw, tw))
