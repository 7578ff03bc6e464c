"""Noise-contrastive estimation against memory banks, CRD's numerics (Tian et al. 2020):
scores of embeddings against bank rows, their normaliser, the NCE loss, and the checks the
memory banks (`jaxkd.losses.memory_bank`) share. The authors' defaults (RepDistiller's
``train_student.py``) are the module constants; the CRD term (`jaxkd.losses.methods.crd`)
takes them as its field defaults."""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import upcast


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


def check_static_positive_int(value, name: str, hint: str) -> None:
  """Shape-determining settings must be Python ints >= 1."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f'{name} must be a Python int >= 1, got {value!r}; {hint}')


def _check_static_temperature(temperature) -> None:
  """Rejects a Python-number temperature <= 0; traced values cannot be checked here."""
  if isinstance(temperature, numbers.Real) and not temperature > 0:
    raise ValueError(
        f'temperature must be > 0, got {temperature!r}; CRD uses {CRD_TEMPERATURE}.')


def check_indices(indices: jax.Array, name: str, ndim: int) -> None:
  """Index arrays must be integer and ``[B]`` (ndim 1) or ``[B, K + 1]`` (ndim 2)."""
  if indices.ndim != ndim or not jnp.issubdtype(indices.dtype, jnp.integer):
    want = '[batch]' if ndim == 1 else '[batch, 1 + num_negatives]'
    raise ValueError(
        f'{name} must be an integer array of shape {want}, got dtype {indices.dtype} and '
        f'shape {indices.shape}.')


def safe_l2_normalise(x: jax.Array) -> jax.Array:
  """``x / ||x||`` along the last axis; the zero vector maps to zero with zero gradient."""
  squared = jnp.sum(x * x, axis=-1, keepdims=True)
  positive = squared != 0  # NaN stays NaN
  norm = jnp.sqrt(jnp.where(positive, squared, 1.0))
  return jnp.where(positive, x / norm, 0.0)


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
      (:func:`~jaxkd.losses.memory_bank.sample_contrast_indices`).
    embeddings: ``[B, d]`` unit-norm embeddings (any float dtype; computed in >= float32).
    temperature: ``T > 0`` (0.07 in the authors' code; Python float or scalar array).

  Returns:
    ``[B, K + 1]`` float32 (float64 for float64 inputs) positive scores.

  References:
    Tian, Krishnan & Isola, `Contrastive Representation Distillation
    <https://arxiv.org/abs/1910.10699>`_, ICLR 2020.
  """
  _check_static_temperature(temperature)
  bank = upcast(bank)
  embeddings = upcast(embeddings)
  indices = jnp.asarray(indices)
  check_indices(indices, 'indices', 2)
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
  check_static_positive_int(num_data, 'num_data', 'one bank row per training example.')
  scores = upcast(scores)
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
  scores = upcast(scores)
  return scores / jnp.asarray(normaliser, scores.dtype)


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
  check_static_positive_int(num_data, 'num_data', 'one bank row per training example.')
  probabilities = upcast(probabilities)
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


def resolve(normaliser, scores, num_data) -> jax.Array:
  """The stored normaliser, or this batch's estimate where it is not set (<= 0)."""
  normaliser = jnp.asarray(normaliser, scores.dtype)
  return jnp.where(normaliser > 0, normaliser, estimate_normaliser(scores, num_data))
