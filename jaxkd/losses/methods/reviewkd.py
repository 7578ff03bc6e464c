"""ReviewKD (Chen et al. 2021): student stages fused deepest first by attention-based fusion
(ABF), matched to the teacher's by the hierarchical context loss (HCL)."""
from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.losses.numerics import upcast
from jaxkd.losses.pooling import adaptive_avg_pool, check_nhwc, check_size
from jaxkd.losses.projectors import (batch_norm, computed_once, conv1x1, conv1x1_batch_norm,
                                     conv1x1_init, conv3x3)
from jaxkd.losses.terms import Paper, Term, combine_teachers


# The pyramid levels of the authors' ``hcl``, finest first; each weighs half the previous.
_HCL_LEVELS = (4, 2, 1)


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
  check_size(height, 'height')
  check_size(width, 'width')
  x = upcast(x)
  check_nhwc(x, 'x')
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
  x = upcast(x)
  residual = upcast(residual)
  attention = upcast(attention)
  check_nhwc(x, 'x')
  check_nhwc(residual, 'residual')
  check_nhwc(attention, 'attention')
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
  student_features = [upcast(f) for f in student_features]
  teacher_features = [upcast(f) for f in teacher_features]
  if not student_features or len(student_features) != len(teacher_features):
    raise ValueError(
        f'student_features has {len(student_features)} stages and teacher_features '
        f'{len(teacher_features)}; give the same, non-zero, number of stages.')
  for stage, (fs, ft) in enumerate(zip(student_features, teacher_features)):
    check_nhwc(fs, f'student_features[{stage}]')
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
      loss = loss + weight * _per_example_mean_square(adaptive_avg_pool(diff, level, level))
    loss = loss / weight_total
    total = loss if total is None else total + loss
  return total


@dataclasses.dataclass(frozen=True)
class ReviewKD(Term):
  """Knowledge review (Chen et al. 2021, `hcl_loss`): the student's stages, deepest first,
  each projected (1x1 convolution + BN) and fused with the fused result of the deeper stages
  by attention-based fusion (two sigmoid maps from a 1x1 convolution over both, `abf_combine`),
  resized to the teacher stage's size and mapped onto its channels (3x3 convolution + BN),
  then compared with the teacher's stages by the hierarchical context loss (MSE at full size
  and pooled to 4, 2, 1), summed over stages. The fusion modules (`mid_channels` wide; the
  authors' min(512, deepest student width) when 0) are the term's parameters; their
  BatchNorms use the global batch's statistics (they exist only in training)."""

  student_taps: tuple[str, ...] = ('pool1', 'pool2')
  teacher_taps: tuple[str, ...] = ('pool1', 'pool2')
  mid_channels: int = 0
  teacher_weights: tuple[float, ...] | None = None

  name = 'reviewkd'
  family = 'multiscale'
  # HCL weight 1 (their default; 5 for the CIFAR ResNet/WRN pairs), the conv stages
  # fused deepest first.
  paper = Paper('Chen et al. 2021, Distilling Knowledge via Knowledge Review',
                'https://arxiv.org/abs/2104.09044', weight=1.0, ce_weight=1.0)
  owns_params = True
  batch_statistics = True  # the fusion's BatchNorms

  def __post_init__(self):
    super().__post_init__()
    if len(self.student_taps) != len(self.teacher_taps) or not self.student_taps:
      raise ValueError(f'reviewkd pairs student_taps with teacher_taps one to one (shallow to '
                       f'deep), got {list(self.student_taps)} and {list(self.teacher_taps)}.')

  def init(self, key, student, teachers):
    s_shapes = [student.features[t].shape for t in self.student_taps]
    t_shapes = [teachers[0].features[t].shape for t in self.teacher_taps]
    for tap, shape in zip(self.student_taps + self.teacher_taps, s_shapes + t_shapes):
      if len(shape) != 4:
        raise ValueError(f'reviewkd fuses NHWC stage maps; {tap!r} has shape {shape}.')
    mid = self.mid_channels or min(512, s_shapes[-1][-1])
    params = {}
    for i, (s, t) in enumerate(zip(s_shapes, t_shapes)):
      k1, k2, k3 = jax.random.split(jax.random.fold_in(key, i), 3)
      stage = {'conv1': conv1x1_init(k1, s[-1], mid, bias=False),
               'bn1': {'scale': jnp.ones(mid), 'bias': jnp.zeros(mid)},
               'conv2': jax.nn.initializers.he_uniform()(k2, (3, 3, mid, t[-1])),
               'bn2': {'scale': jnp.ones(t[-1]), 'bias': jnp.zeros(t[-1])}}
      if i < len(s_shapes) - 1:  # every stage but the deepest fuses a residual
        stage['attention'] = conv1x1_init(k3, 2 * mid, 2)
      params[f'stage{i}'] = stage
    return params, {}

  def fused(self, student, target_shapes, params, axis_name) -> list[jax.Array]:
    """The ABF outputs, shallow to deep, each the size and width of the teacher's stage."""
    maps = [student.features[t].astype(jnp.float32) for t in self.student_taps]
    outputs, residual = [None] * len(maps), None
    for i in reversed(range(len(maps))):
      p = params[f'stage{i}']
      x = conv1x1_batch_norm(maps[i], p['conv1']['kernel'], p['bn1']['scale'],
                             p['bn1']['bias'], axis_name)
      if residual is not None:
        residual = nearest_upsample(residual, *x.shape[1:3])
        attention = jax.nn.sigmoid(conv1x1(jnp.concatenate([x, residual], -1), p['attention']))
        x = abf_combine(x, residual, attention)
      x = computed_once(nearest_upsample(x, *target_shapes[i][1:3]))
      residual = x
      outputs[i] = batch_norm(conv3x3(x, p['conv2']), p['bn2']['scale'], p['bn2']['bias'],
                               axis_name)
    return outputs

  def __call__(self, ctx):
    per_teacher = []
    for teacher in ctx.teachers:
      targets = [teacher.features[t].astype(jnp.float32) for t in self.teacher_taps]
      fused = self.fused(ctx.student, [t.shape for t in targets], ctx.params, ctx.axis_name)
      per_teacher.append(hcl_loss(fused, targets))
    return (*combine_teachers(self.teacher_weights, per_teacher), ctx.state)
