"""Contrastive representation distillation (Tian et al. 2020): embeddings contrasted
against two memory banks by NCE."""
from __future__ import annotations

import dataclasses
import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.losses.memory_bank import (build_class_index_table, check_memory_bank_fits,
                                      init_memory_bank, sample_contrast_indices,
                                      sample_other_class_contrast_indices, update_memory_bank)
from jaxkd.losses.memory_bank import ClassIndexTable
from jaxkd.losses.nce import (CRD_EMBED_DIM, CRD_MOMENTUM, CRD_NUM_NEGATIVES, CRD_TEMPERATURE,
                              UNSET_NORMALISER, contrast_scores, nce_loss, normalise_scores,
                              resolve, safe_l2_normalise)
from jaxkd.losses.numerics import PRECISION, upcast
from jaxkd.losses.projectors import conv1x1_init
from jaxkd.losses.terms import OneTap, Paper, Term, gather, one_of, setting, whole, within

# How negatives are drawn: from examples of other classes (the authors' CIFAR-100 and
# ImageNet scripts, `is_sample=True`, `mode='exact'`), or uniformly from the whole bank.
CRD_SAMPLING = ('other_class', 'uniform')


def crd_embed(
    features: jax.typing.ArrayLike,
    kernel: jax.typing.ArrayLike,
    bias: jax.typing.ArrayLike,
) -> jax.Array:
  r"""The CRD embedding head: flatten, linear map, L2-normalise, per example.

  .. math::
    g_b = \frac{W^\top \mathrm{vec}(f_b) + c}{\|W^\top \mathrm{vec}(f_b) + c\|_2}

  the authors' ``Embed`` (``nn.Linear`` then ``Normalize(2)``). Their ``Normalize`` has
  no floor on the norm, so an all-zero pre-activation gives NaN there; here it gives the
  zero embedding with a zero (not NaN) gradient. ``kernel`` is stored input-major
  (``[D, d]``, as Flax's ``Dense``), the transpose of ``nn.Linear.weight``.

  Args:
    features: ``[B, ...]`` features (any float dtype; computed in >= float32); the
      non-batch axes are flattened to ``D`` entries (the authors use the pooled
      penultimate features, ``[B, C]``).
    kernel: ``[D, d]`` weights of the linear map (``d`` = 128 in the authors' code).
    bias: ``[d]`` bias.

  Returns:
    ``[B, d]`` float32 (float64 for float64 inputs) unit-norm embeddings.

  References:
    Tian, Krishnan & Isola, `Contrastive Representation Distillation
    <https://arxiv.org/abs/1910.10699>`_, ICLR 2020.
  """
  features = upcast(features)
  kernel = upcast(kernel)
  bias = upcast(bias)
  if features.ndim < 1:
    raise ValueError('features must have a batch axis, got a scalar.')
  flat = features.reshape(features.shape[0], -1)
  if kernel.ndim != 2 or kernel.shape[0] != flat.shape[1] or bias.shape != kernel.shape[1:]:
    raise ValueError(
        f'features shape {features.shape} flattens to {flat.shape[1]} entries per example, '
        f'so kernel must be [{flat.shape[1]}, d] and bias [d]; got kernel {kernel.shape} '
        f'and bias {bias.shape}.')
  dtype = jnp.promote_types(jnp.promote_types(flat.dtype, kernel.dtype), bias.dtype)
  projected = jnp.matmul(flat.astype(dtype), kernel.astype(dtype), precision=PRECISION)
  projected = projected + bias.astype(dtype)
  return safe_l2_normalise(projected)


def crd_loss_with_normalisers(
    student_embeddings: jax.typing.ArrayLike,
    teacher_embeddings: jax.typing.ArrayLike,
    student_bank: jax.typing.ArrayLike,
    teacher_bank: jax.typing.ArrayLike,
    contrast_indices: jax.typing.ArrayLike,
    student_normaliser: jax.typing.ArrayLike,
    teacher_normaliser: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""The CRD loss per example, and the two normalisers it used (to store in state).

  Both halves of the authors' ``CRDLoss``, summed:

  .. math::
    \ell_b = \mathrm{NCE}\!\left(\frac{\exp(\langle M^t_{i_{b,:}}, g^s_b\rangle / T)}
                                      {Z^s}\right)
           + \mathrm{NCE}\!\left(\frac{\exp(\langle M^s_{i_{b,:}}, g^t_b\rangle / T)}
                                      {Z^t}\right)

  The *student's* embeddings are scored against the *teacher's* bank and normalised by
  ``Z^s`` (their ``out_v1 = exp(bmm(weight_v2, v1) / T) / Z_v1`` with ``v1 = f_s`` and
  ``memory_v2`` the bank written with teacher embeddings); the *teacher's* embeddings
  are scored against the *student's* bank and normalised by ``Z^t`` (``out_v2``,
  ``Z_v2``). ``N`` is the number of bank rows. A normaliser ``<= 0``
  (:data:`UNSET_NORMALISER`) is replaced by this batch's :func:`estimate_normaliser` of
  the scores it normalises, as the authors do on their first batch; keep the returned
  values in state. Score before
  :func:`~jaxkd.losses.memory_bank.update_memory_bank`, as the authors do.

  Args:
    student_embeddings: ``[B, d]`` unit-norm student embeddings (:func:`crd_embed`).
    teacher_embeddings: ``[B, d]`` unit-norm teacher embeddings. Gradients flow into
      both (the teacher's embedding head is trained too).
    student_bank: ``[N, d]`` bank of past student embeddings (no gradient).
    teacher_bank: ``[N, d]`` bank of past teacher embeddings (no gradient).
    contrast_indices: ``[B, K + 1]`` rows, positive first
      (:func:`~jaxkd.losses.memory_bank.sample_contrast_indices`), the same
      for both halves.
    student_normaliser: ``[]`` ``Z^s`` for the student-embedding scores, or ``<= 0``.
    teacher_normaliser: ``[]`` ``Z^t`` for the teacher-embedding scores, or ``<= 0``.
    temperature: ``T > 0`` (0.07 in the authors' code).

  Returns:
    ``([B] loss, [] Z^s, [] Z^t)``, the loss float32 (float64 for float64 inputs).

  References:
    Tian, Krishnan & Isola, `Contrastive Representation Distillation
    <https://arxiv.org/abs/1910.10699>`_, ICLR 2020.
  """
  student_bank = jnp.asarray(student_bank)
  teacher_bank = jnp.asarray(teacher_bank)
  if student_bank.shape != teacher_bank.shape:
    raise ValueError(
        f'student_bank shape {student_bank.shape} and teacher_bank shape '
        f'{teacher_bank.shape} differ; both are [num_data, embed_dim].')
  num_data = student_bank.shape[0]
  student_scores = contrast_scores(teacher_bank, contrast_indices, student_embeddings,
                                   temperature=temperature)
  teacher_scores = contrast_scores(student_bank, contrast_indices, teacher_embeddings,
                                   temperature=temperature)
  z_s = resolve(student_normaliser, student_scores, num_data)
  z_t = resolve(teacher_normaliser, teacher_scores, num_data)
  loss = (nce_loss(normalise_scores(student_scores, z_s), num_data=num_data) +
          nce_loss(normalise_scores(teacher_scores, z_t), num_data=num_data))
  return loss, z_s, z_t


def crd_loss(student_embeddings: jax.typing.ArrayLike, teacher_embeddings: jax.typing.ArrayLike,
             student_bank: jax.typing.ArrayLike, teacher_bank: jax.typing.ArrayLike,
             contrast_indices: jax.typing.ArrayLike, student_normaliser: jax.typing.ArrayLike,
             teacher_normaliser: jax.typing.ArrayLike, *,
             temperature: jax.typing.ArrayLike) -> jax.Array:
  r"""The CRD loss per example: student-side plus teacher-side NCE.

  :func:`crd_loss_with_normalisers` without the normalisers: the student's embeddings
  against the teacher's bank (normalised by ``student_normaliser``) plus the teacher's
  embeddings against the student's bank (``teacher_normaliser``). Its batch mean equals
  the authors' ``CRDLoss`` value.

  Args: as for :func:`crd_loss_with_normalisers`.

  Returns:
    ``[B]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Tian, Krishnan & Isola, `Contrastive Representation Distillation
    <https://arxiv.org/abs/1910.10699>`_, ICLR 2020.
  """
  loss, _, _ = crd_loss_with_normalisers(
      student_embeddings, teacher_embeddings, student_bank, teacher_bank, contrast_indices,
      student_normaliser, teacher_normaliser, temperature=temperature)
  return loss


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
  `sampling` names how the `num_negatives` negatives are drawn. 'other_class' (the default,
  the authors' CIFAR-100 and ImageNet scripts: `CIFAR100InstanceSample(is_sample=True,
  mode='exact')`) draws them from the examples whose label differs from the anchor's, which
  needs every training example's label (`train_labels`, filled in by the recipes like
  `num_data`); 'uniform' draws them from the whole bank (the authors' `ContrastMemory`
  without `contrast_idx`), so a negative may share the anchor's class, or be the anchor.
  Draws are with replacement; the authors' CIFAR data set draws without replacement when
  there are enough other-class examples (16384 of 49500), so a few of its draws repeat here.
  More negatives than there are rows to draw them from (the whole bank, or the fewest
  other-class rows of any class) are refused. 'other_class' became the default in Hardening
  II: runs that leave `sampling` out draw other negatives than before.
  """

  student_tap: str = 'dense2'
  teacher_tap: str = 'dense2'
  embed_dim: int = setting(CRD_EMBED_DIM, whole(1))
  num_negatives: int = setting(CRD_NUM_NEGATIVES, whole(1))
  temperature: float = CRD_TEMPERATURE
  momentum: float = setting(CRD_MOMENTUM, within(0, 1))
  num_data: int = setting(0, whole(0))  # 0: the training split's size
  sampling: str = setting('other_class', one_of(CRD_SAMPLING))
  train_labels: tuple[int, ...] | None = None

  name = 'crd'
  family = 'contrastive'
  # RepDistiller train_student.py: weight 0.8 (-b), 128 dimensions, 16384 negatives,
  # T 0.07, momentum 0.5, the penultimate layer.
  paper = Paper('Tian et al. 2020, Contrastive Representation Distillation',
                'https://arxiv.org/abs/1910.10699', weight=0.8, ce_weight=1.0)
  from_run = ('num_data', 'train_labels')
  per_example = False
  owns_params = True
  owns_state = True
  needs_index = True

  def __post_init__(self):
    super().__post_init__()
    if self.train_labels is not None:  # an array from the recipe; held as a (hashable) tuple
      object.__setattr__(self, 'train_labels', tuple(np.asarray(self.train_labels).tolist()))
      if self.num_data and len(self.train_labels) != self.num_data:
        raise ValueError(f'crd train_labels has {len(self.train_labels)} labels for '
                         f'num_data={self.num_data} bank rows; pass one label per example.')
    self._check_negatives()

  def _check_negatives(self) -> None:
    """Refuses more negatives per example than there are rows to draw them from."""
    if self.sampling == 'other_class' and self.train_labels is not None:
      counts = np.bincount(np.asarray(self.train_labels, np.int64))
      rows = len(self.train_labels) - int(counts.max())
      where = (f'as few as {rows} rows of other classes (class {int(counts.argmax())} has '
               f'{int(counts.max())} of the {len(self.train_labels)} rows)')
    elif self.num_data:
      rows, where = self.num_data, f'a bank of num_data={self.num_data} rows'
    else:
      return
    if self.num_negatives > rows:
      raise ValueError(f'crd draws num_negatives={self.num_negatives} negatives per example '
                       f'from {where} (sampling={self.sampling!r}); pass num_negatives <= '
                       f'{rows}.')

  def describe(self) -> dict:
    """As `Term.describe`, with the training labels by count and SHA-256, not one by one."""
    description = super().describe()
    if self.train_labels is not None:
      labels = np.asarray(self.train_labels, np.int64)
      description['train_labels'] = {'count': int(labels.size),
                                     'sha256': hashlib.sha256(labels.tobytes()).hexdigest()}
    return description

  def init(self, key, student, teachers):
    if not self.num_data:
      raise ValueError('crd needs num_data, the number of training examples (one memory-bank '
                       'row each); the recipes set it from the training split.')
    if len(teachers) != 1:
      raise ValueError(f'crd contrasts with one teacher, got {len(teachers)}.')
    check_memory_bank_fits(self.num_data, self.embed_dim)
    keys = jax.random.split(key, 5)
    params, state = {}, {}
    if self.sampling == 'other_class':
      if self.train_labels is None:
        raise ValueError("crd sampling='other_class' (the authors') draws negatives from other "
                         'classes and needs train_labels, the label of every training example '
                         "(the recipes set it); pass them, or sampling='uniform'.")
      state['classes'] = build_class_index_table(np.asarray(self.train_labels))._asdict()
      state['labels'] = jnp.asarray(self.train_labels, jnp.int32)
    for i, (side, outputs, tap) in enumerate((('student', student, self.student_tap),
                                              ('teacher', teachers[0], self.teacher_tap))):
      fan_in = math.prod(outputs.features[tap].shape[1:])
      params[f'{side}_head'] = conv1x1_init(keys[i], fan_in, self.embed_dim)
      state[f'{side}_bank'] = init_memory_bank(keys[2 + i], self.num_data, self.embed_dim)
      state[f'{side}_normaliser'] = jnp.asarray(UNSET_NORMALISER, jnp.float32)
    state['key'] = jax.random.key_data(keys[4])
    return params, state

  def contrast_indices(self, state, indices: jax.Array, step) -> jax.Array:
    """``[B, 1 + num_negatives]`` bank rows: each example's own, then its negatives, drawn
    as `sampling` says from the state's key at `step`."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state['key']), step)
    if self.sampling == 'other_class':  # the anchor's class: its training label, by index
      return sample_other_class_contrast_indices(
          key, indices, state['labels'][indices], ClassIndexTable(**state['classes']),
          num_negatives=self.num_negatives)
    return sample_contrast_indices(key, indices, num_data=self.num_data,
                                   num_negatives=self.num_negatives)

  def __call__(self, ctx):
    # Negatives come from the state's key, not `ctx.key`: the same draw on every device.
    params, state, axis_name = ctx.params, ctx.state, ctx.axis_name
    if ctx.indices is None:
      raise ValueError("crd needs each example's dataset index in the batch (batch['index']); "
                       'the distill recipe adds it, a custom loop must too.')
    (teacher,) = ctx.teachers

    def embed(outputs, tap, head):
      x = outputs.features[tap].astype(jnp.float32)
      return crd_embed(gather(x.reshape(x.shape[0], -1), axis_name), **head)

    s = embed(ctx.student, self.student_tap, params['student_head'])
    t = embed(teacher, self.teacher_tap, params['teacher_head'])
    indices = gather(ctx.indices.astype(jnp.int32), axis_name)
    contrast = self.contrast_indices(state, indices, ctx.step)
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
