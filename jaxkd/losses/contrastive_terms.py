"""Contrastive representation distillation (CRD) as a term: embedding heads in the term's
parameters, two memory banks in its state, negatives drawn every step."""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxkd.losses.feature.contrastive import (UNSET_NORMALISER, crd_embed,
                                              crd_loss_with_normalisers)
from jaxkd.losses.feature.memory_bank import (check_memory_bank_fits, init_memory_bank,
                                              sample_contrast_indices, update_memory_bank)
from jaxkd.losses.projectors import conv1x1_init
from jaxkd.losses.terms import OneTap, Term, gather, validated


@dataclasses.dataclass(frozen=True)
class CRD(OneTap, Term):
  """Contrastive representation distillation (Tian et al. 2020, `crd_loss`).

  The features at the taps (flattened) go through a linear embedding head on each side (both
  trained with the student) onto the unit sphere in `embed_dim` dimensions. Each side has a
  memory bank of `num_data` x `embed_dim` (one row per training example): the student's
  embedding is contrasted against the teacher bank's row of its own example (the positive)
  and `num_negatives` rows drawn uniformly, and the teacher's against the student bank, by
  the NCE loss at `temperature`; then each bank's rows of the batch move towards the new
  embeddings with `momentum`. The normalising constants are estimated on the first batch and
  kept, as in the authors' code.

  Banks, constants and the sampling key live in the term's state: a resumed run continues
  them exactly. The term relates examples through the banks, so it runs on the global batch
  (gathered over the data axis) and every device applies the same bank update. Each batch
  must carry its examples' dataset indices (`batch['index']`; the recipes add it). The banks
  take 2 x `num_data` x `embed_dim` float32 (56 MB for Fashion-MNIST's 55,000 training
  images at 128 dimensions); one that would not fit on the device is refused when the state
  is built. `num_data` = 0 means "the training split's size", filled in by the recipes.
  Negatives are uniform over the dataset, the authors' sampler without class labels (their
  CIFAR script draws them from other classes only).
  """

  student_tap: str = 'dense2'
  teacher_tap: str = 'dense2'
  embed_dim: int = 128
  num_negatives: int = 16384
  temperature: float = 0.07
  momentum: float = 0.5
  num_data: int = 0

  name = 'crd'
  per_example = False
  owns_params = True
  owns_state = True
  needs_index = True

  def __post_init__(self):
    for setting in ('embed_dim', 'num_negatives'):
      value = getattr(self, setting)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f'crd {setting} must be a positive int, got {value!r}.')
    if not isinstance(self.num_data, int) or self.num_data < 0:
      raise ValueError(f'crd num_data must be an int >= 0 (0: the training split), got '
                       f'{self.num_data!r}.')
    validated('temperature', self.temperature, positive=True)
    if not 0.0 <= self.momentum <= 1.0:
      raise ValueError(f'crd momentum must be in [0, 1], got {self.momentum!r}; the authors '
                       'use 0.5.')

  def init(self, key, student, teachers):
    if not self.num_data:
      raise ValueError('crd needs num_data, the number of training examples (one memory-bank '
                       'row each); the recipes set it from the training split.')
    if len(teachers) != 1:
      raise ValueError(f'crd contrasts with one teacher, got {len(teachers)}.')
    check_memory_bank_fits(self.num_data, self.embed_dim)
    keys = jax.random.split(key, 5)
    params, state = {}, {}
    for i, (side, outputs, tap) in enumerate((('student', student, self.student_tap),
                                              ('teacher', teachers[0], self.teacher_tap))):
      fan_in = math.prod(outputs.features[tap].shape[1:])
      params[f'{side}_head'] = conv1x1_init(keys[i], fan_in, self.embed_dim)
      state[f'{side}_bank'] = init_memory_bank(keys[2 + i], self.num_data, self.embed_dim)
      state[f'{side}_normaliser'] = jnp.asarray(UNSET_NORMALISER, jnp.float32)
    state['key'] = jax.random.key_data(keys[4])
    return params, state

  def __call__(self, student, teachers, batch, *, step, key, params, state, axis_name):
    del key  # negatives come from the state's key: the same draw on every device
    if 'index' not in batch:
      raise ValueError("crd needs each example's dataset index in the batch (batch['index']); "
                       'the distill recipe adds it, a custom loop must too.')
    (teacher,) = teachers

    def embed(outputs, tap, head):
      x = outputs.features[tap].astype(jnp.float32)
      return crd_embed(gather(x.reshape(x.shape[0], -1), axis_name), **head)

    s = embed(student, self.student_tap, params['student_head'])
    t = embed(teacher, self.teacher_tap, params['teacher_head'])
    indices = gather(batch['index'].astype(jnp.int32), axis_name)
    sample_key = jax.random.fold_in(jax.random.wrap_key_data(state['key']), step)
    contrast = sample_contrast_indices(sample_key, indices, num_data=self.num_data,
                                       num_negatives=self.num_negatives)
    loss, z_s, z_t = crd_loss_with_normalisers(
        s, t, state['student_bank'], state['teacher_bank'], contrast,
        state['student_normaliser'], state['teacher_normaliser'], temperature=self.temperature)
    update = lambda bank, e: update_memory_bank(  # noqa: E731
        bank, indices, jax.lax.stop_gradient(e), momentum=self.momentum)
    new_state = {**state, 'student_bank': update(state['student_bank'], s),
                 'teacher_bank': update(state['teacher_bank'], t),
                 'student_normaliser': jax.lax.stop_gradient(z_s),
                 'teacher_normaliser': jax.lax.stop_gradient(z_t)}
    return jnp.mean(loss), {}, new_state
