"""Variational information distillation (Ahn et al. 2019): Gaussian likelihood of the teacher's
features under a regressor of the student's."""
from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import upcast
from jaxkd.losses.pooling import (common_spatial_shape, pool_student_down, pool_teacher_down,
                                  pool_to)
from jaxkd.losses.projectors import computed_once, conv1x1, conv1x1_init
from jaxkd.losses.terms import Paper, ProjectedMaps


# The authors' floor on the predicted variance (``eps`` of RepDistiller's VIDLoss).
_MIN_VARIANCE = 1e-5


def _check_min_variance(min_variance) -> None:
  """Rejects a Python-number floor <= 0: the variance could then reach 0 and log 0."""
  if isinstance(min_variance, numbers.Real) and not min_variance > 0:
    raise ValueError(
        f'min_variance must be > 0, got {min_variance!r}; the authors use {_MIN_VARIANCE}.')


def vid_log_scale_init(initial_variance: float, *, min_variance: float = _MIN_VARIANCE
                      ) -> float:
  r"""The ``log_scale`` that makes :func:`vid_loss`'s variance start at ``initial_variance``.

  .. math::
    \alpha_0 = \log\left(e^{\sigma_0^2 - \epsilon} - 1\right),\quad\text{so}\quad
    \mathrm{softplus}(\alpha_0) + \epsilon = \sigma_0^2

  The authors (RepDistiller's and mdistiller's VID) fill every channel's ``log_scale`` with
  this value for ``sigma_0**2 = 5`` (``init_pred_var``) and ``eps = 1e-5``.

  Args:
    initial_variance: the starting variance ``sigma_0**2 > min_variance``.
    min_variance: the floor ``eps > 0`` passed to :func:`vid_loss`.

  Returns:
    The initial ``log_scale`` (a Python float) for every channel.
  """
  _check_min_variance(min_variance)
  if not isinstance(initial_variance, numbers.Real) or not initial_variance > min_variance:
    raise ValueError(
        f'initial_variance must be a number > min_variance ({min_variance!r}), got '
        f'{initial_variance!r}; the authors use 5.0.')
  return math.log(math.expm1(initial_variance - min_variance))


def vid_loss(
    predicted_mean: jax.typing.ArrayLike,
    teacher_features: jax.typing.ArrayLike,
    *,
    log_scale: jax.typing.ArrayLike,
    min_variance: float = _MIN_VARIANCE,
) -> jax.Array:
  r"""Variational information distillation loss (negative log-likelihood), per example.

  .. math::
    \sigma_c^2 = \mathrm{softplus}(\alpha_c) + \epsilon,\qquad
    \ell_b = \frac{1}{HWC} \sum_{h,w,c} \frac12 \left(
      \frac{(\mu_{b,h,w,c} - t_{b,h,w,c})^2}{\sigma_c^2} + \log \sigma_c^2 \right)

  The student's features go through a regressor (three 1x1 convolutions with ReLUs between,
  no bias, in the authors' code) whose output ``mu`` is the mean of a Gaussian with
  per-channel variance ``sigma_c**2`` over the teacher's features ``t``; regressor and
  ``alpha`` (``log_scale``, initialised by :func:`vid_log_scale_init`) are trained with the
  student and live in the term. The constant ``log(2 pi) / 2`` is dropped, as by the
  authors. This is their ``torch.mean(neg_log_prob)``: the mean over ``H, W, C`` per
  example, so the batch mean of this loss equals their value (mean over the batch too);
  the paper sums over the entries instead. They sum this over the distilled stages (the
  student's and teacher's intermediate stages) with weight 1 (``-b 1`` in RepDistiller,
  ``FEAT_WEIGHT = 1`` in mdistiller).

  When the spatial sizes differ, the larger map is average-pooled to the smaller one, each
  spatial axis by a whole factor. The authors pool the teacher's target the same way, but
  when the student's map is larger they pool the student's features *before* the
  regressor; since the regressor is non-linear, a term that wants their exact loss pools
  the student's features first (e.g. with
  :func:`jaxkd.losses.pooling.adaptive_avg_pool`) and passes a ``mu`` already at
  the teacher's size.

  Args:
    predicted_mean: ``[B, H, W, C]`` regressor output ``mu`` (NHWC; any float dtype,
      computed in >= float32), ``C`` the teacher's channel count.
    teacher_features: ``[B, H', W', C]`` teacher features, ``H'`` and ``H`` whole multiples
      of each other (likewise ``W``). Gradients flow into them too; wrap them in
      ``jax.lax.stop_gradient`` if the teacher must not be trained.
    log_scale: ``[C]`` (or scalar) pre-softplus variance parameter ``alpha``.
    min_variance: the variance floor ``eps > 0``; the authors' ``1e-5``.

  Returns:
    ``[B]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Ahn et al., `Variational Information Distillation for Knowledge Transfer
    <https://arxiv.org/abs/1904.05835>`_, CVPR 2019.
  """
  _check_min_variance(min_variance)
  predicted_mean = upcast(predicted_mean)
  teacher_features = upcast(teacher_features)
  log_scale = upcast(log_scale)
  for x, name in ((predicted_mean, 'predicted_mean'), (teacher_features, 'teacher_features')):
    if x.ndim < 3:
      raise ValueError(f'{name} must be [batch, *spatial, channels] (NHWC for images), got '
                       f'shape {x.shape}.')
  if (predicted_mean.ndim != teacher_features.ndim or
      predicted_mean.shape[0] != teacher_features.shape[0] or
      predicted_mean.shape[-1] != teacher_features.shape[-1]):
    raise ValueError(
        f'predicted_mean shape {predicted_mean.shape} and teacher_features shape '
        f'{teacher_features.shape} must have the same batch size, number of spatial axes '
        'and channel count (the regressor maps the student to the teacher\'s channels).')
  channels = teacher_features.shape[-1]
  if log_scale.ndim > 1 or log_scale.size not in (1, channels):
    raise ValueError(
        f'log_scale shape {log_scale.shape} must be [{channels}] (one per teacher channel) '
        'or a scalar.')
  spatial = common_spatial_shape(predicted_mean.shape, teacher_features.shape)
  dtype = jnp.promote_types(jnp.promote_types(predicted_mean.dtype, teacher_features.dtype),
                            log_scale.dtype)
  mean = pool_to(predicted_mean.astype(dtype), spatial)
  target = pool_to(teacher_features.astype(dtype), spatial)
  variance = jax.nn.softplus(log_scale.astype(dtype)) + jnp.asarray(min_variance, dtype)
  variance = jnp.broadcast_to(variance, (channels,))
  # Squared errors summed per example and channel first, so the per-channel variance (its
  # softplus and log) is applied to [B, C] sums, not computed again for every element.
  squared = jnp.sum(jnp.square(mean - target).reshape(mean.shape[0], -1, channels), axis=1)
  return 0.5 * (jnp.sum(squared / variance, axis=-1) / mean[0].size +
                jnp.mean(jnp.log(variance)))


@dataclasses.dataclass(frozen=True)
class VID(ProjectedMaps):
  """Variational information distillation (Ahn et al. 2019, `vid_loss`): a regressor (three 1x1
  convolutions, ReLUs between, no bias) predicts the mean of a Gaussian over each teacher
  map, with a trainable per-channel variance (`initial_variance` at the start); the negative
  log-likelihood is summed over the tap pairs. The larger of the two maps is average-pooled
  to the other's size first, the teacher's adaptively, as RepDistiller's ``VIDLoss`` does (a
  larger teacher map was refused before Hardening II)."""

  initial_variance: float = 5.0
  min_variance: float = 1e-5

  name = 'vid'
  # RepDistiller: weight 1, initial variance 5, the intermediate maps.
  paper = Paper('Ahn et al. 2019, Variational Information Distillation for Knowledge Transfer',
                'https://arxiv.org/abs/1904.05835', weight=1.0, ce_weight=1.0)

  def init_pair(self, key, c_in, c_out):
    k1, k2, k3 = jax.random.split(key, 3)
    log_scale = vid_log_scale_init(self.initial_variance, min_variance=self.min_variance)
    return {'conv1': conv1x1_init(k1, c_in, c_out, bias=False),
            'conv2': conv1x1_init(k2, c_out, c_out, bias=False),
            'conv3': conv1x1_init(k3, c_out, c_out, bias=False),
            'log_scale': jnp.full((c_out,), log_scale, jnp.float32)}

  def pair_loss(self, student, teacher, params, teacher_outputs, axis_name):
    total = 0.0
    for i, (s, t, tap) in enumerate(zip(student, teacher, self.student_taps)):
      p = params[f'pair{i}']
      # RepDistiller's VIDLoss pools the larger map down before the regressor, the
      # teacher's adaptively (a larger teacher map was refused before Hardening II).
      x = pool_student_down(s, t.shape, self.name, tap)
      t = pool_teacher_down(t, x.shape)
      hidden = computed_once(jax.nn.relu(conv1x1(x, p['conv1'])))
      hidden = computed_once(jax.nn.relu(conv1x1(hidden, p['conv2'])))
      mean = conv1x1(hidden, p['conv3'])
      total = total + vid_loss(mean, t, log_scale=p['log_scale'],
                               min_variance=self.min_variance)
    return total
