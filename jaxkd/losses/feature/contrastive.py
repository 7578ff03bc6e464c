"""Contrastive representation distillation (CRD): the NCE loss against memory banks.

Pure functions only: the embedding head, the scores of embeddings against memory-bank
rows, their normalisation and the NCE loss. The banks themselves (allocation, negative
sampling, momentum update) are in :mod:`jaxkd.losses.feature.memory_bank`. A term that
wraps them keeps the two memory banks (and the two normalising constants) in its loss
state, a pytree carried through the jitted step, and the two embedding heads
(``kernel``, ``bias`` of :func:`crd_embed`) in its trainable params. One step, in the
authors' order::

  from jaxkd.losses.feature.contrastive import crd_embed, crd_loss_with_normalisers
  from jaxkd.losses.feature.memory_bank import sample_contrast_indices, update_memory_bank

  s = crd_embed(student_features, *student_head)
  t = crd_embed(teacher_features, *teacher_head)
  idx = sample_contrast_indices(key, indices, num_data=N, num_negatives=K)
  loss, z_s, z_t = crd_loss_with_normalisers(
      s, t, student_bank, teacher_bank, idx, state_z_s, state_z_t, temperature=T)
  student_bank = update_memory_bank(student_bank, indices, s, momentum=m)  # after scoring
  teacher_bank = update_memory_bank(teacher_bank, indices, t, momentum=m)

The authors' defaults (``train_student.py`` of RepDistiller) are the module constants
:data:`CRD_EMBED_DIM`, :data:`CRD_NUM_NEGATIVES`, :data:`CRD_TEMPERATURE` and
:data:`CRD_MOMENTUM`; their CIFAR-100 recipe weights the summed loss by 0.8
(``-b 0.8``) next to cross-entropy with weight 1.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from jaxkd.losses.kd import _upcast

__all__ = [
    'CRD_EMBED_DIM',
    'CRD_MOMENTUM',
    'CRD_NUM_NEGATIVES',
    'CRD_TEMPERATURE',
    'UNSET_NORMALISER',
    'contrast_scores',
    'crd_embed',
    'crd_loss',
    'crd_loss_with_normalisers',
    'estimate_normaliser',
    'nce_loss',
    'normalise_scores',
]

# The authors' defaults: train_student.py, arguments --feat_dim, --nce_k, --nce_t, --nce_m.
CRD_EMBED_DIM = 128
CRD_NUM_NEGATIVES = 16384
CRD_TEMPERATURE = 0.07
CRD_MOMENTUM = 0.5

# A normaliser <= 0 means "not set yet: estimate it from this batch" (the authors start
# their Z_v1, Z_v2 at -1 and set them on the first batch).
UNSET_NORMALISER = -1.0

# Added to the denominators of the NCE posteriors, as in the authors' ContrastLoss.
_NCE_EPS = 1e-7

# Dot products at full float32 precision (PyTorch's default), not TF32 or bfloat16 passes:
# the scores exponentiate logits divided by T = 0.07, which magnifies any rounding.
_PRECISION = jax.lax.Precision.HIGHEST


# ------------------------------------------------------------------------------ checks


def _check_static_positive_int(value, name: str, hint: str) -> None:
  """Shape-determining settings must be Python ints >= 1."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f'{name} must be a Python int >= 1, got {value!r}; {hint}')


def _check_static_temperature(temperature) -> None:
  """Rejects a Python-number temperature <= 0; traced values cannot be checked here."""
  if isinstance(temperature, numbers.Real) and not temperature > 0:
    raise ValueError(
        f'temperature must be > 0, got {temperature!r}; CRD uses {CRD_TEMPERATURE}.')


def _check_indices(indices: jax.Array, name: str, ndim: int) -> None:
  """Index arrays must be integer and ``[B]`` (ndim 1) or ``[B, K + 1]`` (ndim 2)."""
  if indices.ndim != ndim or not jnp.issubdtype(indices.dtype, jnp.integer):
    want = '[batch]' if ndim == 1 else '[batch, 1 + num_negatives]'
    raise ValueError(
        f'{name} must be an integer array of shape {want}, got dtype {indices.dtype} and '
        f'shape {indices.shape}.')


def _safe_l2_normalise(x: jax.Array) -> jax.Array:
  """``x / ||x||`` along the last axis; the zero vector maps to zero with zero gradient."""
  squared = jnp.sum(x * x, axis=-1, keepdims=True)
  positive = squared > 0
  norm = jnp.sqrt(jnp.where(positive, squared, 1.0))
  return jnp.where(positive, x / norm, 0.0)


# --------------------------------------------------------------------------- embedding


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
  features = _upcast(features)
  kernel = _upcast(kernel)
  bias = _upcast(bias)
  if features.ndim < 1:
    raise ValueError('features must have a batch axis, got a scalar.')
  flat = features.reshape(features.shape[0], -1)
  if kernel.ndim != 2 or kernel.shape[0] != flat.shape[1] or bias.shape != kernel.shape[1:]:
    raise ValueError(
        f'features shape {features.shape} flattens to {flat.shape[1]} entries per example, '
        f'so kernel must be [{flat.shape[1]}, d] and bias [d]; got kernel {kernel.shape} '
        f'and bias {bias.shape}.')
  dtype = jnp.promote_types(jnp.promote_types(flat.dtype, kernel.dtype), bias.dtype)
  projected = jnp.matmul(flat.astype(dtype), kernel.astype(dtype), precision=_PRECISION)
  projected = projected + bias.astype(dtype)
  return _safe_l2_normalise(projected)


# ------------------------------------------------------------------------------ scores


def contrast_scores(
    bank: jax.typing.ArrayLike,
    indices: jax.typing.ArrayLike,
    embeddings: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Unnormalised scores of embeddings against the bank rows picked for them.

  .. math::
    s_{b,k} = \exp\left(\langle M_{i_{b,k}},\, g_b \rangle / T\right)

  The bank is read through ``stop_gradient`` (the authors ``.detach()`` it); gradients
  flow into ``embeddings`` only. Gathering the rows takes ``B * (K + 1) * d`` floats (the
  authors' way); when the bank is smaller than that (``N <= (K + 1) * d``, e.g. CIFAR's
  50,000 rows against 16,385 x 128), every row is scored by one ``[B, d] x [d, N]`` product
  and the picked scores are read from it: the same dot products, a fraction of the memory
  traffic.

  Args:
    bank: ``[N, d]`` memory bank of the *other* network.
    indices: ``[B, K + 1]`` integer rows of the bank, in ``[0, N)``, positive first
      (:func:`~jaxkd.losses.feature.memory_bank.sample_contrast_indices`).
    embeddings: ``[B, d]`` unit-norm embeddings (any float dtype; computed in >= float32).
    temperature: ``T > 0`` (0.07 in the authors' code; Python float or scalar array).

  Returns:
    ``[B, K + 1]`` float32 (float64 for float64 inputs) positive scores.

  References:
    Tian, Krishnan & Isola, `Contrastive Representation Distillation
    <https://arxiv.org/abs/1910.10699>`_, ICLR 2020.
  """
  _check_static_temperature(temperature)
  bank = _upcast(bank)
  embeddings = _upcast(embeddings)
  indices = jnp.asarray(indices)
  _check_indices(indices, 'indices', 2)
  if (bank.ndim != 2 or embeddings.ndim != 2 or bank.shape[1] != embeddings.shape[1] or
      indices.shape[0] != embeddings.shape[0]):
    raise ValueError(
        f'bank must be [N, d], embeddings [B, d] and indices [B, K + 1]; got bank '
        f'{bank.shape}, embeddings {embeddings.shape}, indices {indices.shape}.')
  dtype = jnp.promote_types(bank.dtype, embeddings.dtype)
  bank = jax.lax.stop_gradient(bank.astype(dtype))
  embeddings = embeddings.astype(dtype)
  batch, num_rows = indices.shape[0], bank.shape[0]
  if num_rows <= indices.shape[1] * bank.shape[1] and batch * num_rows < 2**31:
    every_row = jnp.einsum('bd,nd->bn', embeddings, bank, precision=_PRECISION)  # [B, N]
    # One flat gather (and, for the gradient, one flat scatter-add) rather than
    # `take_along_axis`'s batched one: B = 256, K = 16384, N = 50,000 on XLA:CPU, 11 -> 8 ms
    # forward, 77 -> 56 ms for the scatter (AMD EPYC, 2 cores).
    flat = indices.astype(jnp.int32) + num_rows * jnp.arange(batch, dtype=jnp.int32)[:, None]
    logits = every_row.reshape(-1)[flat.reshape(-1)].reshape(indices.shape)
  else:
    rows = bank[indices]  # [B, K + 1, d]
    logits = jnp.einsum('bkd,bd->bk', rows, embeddings, precision=_PRECISION)
  return jnp.exp(logits / jnp.asarray(temperature, dtype))


def estimate_normaliser(scores: jax.typing.ArrayLike, num_data: int) -> jax.Array:
  r"""Monte-Carlo estimate of the partition function: ``Z = mean(scores) * N``.

  .. math::
    Z = N \cdot \frac{1}{B (K + 1)} \sum_{b,k} s_{b,k}

  The authors compute it once, on the first batch, separately for each side, and keep it
  fixed for the rest of training; store it in the term's state. It is a constant to the
  gradient (``stop_gradient``), as their ``.item()``. Under ``shard_map``/``pmap`` take
  the ``jax.lax.pmean`` of the result over the data axis so all shards agree.

  Args:
    scores: ``[B, K + 1]`` scores from :func:`contrast_scores`.
    num_data: ``N``, the number of training examples.

  Returns:
    ``[]`` normaliser.
  """
  _check_static_positive_int(num_data, 'num_data', 'one bank row per training example.')
  scores = _upcast(scores)
  return jax.lax.stop_gradient(jnp.mean(scores) * num_data)


def normalise_scores(scores: jax.typing.ArrayLike,
                     normaliser: jax.typing.ArrayLike) -> jax.Array:
  r"""Scores divided by the normaliser: ``P = s / Z``, the model's probabilities.

  Args:
    scores: ``[B, K + 1]`` scores from :func:`contrast_scores`.
    normaliser: ``[]`` ``Z`` from :func:`estimate_normaliser`.

  Returns:
    ``[B, K + 1]`` probabilities.
  """
  scores = _upcast(scores)
  return scores / jnp.asarray(normaliser, scores.dtype)


# -------------------------------------------------------------------------------- loss


def nce_loss(probabilities: jax.typing.ArrayLike, *, num_data: int) -> jax.Array:
  r"""NCE loss of one positive and ``K`` noise samples, per example.

  With the noise distribution uniform over the data, ``P_n = 1/N``, and ``m = K``:

  .. math::
    \ell_b = -\log \frac{P_{b,0}}{P_{b,0} + m P_n + \epsilon}
             - \sum_{k=1}^{K} \log \frac{m P_n}{P_{b,k} + m P_n + \epsilon}

  with ``epsilon = 1e-7``, the authors' ``ContrastLoss``. Its batch mean equals their
  value (they sum over the batch and divide by ``B``).

  Args:
    probabilities: ``[B, K + 1]`` normalised scores, positive first
      (:func:`normalise_scores`; any float dtype, computed in >= float32).
    num_data: ``N``, the number of training examples.

  Returns:
    ``[B]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Tian, Krishnan & Isola, `Contrastive Representation Distillation
    <https://arxiv.org/abs/1910.10699>`_, ICLR 2020; Gutmann & Hyvärinen,
    `Noise-contrastive estimation <https://proceedings.mlr.press/v9/gutmann10a.html>`_,
    AISTATS 2010.
  """
  _check_static_positive_int(num_data, 'num_data', 'one bank row per training example.')
  probabilities = _upcast(probabilities)
  if probabilities.ndim != 2 or probabilities.shape[1] < 2:
    raise ValueError(
        'probabilities must be [batch, 1 + num_negatives] with at least one negative, got '
        f'shape {probabilities.shape}.')
  noise = (probabilities.shape[1] - 1) / num_data  # m * P_n
  positive = probabilities[:, 0]
  negative = probabilities[:, 1:]
  log_d1 = jnp.log(positive / (positive + (noise + _NCE_EPS)))
  log_d0 = jnp.log(noise / (negative + (noise + _NCE_EPS)))
  return -(log_d1 + jnp.sum(log_d0, axis=-1))


def _resolve(normaliser, scores, num_data) -> jax.Array:
  """The stored normaliser, or this batch's estimate where it is not set (<= 0)."""
  normaliser = jnp.asarray(normaliser, scores.dtype)
  return jnp.where(normaliser > 0, normaliser, estimate_normaliser(scores, num_data))


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
  :func:`~jaxkd.losses.feature.memory_bank.update_memory_bank`, as the authors do.

  Args:
    student_embeddings: ``[B, d]`` unit-norm student embeddings (:func:`crd_embed`).
    teacher_embeddings: ``[B, d]`` unit-norm teacher embeddings. Gradients flow into
      both (the teacher's embedding head is trained too).
    student_bank: ``[N, d]`` bank of past student embeddings (no gradient).
    teacher_bank: ``[N, d]`` bank of past teacher embeddings (no gradient).
    contrast_indices: ``[B, K + 1]`` rows, positive first
      (:func:`~jaxkd.losses.feature.memory_bank.sample_contrast_indices`), the same
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
  z_s = _resolve(student_normaliser, student_scores, num_data)
  z_t = _resolve(teacher_normaliser, teacher_scores, num_data)
  loss = (nce_loss(normalise_scores(student_scores, z_s), num_data=num_data) +
          nce_loss(normalise_scores(teacher_scores, z_t), num_data=num_data))
  return loss, z_s, z_t


def crd_loss(
    student_embeddings: jax.typing.ArrayLike,
    teacher_embeddings: jax.typing.ArrayLike,
    student_bank: jax.typing.ArrayLike,
    teacher_bank: jax.typing.ArrayLike,
    contrast_indices: jax.typing.ArrayLike,
    student_normaliser: jax.typing.ArrayLike,
    teacher_normaliser: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
) -> jax.Array:
  r"""The CRD loss per example: student-side plus teacher-side NCE.

  :func:`crd_loss_with_normalisers` without the normalisers: the student's embeddings
  against the teacher's bank (normalised by ``student_normaliser``) plus the teacher's
  embeddings against the student's bank (``teacher_normaliser``). Its batch mean equals
  the authors' ``CRDLoss`` value.

  Args:
    student_embeddings: ``[B, d]`` unit-norm student embeddings.
    teacher_embeddings: ``[B, d]`` unit-norm teacher embeddings.
    student_bank: ``[N, d]`` bank of past student embeddings.
    teacher_bank: ``[N, d]`` bank of past teacher embeddings.
    contrast_indices: ``[B, K + 1]`` rows, positive first.
    student_normaliser: ``[]`` ``Z`` of the student-embedding scores (``<= 0``: estimate).
    teacher_normaliser: ``[]`` ``Z`` of the teacher-embedding scores (``<= 0``: estimate).
    temperature: ``T > 0`` (0.07 in the authors' code).

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
