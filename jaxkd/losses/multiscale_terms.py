"""Terms that combine scales: ReviewKD (each student stage fused with the deeper ones before
it is compared with the teacher's) and SDD (the classifier applied to multi-scale cells)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd import paths
from jaxkd.losses.feature.review import abf_combine, hcl_loss, nearest_upsample
from jaxkd.losses.feature.scale_decoupled import multiscale_pooled_features, sdd_loss
from jaxkd.losses.projectors import (batch_norm, computed_once, conv1x1, conv1x1_batch_norm,
                                     conv1x1_init, conv3x3)
from jaxkd.losses.terms import OneTap, Term, combine_teachers, validated


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
  owns_params = True

  def __post_init__(self):
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

  def __call__(self, student, teachers, batch, *, step, key, params, state, axis_name):
    del batch, step, key
    per_teacher = []
    for teacher in teachers:
      targets = [teacher.features[t].astype(jnp.float32) for t in self.teacher_taps]
      fused = self.fused(student, [t.shape for t in targets], params, axis_name)
      per_teacher.append(hcl_loss(fused, targets))
    return (*combine_teachers(self.teacher_weights, per_teacher), state)


def _classify(outputs, tap: str, head: str, scales, who: str) -> jax.Array:
  """The model's linear classifier (`head/kernel`, `head/bias`) on every cell: `[B, N, K]`."""
  cells = multiscale_pooled_features(outputs.features[tap].astype(jnp.float32), scales=scales)
  flat = paths.flatten((outputs.variables or {}).get('params', {}))
  kernel, bias = flat.get(f'{head}/kernel'), flat.get(f'{head}/bias')
  if kernel is None or kernel.shape[0] != cells.shape[-1]:
    raise ValueError(
        f'sdd applies the {who}\'s classifier {head!r} to pooled cells of {tap!r} '
        f'({cells.shape[-1]} channels), but its kernel is '
        f'{None if kernel is None else kernel.shape}: SDD needs a model whose classifier '
        'reads the global average of that map (ResNet/WRN: the last stage).')
  return jnp.einsum('bnc,ck->bnk', cells, kernel.astype(jnp.float32)) + bias


@dataclasses.dataclass(frozen=True)
class SDD(OneTap, Term):
  """Scale decoupled distillation (Wei et al. 2024, `sdd_loss`): the last stage's map pooled
  into cells at `scales` (1, 2, 4: the global average, a 2x2 and a 4x4 grid), each cell
  classified by the model's own classifier (`head`; the student's trained through it), KD at
  `temperature` on every cell, cells where the teacher's local prediction disagrees in
  correctness with its global one weighted by `complementary_weight`. Needs a classifier on
  the global average of the tapped map (ResNet, WRN), labels and a live teacher."""

  student_tap: str = 'stage3'
  teacher_tap: str = 'stage3'
  temperature: float = 4.0
  complementary_weight: float = 2.0
  scales: tuple[int, ...] = (1, 2, 4)
  head: str = 'head'
  teacher_weights: tuple[float, ...] | None = None

  name = 'sdd'
  needs_labels = True

  def __post_init__(self):
    validated('temperature', self.temperature, positive=True)
    validated('complementary_weight', self.complementary_weight, positive=False)
    if not self.scales or self.scales[0] != 1:
      raise ValueError(f'sdd scales must start with 1 (the global cell), got {self.scales}.')

  def hyperparams(self, step, params=None):
    del step, params
    return {'temperature': jnp.asarray(self.temperature, jnp.float32)}

  def __call__(self, student, teachers, batch, *, step, key, params, state, axis_name):
    del step, key, params, axis_name
    local = _classify(student, self.student_tap, self.head, self.scales, 'student')
    per_teacher = [sdd_loss(local, _classify(t, self.teacher_tap, self.head, self.scales,
                                             'teacher'), batch['label'],
                            temperature=self.temperature,
                            complementary_weight=self.complementary_weight) for t in teachers]
    return (*combine_teachers(self.teacher_weights, per_teacher), state)
