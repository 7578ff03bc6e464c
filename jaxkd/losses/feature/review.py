"""ReviewKD: hierarchical context loss and the attention-based fusion (ABF) step.

The review framework fuses each student stage with the (already fused) deeper stages
through ABF modules, then matches every fused map to the teacher's map of that stage with
the hierarchical context loss (HCL). The convolutions of the ABF modules are trained with
the student and live in the term; here are the pure pieces: the loss, the attention-weighted
combination, and PyTorch-compatible adaptive average pooling and nearest resizing.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.losses.kd import _upcast

__all__ = ['abf_combine', 'adaptive_avg_pool', 'hcl_loss', 'nearest_upsample']

# The pyramid levels of the authors' ``hcl``, finest first; each weighs half the previous.
_HCL_LEVELS = (4, 2, 1)


def _check_nhwc(x: jax.Array, name: str) -> None:
  if x.ndim != 4:
    raise ValueError(f'{name} must be [batch, height, width, channels] (NHWC), got shape '
                     f'{x.shape}.')


def _check_size(value, name: str) -> None:
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
  _check_size(height, 'height')
  _check_size(width, 'width')
  features = _upcast(features)
  _check_nhwc(features, 'features')
  return _adaptive_avg_pool(features, height, width)


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source index ``floor(i * in / out)`` of PyTorch's ``mode='nearest'`` for each output."""
  return (np.arange(out_size) * in_size) // out_size


def nearest_upsample(x: jax.typing.ArrayLike, height: int, width: int) -> jax.Array:
  r"""Nearest-neighbour resize of NHWC features, as ``F.interpolate(mode='nearest')``.

  .. math::
    y_{b,i,j,c} = x_{b,\ \lfloor iH / h' \rfloor,\ \lfloor jW / w' \rfloor,\ c}

  For a whole upsampling factor ``k`` this repeats every entry ``k`` times along the axis.
  PyTorch computes ``floor(i * scale)`` with ``scale = H / h'`` in float32; the exact
  integer form used here agrees with it for power-of-two factors (ReviewKD's 2x and 8x
  upsampling), while for other ratios float rounding could in principle move one of
  PyTorch's indices. It also shrinks (ReviewKD resizes a fused map to ``out_shape`` the
  same way).

  Args:
    x: ``[B, H, W, C]`` features (any dtype; floats computed in >= float32).
    height: output height ``h' >= 1`` (Python int).
    width: output width ``w' >= 1`` (Python int).

  Returns:
    ``[B, height, width, C]`` resized features (float32, or float64 for float64 inputs).
  """
  _check_size(height, 'height')
  _check_size(width, 'width')
  x = _upcast(x)
  _check_nhwc(x, 'x')
  return _nearest(x, height, width)


def _nearest(x: jax.Array, height: int, width: int) -> jax.Array:
  if x.shape[1] != height:
    x = jnp.take(x, _nearest_indices(x.shape[1], height), axis=1)
  if x.shape[2] != width:
    x = jnp.take(x, _nearest_indices(x.shape[2], width), axis=2)
  return x


def abf_combine(
    x: jax.typing.ArrayLike,
    residual: jax.typing.ArrayLike,
    attention: jax.typing.ArrayLike,
) -> jax.Array:
  r"""The fusion step of ReviewKD's attention-based fusion (ABF) module.

  .. math::
    \tilde y = \mathrm{nearest}(y,\ H, W),\qquad
    o_{b,h,w,c} = x_{b,h,w,c}\, z_{b,h,w,0} + \tilde y_{b,h,w,c}\, z_{b,h,w,1}

  ``x`` is this stage's student feature after the ABF's first 1x1 convolution + BN, ``y``
  the fused residual from the deeper stage, resized (nearest) to ``x``'s ``H x W``, and
  ``z`` two attention maps. In the authors' ABF, ``z = sigmoid(conv1x1(concat[x, y~]))``
  (a 2-output convolution with bias over the channel concatenation, so the term resizes
  ``y`` itself to build ``z``; resizing it again here is then a no-op). The output is the
  ABF's fused feature; the ABF then resizes it to the teacher stage's size if that differs
  (:func:`nearest_upsample`) and applies its 3x3 convolution + BN to give the map compared
  with the teacher. The deepest stage has no residual and skips this step.

  Args:
    x: ``[B, H, W, C]`` projected student features (any float dtype; computed in >= float32).
    residual: ``[B, h, w, C]`` fused features of the deeper stage (any size; resized to
      ``H x W`` by nearest neighbour).
    attention: ``[B, H, W, 2]`` attention weights (after the sigmoid); channel 0 weighs
      ``x``, channel 1 the residual.

  Returns:
    ``[B, H, W, C]`` float32 (float64 for float64 inputs) fused features.

  References:
    Chen et al., `Distilling Knowledge via Knowledge Review
    <https://arxiv.org/abs/2104.09044>`_, CVPR 2021.
  """
  x = _upcast(x)
  residual = _upcast(residual)
  attention = _upcast(attention)
  _check_nhwc(x, 'x')
  _check_nhwc(residual, 'residual')
  _check_nhwc(attention, 'attention')
  batch, height, width, channels = x.shape
  if residual.shape[0] != batch or residual.shape[3] != channels:
    raise ValueError(
        f'x shape {x.shape} and residual shape {residual.shape} must have the same batch '
        'size and channel count (the residual is the deeper stage fused at the same width).')
  if attention.shape != (batch, height, width, 2):
    raise ValueError(
        f'attention shape {attention.shape} must be {(batch, height, width, 2)}: two '
        'attention maps (for x and for the residual) at x\'s spatial size.')
  dtype = jnp.promote_types(jnp.promote_types(x.dtype, residual.dtype), attention.dtype)
  residual = _nearest(residual.astype(dtype), height, width)
  attention = attention.astype(dtype)
  return x.astype(dtype) * attention[..., 0:1] + residual * attention[..., 1:2]


def _per_example_mean_square(x: jax.Array) -> jax.Array:
  return jnp.mean(jnp.square(x).reshape(x.shape[0], -1), axis=-1)


def _check_levels(levels) -> tuple[int, ...]:
  levels = tuple(levels)
  if not levels or not all(
      isinstance(l, numbers.Integral) and not isinstance(l, bool) and l >= 1 for l in levels):
    raise ValueError(
        f'levels must be a non-empty sequence of positive Python ints, got {levels!r}; the '
        f'authors use {_HCL_LEVELS}.')
  return levels


def hcl_loss(
    student_features: Sequence[jax.typing.ArrayLike],
    teacher_features: Sequence[jax.typing.ArrayLike],
    *,
    levels: Sequence[int] = _HCL_LEVELS,
) -> jax.Array:
  r"""ReviewKD's hierarchical context loss (HCL), summed over stages, per example.

  .. math::
    \ell_b = \sum_k \frac{\mathrm{mse}_b(F^s_k, F^t_k)
      + \sum_{j:\, l_j < H_k} 2^{-r_j}\, \mathrm{mse}_b(P_{l_j} F^s_k,\ P_{l_j} F^t_k)}
      {1 + \sum_{j:\, l_j < H_k} 2^{-r_j}}

  where ``k`` runs over stages, ``mse_b`` is the mean squared error over one example's
  ``H x W x C`` entries, ``P_l`` is adaptive average pooling to ``l x l``
  (:func:`adaptive_avg_pool`, overlapping windows when ``l`` does not divide the size), and
  ``r_j`` counts the levels used so far (1 for the first used level, 2 for the next, ...):
  with the authors' levels ``(4, 2, 1)`` an 8x8 stage weighs its full map ``1``, the 4x4,
  2x2 and 1x1 pools ``1/2, 1/4, 1/8``, all divided by ``15/8``. Levels ``l >= H`` (the
  student map's height, as in the authors' code, which assumes square maps) are skipped,
  so a 1x1 stage (the pooled embedding) is a plain MSE. Every per-example MSE averages
  the same number of entries, so the batch mean of this loss equals the authors' ``hcl``
  (their ``F.mse_loss(..., reduction='mean')`` over the batch); they multiply it by a loss
  weight (1 by default; 5 for resnet32x4 -> resnet8x4 and the WRN pairs, 8 for
  ShuffleNetV2, 0.6 for resnet56 -> resnet20 in their CIFAR-100 scripts) warmed up
  linearly over 20 epochs.

  Args:
    student_features: per-stage ``[B, H_k, W_k, C_k]`` student maps (the ABF outputs; any
      float dtype, computed in >= float32).
    teacher_features: per-stage teacher maps, each the shape of the student's map of that
      stage (the authors use the teacher's pre-ReLU features). Gradients flow into them
      too; wrap them in ``jax.lax.stop_gradient`` if the teacher must not be trained.
    levels: pyramid levels, each weighing half the previous used one; the authors'
      ``(4, 2, 1)``.

  Returns:
    ``[B]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Chen et al., `Distilling Knowledge via Knowledge Review
    <https://arxiv.org/abs/2104.09044>`_, CVPR 2021.
  """
  levels = _check_levels(levels)
  if isinstance(student_features, (jax.Array, np.ndarray)) or isinstance(
      teacher_features, (jax.Array, np.ndarray)):
    raise ValueError('student_features and teacher_features must be sequences of per-stage '
                     'arrays, not single arrays.')
  student_features = [_upcast(f) for f in student_features]
  teacher_features = [_upcast(f) for f in teacher_features]
  if not student_features or len(student_features) != len(teacher_features):
    raise ValueError(
        f'student_features has {len(student_features)} stages and teacher_features '
        f'{len(teacher_features)}; give the same, non-zero, number of stages.')
  for stage, (fs, ft) in enumerate(zip(student_features, teacher_features)):
    _check_nhwc(fs, f'student_features[{stage}]')
    if fs.shape != ft.shape:
      raise ValueError(
          f'student_features[{stage}] shape {fs.shape} and teacher_features[{stage}] shape '
          f'{ft.shape} differ; each stage\'s student map must match the teacher\'s map.')
    if fs.shape[0] != student_features[0].shape[0]:
      raise ValueError(
          f'student_features[{stage}] has batch size {fs.shape[0]}, stage 0 has '
          f'{student_features[0].shape[0]}.')
  total = None
  for fs, ft in zip(student_features, teacher_features):
    dtype = jnp.promote_types(fs.dtype, ft.dtype)
    # Pooling is linear: the pooled maps' difference is the pooled difference.
    diff = fs.astype(dtype) - ft.astype(dtype)
    loss = _per_example_mean_square(diff)
    weight, weight_total = 1.0, 1.0
    for level in levels:
      if level >= fs.shape[1]:
        continue
      weight /= 2.0
      weight_total += weight
      loss = loss + weight * _per_example_mean_square(_adaptive_avg_pool(diff, level, level))
    loss = loss / weight_total
    total = loss if total is None else total + loss
  return total
