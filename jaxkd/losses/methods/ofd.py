"""Overhaul of feature distillation (Heo et al. 2019): a margin-clipped teacher matched by a
partial L2 distance."""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.scipy.stats import norm

from jaxkd import paths
from jaxkd.losses.numerics import upcast
from jaxkd.losses.pooling import pool_student_down, pool_teacher_down
from jaxkd.losses.projectors import BN_EPS, computed_once, conv1x1_batch_norm
from jaxkd.losses.terms import Paper, ProjectedMaps, conv_batch_norm_init


# The authors' training scripts add ``loss.sum() / batch_size / 1000`` (CIFAR-100) and
# ``/ 10000`` (ImageNet); the batch mean of ``ofd_loss`` times these is their term.
OFD_CIFAR_WEIGHT = 1e-3


OFD_IMAGENET_WEIGHT = 1e-4


# Below this probability of a negative pre-ReLU value the margin falls back to -3 s.
_CDF_FLOOR = 0.001


def ofd_margin(bn_scale: jax.typing.ArrayLike, bn_bias: jax.typing.ArrayLike) -> jax.Array:
  r"""OFD's per-channel margin: the expected negative pre-ReLU response of the teacher.

  .. math::
    m_c = \begin{cases}
      \mu_c - \sigma_c \dfrac{\varphi(\mu_c / \sigma_c)}{\Phi(-\mu_c / \sigma_c)}
        & \Phi(-\mu_c / \sigma_c) > 0.001 \\
      -3 \sigma_c & \text{otherwise}
    \end{cases}

  with ``sigma_c = |gamma_c|`` and ``mu_c = beta_c`` the scale and bias of the teacher's
  batch normalisation right before the ReLU at the distilled position: if the BN output of
  channel ``c`` is ``N(mu_c, sigma_c**2)``, the first case is ``E[x | x < 0]``. This is
  the authors' ``get_margin_from_BN`` (which takes ``abs`` of the scale, as here). They
  would divide by zero for a zero scale; here a zero scale gives the limit
  ``min(beta_c, 0)``. The margin is a constant of the teacher: compute it once, outside the
  gradient.

  Args:
    bn_scale: ``[C]`` BN scale ``gamma`` (Flax ``BatchNorm``'s ``scale``; any float dtype,
      computed in >= float32).
    bn_bias: ``[C]`` BN bias ``beta``, same shape.

  Returns:
    ``[C]`` float32 (float64 for float64 inputs) margins, all ``<= 0``.

  References:
    Heo et al., `A Comprehensive Overhaul of Feature Distillation
    <https://arxiv.org/abs/1904.01866>`_, ICCV 2019.
  """
  scale = jnp.abs(upcast(bn_scale))
  bias = upcast(bn_bias)
  if scale.shape != bias.shape:
    raise ValueError(f'bn_scale shape {scale.shape} and bn_bias shape {bias.shape} differ; '
                     'pass the scale and bias of the same BatchNorm.')
  dtype = jnp.promote_types(scale.dtype, bias.dtype)
  scale, bias = scale.astype(dtype), bias.astype(dtype)
  positive = scale > 0
  ratio = bias / jnp.where(positive, scale, 1.0)
  cdf = norm.cdf(-ratio)
  truncated = positive & (cdf > _CDF_FLOOR)
  expected = bias - scale * jnp.exp(-0.5 * ratio**2) / math.sqrt(2 * math.pi) / jnp.where(
      truncated, cdf, 1.0)
  return jnp.where(truncated, expected,
                   jnp.where(positive, -3.0 * scale, jnp.minimum(bias, 0.0)))


def ofd_loss(
    student_features: jax.typing.ArrayLike,
    teacher_features: jax.typing.ArrayLike,
    *,
    margin: jax.typing.ArrayLike,
) -> jax.Array:
  r"""OFD partial L2 distance to the margin-clipped teacher, per example.

  .. math::
    \hat t = \max(t, m),\qquad
    \ell_b = \sum_{h,w,c} \mathbb 1\left[s_{b,h,w,c} > \hat t_{b,h,w,c}
      \ \lor\ \hat t_{b,h,w,c} > 0\right] \left(s_{b,h,w,c} - \hat t_{b,h,w,c}\right)^2

  ``s`` is the student's pre-ReLU feature after the connector (a 1x1 convolution + BN,
  trained with the student and living in the term) and ``t`` the teacher's pre-ReLU
  feature. Where the clipped teacher is negative (the ReLU would zero it) a student that is
  lower still is not penalised. ``m`` is :func:`ofd_margin`, per channel.

  This is the authors' ``distillation_loss`` restricted to one example: their sum over the
  whole batch, so the batch mean of this loss is their sum divided by the batch size. Their
  training scripts then divide by 1000 on CIFAR-100 (:data:`OFD_CIFAR_WEIGHT`) and by 10000
  on ImageNet (:data:`OFD_IMAGENET_WEIGHT`); with ``n`` distilled stages, stage ``i``
  (0-based, shallowest first) is weighed ``1 / 2**(n - 1 - i)``, so the deepest weighs 1.
  mdistiller's OFD writes the same mask as three cases, reduces with
  ``.mean(dim=0).sum()`` (the same per-example sum, batch-averaged) and uses
  ``FEAT_WEIGHT = 0.001``; where the teacher's map is larger than the student's it
  adaptively average-pools the clipped teacher, ``max(t, m)``, to the student's size, and
  so does this function (before Hardening II a larger teacher map was refused).

  Args:
    student_features: ``[B, H, W, C]`` connector output (NHWC; any float dtype, computed in
      >= float32).
    teacher_features: ``[B, H', W', C]`` teacher pre-ReLU features, ``H' >= H`` and
      ``W' >= W`` (pooled to ``H x W`` after clipping at the margin). Gradients
      flow into them too; wrap them in ``jax.lax.stop_gradient`` (as the authors do) if
      the teacher must not be trained.
    margin: ``[C]`` (or scalar) per-channel margin, usually :func:`ofd_margin`.

  Returns:
    ``[B]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Heo et al., `A Comprehensive Overhaul of Feature Distillation
    <https://arxiv.org/abs/1904.01866>`_, ICCV 2019.
  """
  student_features = upcast(student_features)
  teacher_features = upcast(teacher_features)
  margin = upcast(margin)
  if student_features.shape != teacher_features.shape and (
      student_features.ndim != 4 or teacher_features.ndim != 4 or
      student_features.shape[::3] != teacher_features.shape[::3] or
      any(s > t for s, t in zip(student_features.shape[1:3], teacher_features.shape[1:3]))):
    raise ValueError(
        f'student_features shape {student_features.shape} and teacher_features shape '
        f'{teacher_features.shape} differ; map the student features to the teacher\'s '
        'channels (the connector) and pool the student to the teacher\'s size where it is '
        'larger (a larger teacher map is pooled here).')
  if student_features.ndim < 2:
    raise ValueError(f'student_features must be [batch, ..., channels], got shape '
                     f'{student_features.shape}.')
  channels = student_features.shape[-1]
  if margin.ndim > 1 or margin.size not in (1, channels):
    raise ValueError(
        f'margin shape {margin.shape} must be [{channels}] (one per channel) or a scalar.')
  dtype = jnp.promote_types(jnp.promote_types(student_features.dtype, teacher_features.dtype),
                            margin.dtype)
  student = student_features.astype(dtype)
  target = jnp.maximum(teacher_features.astype(dtype), margin.astype(dtype))
  if target.shape != student.shape:  # mdistiller: clip at the margin, then pool down
    target = pool_teacher_down(target, student.shape)
  # Negated so that a NaN on either side is counted (and shows) rather than masked.
  counted = ~((student <= target) & (target <= 0))
  squared = jnp.where(counted, jnp.square(student - target), 0.0)
  return jnp.sum(squared.reshape(squared.shape[0], -1), axis=-1)


@dataclasses.dataclass(frozen=True)
class OFD(ProjectedMaps):
  """Overhaul of feature distillation (Heo et al. 2019, `ofd_loss`): the student's pre-ReLU
  maps through a connector (1x1 convolution + BatchNorm on the batch's statistics) match the
  teacher's pre-ReLU maps clipped from below at a per-channel margin, by a partial L2 that
  ignores what the ReLU would zero anyway; tap pair i of n is weighted 1 / 2^(n-1-i).

  The margin is the expected value of the teacher's negative responses, from its
  BatchNorm's scale and bias (`ofd_margin`) at the modules `teacher_bns` (one per tap, e.g.
  the last block's `bn2` of a ResNet stage); with `teacher_bns=()` (a teacher without
  BatchNorm, like LeNet-5) the same formula reads the per-channel mean and standard
  deviation of the teacher's maps in the (global) batch. A student map larger than the
  teacher's is average-pooled onto it before the connector; a teacher map larger than the
  student's is clipped at the margin and then pooled down (`ofd_loss`, as mdistiller does; it
  was refused before Hardening II).
  """

  student_taps: tuple[str, ...] = ('conv1', 'conv2')
  teacher_taps: tuple[str, ...] = ('conv1', 'conv2')
  teacher_bns: tuple[str, ...] = ()

  name = 'ofd'
  # CIFAR: the batch sum / 1000 (OFD_CIFAR_WEIGHT), on pre-ReLU maps.
  paper = Paper('Heo et al. 2019, A Comprehensive Overhaul of Feature Distillation',
                'https://arxiv.org/abs/1904.01866', weight=1e-3, ce_weight=1.0)
  batch_statistics = True  # the connector's BatchNorm (and the margin without teacher_bns)

  def __post_init__(self):
    super().__post_init__()
    if self.teacher_bns and len(self.teacher_bns) != len(self.teacher_taps):
      raise ValueError(f'ofd needs one teacher_bns path per teacher tap, got '
                       f'{list(self.teacher_bns)} for {list(self.teacher_taps)}.')

  def init_pair(self, key, c_in, c_out):
    return conv_batch_norm_init(key, c_in, c_out)

  def _margin(self, i: int, teacher: jax.Array, teacher_outputs, axis_name) -> jax.Array:
    if self.teacher_bns:
      flat = paths.flatten((teacher_outputs.variables or {}).get('params', {}))
      bn = self.teacher_bns[i]
      if f'{bn}/scale' not in flat:
        names = sorted({p.rsplit('/', 1)[0] for p in flat if p.endswith('/scale')})
        raise ValueError(f'ofd: no BatchNorm at teacher_bns path {bn!r}; BatchNorm modules: '
                         f'{names}.')
      return ofd_margin(flat[f'{bn}/scale'], flat[f'{bn}/bias'])
    mean = jnp.mean(teacher, axis=(0, 1, 2))
    mean_sq = jnp.mean(teacher * teacher, axis=(0, 1, 2))
    if axis_name is not None:
      mean, mean_sq = jax.lax.pmean((mean, mean_sq), axis_name)
    return ofd_margin(jnp.sqrt(jnp.maximum(mean_sq - mean * mean, 0.0) + BN_EPS), mean)

  def pair_loss(self, student, teacher, params, teacher_outputs, axis_name):
    n, total = len(student), 0.0
    for i, (s, t, tap) in enumerate(zip(student, teacher, self.student_taps)):
      p = params[f'pair{i}']
      connected = conv1x1_batch_norm(pool_student_down(s, t.shape, self.name, tap),
                                     p['conv']['kernel'], p['bn_scale'], p['bn_bias'],
                                     axis_name)
      margin = jax.lax.stop_gradient(self._margin(i, t, teacher_outputs, axis_name))
      margin = computed_once(margin)
      total = total + ofd_loss(connected, t, margin=margin) / 2 ** (n - 1 - i)
    return total
