"""Feature-map terms: statistics of student and teacher feature maps matched pair by pair (NST,
ICKD, FSP), and the regressors that predict the teacher's maps from the student's (VID, OFD).

Each term pairs `student_taps[i]` with `teacher_taps[i]` (module paths, see
`jaxkd.models.feature_paths`). Trainable projectors (1x1 convolutions) live in the term's
parameters beside the student's, never inside them.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd import paths
from jaxkd.losses.feature.attention import _pool_to
from jaxkd.losses.feature.overhaul import ofd_loss, ofd_margin
from jaxkd.losses.feature.statistics import fsp_loss, ickd_loss, nst_loss
from jaxkd.losses.feature.variational import vid_log_scale_init, vid_loss
from jaxkd.losses.projectors import (BN_EPS, computed_once, conv1x1, conv1x1_batch_norm,
                                     conv1x1_init)
from jaxkd.losses.terms import Term, combine_teachers

def _pool_onto(student: jax.Array, teacher_shape, term: str, tap: str) -> jax.Array:
  """The student's NHWC map average-pooled to the teacher's height and width."""
  (sh, sw), (th, tw) = student.shape[1:3], teacher_shape[1:3]
  if sh % th or sw % tw:
    raise ValueError(f'{term}: the student feature at {tap!r} is {sh}x{sw}, the teacher\'s '
                     f'{th}x{tw}; the student must be an integer multiple of the teacher. '
                     'Tap other paths.')
  return _pool_to(student, (th, tw))


@dataclasses.dataclass(frozen=True)
class _MapPairs(Term):
  """Pairs `student_taps[i]` with `teacher_taps[i]`; NHWC maps; several teachers summed with
  `teacher_weights`."""

  student_taps: tuple[str, ...] = ('pool1', 'pool2')
  teacher_taps: tuple[str, ...] = ('pool1', 'pool2')
  teacher_weights: tuple[float, ...] | None = None

  def __post_init__(self):
    if len(self.student_taps) != len(self.teacher_taps) or not self.student_taps:
      raise ValueError(f'{self.name} pairs student_taps with teacher_taps one to one, got '
                       f'{list(self.student_taps)} and {list(self.teacher_taps)}.')

  def maps(self, outputs, taps) -> list[jax.Array]:
    found = [outputs.features[tap].astype(jnp.float32) for tap in taps]
    for tap, x in zip(taps, found):
      if x.ndim != 4:
        raise ValueError(f'{self.name} reads NHWC feature maps; the output at {tap!r} has shape '
                         f'{x.shape}. Tap a convolutional stage.')
    return found

  def pair_loss(self, student: list, teacher: list, params, teacher_outputs, axis_name):
    raise NotImplementedError

  def __call__(self, student, teachers, batch, *, step, key, params, state, axis_name):
    del batch, step, key
    ours = self.maps(student, self.student_taps)
    per_teacher = [self.pair_loss(ours, self.maps(t, self.teacher_taps), params, t, axis_name)
                   for t in teachers]
    return (*combine_teachers(self.teacher_weights, per_teacher), state)


@dataclasses.dataclass(frozen=True)
class NST(_MapPairs):
  """Neural selectivity transfer (Huang & Wang 2017, `nst_loss`): squared MMD with a
  degree-2 polynomial kernel between the channels' normalised spatial activations, summed
  over the tap pairs. No parameters; channel counts may differ."""

  name = 'nst'

  def pair_loss(self, student, teacher, params, teacher_outputs, axis_name):
    return sum(nst_loss(s, t) for s, t in zip(student, teacher))


@dataclasses.dataclass(frozen=True)
class _Projected(_MapPairs):
  """A map term whose student maps go through a trainable 1x1 convolution onto the teacher's
  channels (after pooling onto the teacher's size); one projector per tap pair."""

  owns_params = True

  def init(self, key, student, teachers):
    if not teachers:
      raise ValueError(f'{self.name} needs a teacher to size its projectors.')
    params = {}
    for i, (s_tap, t_tap) in enumerate(zip(self.student_taps, self.teacher_taps)):
      c_in = student.features[s_tap].shape[-1]
      c_out = teachers[0].features[t_tap].shape[-1]
      params[f'pair{i}'] = self.init_pair(jax.random.fold_in(key, i), c_in, c_out)
    return params, {}

  def init_pair(self, key, c_in: int, c_out: int) -> dict:
    return conv1x1_init(key, c_in, c_out)

  def projected(self, student, teacher, params) -> list[jax.Array]:
    return [conv1x1(_pool_onto(s, t.shape, self.name, tap), params[f'pair{i}'])
            for i, (s, t, tap) in enumerate(zip(student, teacher, self.student_taps))]


@dataclasses.dataclass(frozen=True)
class ICKD(_Projected):
  """Inter-channel correlation KD (Liu et al. 2021, `ickd_loss`): the student's map, projected
  onto the teacher's channels by a 1x1 convolution, matches the teacher's channel-correlation
  (Gram) matrix; summed over the tap pairs. The authors' embedding adds a BatchNorm after the
  convolution; the convolution alone is used here."""

  student_taps: tuple[str, ...] = ('pool2',)
  teacher_taps: tuple[str, ...] = ('pool2',)

  name = 'ickd'

  def pair_loss(self, student, teacher, params, teacher_outputs, axis_name):
    return sum(ickd_loss(s, t) for s, t in zip(self.projected(student, teacher, params), teacher))


@dataclasses.dataclass(frozen=True)
class FSP(_Projected):
  """Flow of solution procedure (Yim et al. 2017, `fsp_loss`): the FSP matrices between
  consecutive taps (`taps[i]`, `taps[i+1]`) of each side, matched by mean squared error and
  summed over the pairs. FSP needs equal channel counts on both sides; where they differ the
  student's maps are first projected by 1x1 convolutions (trained with it)."""

  name = 'fsp'

  def __post_init__(self):
    super().__post_init__()
    if len(self.student_taps) < 2:
      raise ValueError(f'fsp relates consecutive taps and needs at least 2, got '
                       f'{list(self.student_taps)}.')

  def pair_loss(self, student, teacher, params, teacher_outputs, axis_name):
    student = self.projected(student, teacher, params)
    return fsp_loss(list(zip(student, student[1:])), list(zip(teacher, teacher[1:])))


@dataclasses.dataclass(frozen=True)
class VID(_Projected):
  """Variational information distillation (Ahn et al. 2019, `vid_loss`): a regressor (three 1x1
  convolutions, ReLUs between, no bias) predicts the mean of a Gaussian over each teacher
  map, with a trainable per-channel variance (`initial_variance` at the start); the negative
  log-likelihood is summed over the tap pairs."""

  initial_variance: float = 5.0
  min_variance: float = 1e-5

  name = 'vid'

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
      x = _pool_onto(s, t.shape, self.name, tap)
      hidden = computed_once(jax.nn.relu(conv1x1(x, p['conv1'])))
      hidden = computed_once(jax.nn.relu(conv1x1(hidden, p['conv2'])))
      mean = conv1x1(hidden, p['conv3'])
      total = total + vid_loss(mean, t, log_scale=p['log_scale'],
                               min_variance=self.min_variance)
    return total


@dataclasses.dataclass(frozen=True)
class OFD(_Projected):
  """Overhaul of feature distillation (Heo et al. 2019, `ofd_loss`): the student's pre-ReLU
  maps through a connector (1x1 convolution + BatchNorm on the batch's statistics) match the
  teacher's pre-ReLU maps clipped from below at a per-channel margin, by a partial L2 that
  ignores what the ReLU would zero anyway; tap pair i of n is weighted 1 / 2^(n-1-i).

  The margin is the expected value of the teacher's negative responses, from its
  BatchNorm's scale and bias (`ofd_margin`) at the modules `teacher_bns` (one per tap, e.g.
  the last block's `bn2` of a ResNet stage); with `teacher_bns=()` (a teacher without
  BatchNorm, like LeNet-5) the same formula reads the per-channel mean and standard
  deviation of the teacher's maps in the (global) batch.
  """

  student_taps: tuple[str, ...] = ('conv1', 'conv2')
  teacher_taps: tuple[str, ...] = ('conv1', 'conv2')
  teacher_bns: tuple[str, ...] = ()

  name = 'ofd'

  def __post_init__(self):
    super().__post_init__()
    if self.teacher_bns and len(self.teacher_bns) != len(self.teacher_taps):
      raise ValueError(f'ofd needs one teacher_bns path per teacher tap, got '
                       f'{list(self.teacher_bns)} for {list(self.teacher_taps)}.')

  def init_pair(self, key, c_in, c_out):
    return {'conv': conv1x1_init(key, c_in, c_out, bias=False),
            'bn_scale': jnp.ones((c_out,), jnp.float32),
            'bn_bias': jnp.zeros((c_out,), jnp.float32)}

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
      connected = conv1x1_batch_norm(_pool_onto(s, t.shape, self.name, tap),
                                     p['conv']['kernel'], p['bn_scale'], p['bn_bias'],
                                     axis_name)
      margin = jax.lax.stop_gradient(self._margin(i, t, teacher_outputs, axis_name))
      margin = computed_once(margin)
      total = total + ofd_loss(connected, t, margin=margin) / 2 ** (n - 1 - i)
    return total
