"""CRD memory banks: allocation, memory checks, negative sampling and momentum updates.

A memory bank holds one unit-norm embedding per training example (``[N, d]``); CRD keeps
two, one per network, in the loss state of the term that wraps it. This module creates
them (:func:`init_memory_bank`, sized with :func:`memory_bank_bytes` and checked against
the device with :func:`check_memory_bank_fits`), picks the rows each example is
contrasted with (:func:`sample_contrast_indices`, or other-class negatives with
:func:`build_class_index_table` and :func:`sample_other_class_contrast_indices`), and
writes the step's embeddings back (:func:`update_memory_bank`). The loss itself is in
:mod:`jaxkd.losses.methods.crd`.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.losses.nce import (CRD_EMBED_DIM, CRD_MOMENTUM, CRD_NUM_NEGATIVES, check_indices,
                              check_static_positive_int, safe_l2_normalise)
from jaxkd.losses.numerics import upcast

__all__ = [
    'HOST_MEMORY_FRACTION',
    'ClassIndexTable',
    'build_class_index_table',
    'check_memory_bank_fits',
    'init_memory_bank',
    'memory_bank_bytes',
    'sample_contrast_indices',
    'sample_other_class_contrast_indices',
    'update_memory_bank',
]

# Without device memory statistics (CPU), a bank may take at most this fraction of the
# machine's physical RAM.
HOST_MEMORY_FRACTION = 0.5

_FLOAT32_BYTES = 4


# ------------------------------------------------------------------------------ checks


def _check_static_momentum(momentum) -> None:
  """Rejects a Python-number momentum outside [0, 1]."""
  if isinstance(momentum, numbers.Real) and not 0 <= momentum <= 1:
    raise ValueError(
        f'momentum must be in [0, 1], got {momentum!r}; 0 overwrites a row with the new '
        f'embedding, 1 keeps the old row (renormalised), CRD uses {CRD_MOMENTUM}.')


# ------------------------------------------------------------------------- memory bank


def init_memory_bank(
    key: jax.Array,
    num_data: int,
    embed_dim: int,
    *,
    dtype: jax.typing.DTypeLike = jnp.float32,
) -> jax.Array:
  r"""One memory bank, initialised as the authors do: uniform in ``[-s, s]``.

  .. math::
    M_{n,j} \sim \mathcal{U}[-s, s],\quad s = \frac{1}{\sqrt{d / 3}}

  so each entry has variance ``1/d`` and each row has expected squared norm 1, like the
  unit-norm embeddings that later overwrite it. CRD keeps two banks, one per network
  (call this twice with different keys): each is ``num_data x embed_dim`` float32, so
  ``2 * N * d * 4`` bytes in all (:func:`memory_bank_bytes`), about 51 MB for CIFAR-100
  (``N = 50000``, ``d = 128``) and 1.3 GB for ImageNet (``N = 1281167``). Check with
  :func:`check_memory_bank_fits` before allocating.

  Args:
    key: PRNG key.
    num_data: ``N``, the number of training examples (one row each).
    embed_dim: ``d``, the embedding size (128 in the authors' code).
    dtype: the bank's dtype (float32, as the authors').

  Returns:
    ``[N, d]`` bank.

  References:
    Tian, Krishnan & Isola, `Contrastive Representation Distillation
    <https://arxiv.org/abs/1910.10699>`_, ICLR 2020.
  """
  check_static_positive_int(num_data, 'num_data', 'one bank row per training example.')
  check_static_positive_int(embed_dim, 'embed_dim', f'CRD uses {CRD_EMBED_DIM}.')
  stdv = 1.0 / math.sqrt(embed_dim / 3)
  return jax.random.uniform(key, (num_data, embed_dim), dtype, minval=-stdv, maxval=stdv)


def memory_bank_bytes(num_data: int, embed_dim: int) -> int:
  """Bytes taken by CRD's two float32 memory banks: ``2 * num_data * embed_dim * 4``."""
  check_static_positive_int(num_data, 'num_data', 'one bank row per training example.')
  check_static_positive_int(embed_dim, 'embed_dim', f'CRD uses {CRD_EMBED_DIM}.')
  return 2 * num_data * embed_dim * _FLOAT32_BYTES


def _device_free_bytes(device) -> tuple[int | None, str]:
  """Free bytes on ``device`` (or a share of host RAM without device statistics)."""
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and 'bytes_limit' in stats:
    free = int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))
    return free, f'free memory on {device} (bytes_limit - bytes_in_use)'
  try:
    physical = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (AttributeError, ValueError, OSError):
    return None, 'unknown'
  return (int(HOST_MEMORY_FRACTION * physical),
          f'{HOST_MEMORY_FRACTION:.0%} of the {physical} bytes of physical RAM ({device} '
          'reports no memory statistics)')


def check_memory_bank_fits(num_data: int, embed_dim: int, *, device=None) -> None:
  """Raises ``ValueError`` if CRD's two memory banks would not fit on ``device``.

  Compares :func:`memory_bank_bytes` with the device's free memory, ``bytes_limit -
  bytes_in_use`` from ``device.memory_stats()``. Devices without statistics (CPU, where
  it returns ``None``) are compared with :data:`HOST_MEMORY_FRACTION` (one half) of the
  machine's physical RAM (``os.sysconf``); where neither is known the check passes.
  Only the banks are counted: the step also needs ``2 * B * (K + 1) * d`` floats for the
  gathered bank rows of :func:`~jaxkd.losses.nce.contrast_scores`, plus the
  networks.

  Args:
    num_data: ``N``, the number of training examples.
    embed_dim: ``d``, the embedding size.
    device: a ``jax.Device``; ``jax.devices()[0]`` by default.
  """
  needed = memory_bank_bytes(num_data, embed_dim)
  device = jax.devices()[0] if device is None else device
  free, what = _device_free_bytes(device)
  if free is not None and needed > free:
    raise ValueError(
        f'CRD memory banks for num_data={num_data}, embed_dim={embed_dim} need {needed} '
        f'bytes (2 x {num_data} x {embed_dim} float32), more than the {free} bytes '
        f'available ({what}). Use a smaller embed_dim, a subset of the training data '
        '(fewer rows), or a device with more memory.')


# ----------------------------------------------------------------------- sampling


def sample_contrast_indices(
    key: jax.Array,
    indices: jax.typing.ArrayLike,
    *,
    num_data: int,
    num_negatives: int,
) -> jax.Array:
  r"""Bank rows to contrast each example with: its own row, then ``K`` uniform ones.

  Column 0 is the positive, the example's own dataset index; columns ``1..K`` are drawn
  uniformly from ``[0, N)`` with replacement, independently for every entry. This is
  what the authors' ``ContrastMemory`` does when no ``contrast_idx`` is passed
  (``AliasMethod`` over uniform weights). As there, a negative may coincide with the
  positive, or repeat. Deterministic given ``key``. Under data parallelism give each
  shard its own key (e.g. ``jax.random.fold_in(key, jax.lax.axis_index('data'))``).

  The authors' CIFAR-100 and ImageNet training scripts do pass ``contrast_idx``: their
  data sets draw negatives only from examples of *other classes*
  (:func:`sample_other_class_contrast_indices`).

  Args:
    key: PRNG key.
    indices: ``[B]`` integer dataset indices of the batch's examples, in ``[0, N)``.
    num_data: ``N``, the number of training examples (bank rows).
    num_negatives: ``K >= 1``, negatives per example (16384 in the authors' code).

  Returns:
    ``[B, K + 1]`` int32 bank-row indices.

  References:
    Tian, Krishnan & Isola, `Contrastive Representation Distillation
    <https://arxiv.org/abs/1910.10699>`_, ICLR 2020.
  """
  check_static_positive_int(num_data, 'num_data', 'one bank row per training example.')
  check_static_positive_int(num_negatives, 'num_negatives', f'CRD uses {CRD_NUM_NEGATIVES}.')
  indices = jnp.asarray(indices)
  check_indices(indices, 'indices', 1)
  negatives = jax.random.randint(key, (indices.shape[0], num_negatives), 0, num_data,
                                 dtype=jnp.int32)
  return jnp.concatenate([indices.astype(jnp.int32)[:, None], negatives], axis=1)


class ClassIndexTable(NamedTuple):
  """Training-set indices grouped by class (a pytree; build with build_class_index_table).

  Attributes:
    order: ``[N]`` int32 dataset indices sorted by class (stable).
    class_start: ``[C]`` int32 position in ``order`` where each class begins.
    class_count: ``[C]`` int32 number of examples of each class.
  """
  order: jax.Array
  class_start: jax.Array
  class_count: jax.Array


def build_class_index_table(dataset_labels, *,
                            num_classes: int | None = None) -> ClassIndexTable:
  """Groups the training set's indices by label, for other-class negative sampling.

  Runs once, on the host (NumPy), before training.

  Args:
    dataset_labels: ``[N]`` integer label of every training example, in ``[0, C)``.
    num_classes: ``C``; ``max(label) + 1`` by default.

  Returns:
    A :class:`ClassIndexTable`.
  """
  labels = np.asarray(dataset_labels)
  if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f'dataset_labels must be a non-empty 1-D integer array, got dtype {labels.dtype} '
        f'and shape {labels.shape}.')
  if labels.min() < 0:
    raise ValueError(f'dataset_labels must be >= 0, got {labels.min()}.')
  num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
  check_static_positive_int(num_classes, 'num_classes', 'one more than the largest label.')
  if labels.max() >= num_classes:
    raise ValueError(f'num_classes={num_classes} but dataset_labels has label {labels.max()}.')
  count = np.bincount(labels, minlength=num_classes)
  if np.any(count == labels.size):
    raise ValueError('dataset_labels has a single class, so there are no other-class '
                     'negatives; use sample_contrast_indices.')
  start = np.concatenate([[0], np.cumsum(count)[:-1]])
  order = np.argsort(labels, kind='stable')
  return ClassIndexTable(jnp.asarray(order, jnp.int32), jnp.asarray(start, jnp.int32),
                         jnp.asarray(count, jnp.int32))


def sample_other_class_contrast_indices(
    key: jax.Array,
    indices: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    table: ClassIndexTable,
    *,
    num_negatives: int,
) -> jax.Array:
  r"""Like :func:`sample_contrast_indices`, but negatives only from other classes.

  Column 0 is the example's own index (the authors' ``mode='exact'``); columns ``1..K``
  are drawn uniformly, with replacement, from the training examples whose label differs
  from the example's. This is the authors' ImageNet sampler (``replace=True``) exactly.
  Their CIFAR-100 data set draws without replacement when ``K`` is at most the number of
  other-class examples (16384 of 49500); with replacement, as here, some draws repeat.

  Args:
    key: PRNG key.
    indices: ``[B]`` integer dataset indices of the batch's examples.
    labels: ``[B]`` integer labels of the batch's examples.
    table: :func:`build_class_index_table` of the whole training set's labels.
    num_negatives: ``K >= 1``, negatives per example.

  Returns:
    ``[B, K + 1]`` int32 bank-row indices.

  References:
    Tian, Krishnan & Isola, `Contrastive Representation Distillation
    <https://arxiv.org/abs/1910.10699>`_, ICLR 2020.
  """
  check_static_positive_int(num_negatives, 'num_negatives', f'CRD uses {CRD_NUM_NEGATIVES}.')
  indices = jnp.asarray(indices)
  labels = jnp.asarray(labels)
  check_indices(indices, 'indices', 1)
  check_indices(labels, 'labels', 1)
  if labels.shape != indices.shape:
    raise ValueError(f'labels shape {labels.shape} and indices shape {indices.shape} differ.')
  num_data = table.order.shape[0]
  start = table.class_start[labels][:, None]
  count = table.class_count[labels][:, None]
  # A uniform position among the N - n_c examples of other classes, skipping the
  # example's own class block [start, start + count) of the sorted order.
  position = jax.random.randint(key, (indices.shape[0], num_negatives), 0, num_data - count,
                                dtype=jnp.int32)
  position = jnp.where(position < start, position, position + count)
  negatives = table.order[position]
  return jnp.concatenate([indices.astype(jnp.int32)[:, None], negatives], axis=1)


# ------------------------------------------------------------------------------ update


def update_memory_bank(
    bank: jax.typing.ArrayLike,
    indices: jax.typing.ArrayLike,
    embeddings: jax.typing.ArrayLike,
    *,
    momentum: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Momentum update of the batch's own bank rows, renormalised.

  .. math::
    M_{i_b} \leftarrow \frac{\mu M_{i_b} + (1 - \mu) g_b}
                            {\|\mu M_{i_b} + (1 - \mu) g_b\|_2}

  for each example's dataset index ``i_b``; other rows are unchanged. Each bank takes
  its own network's embeddings (student bank <- student embeddings). No gradient flows
  (``stop_gradient``). A row that sums to zero stays zero rather than NaN.

  Duplicate indices within one call: the rows are written with ``.at[indices].set``,
  and JAX's scatter keeps one of the duplicates, unspecified which (the authors'
  ``index_copy_`` has the same property). A data loader that visits each example once
  per epoch has none.

  Under data parallelism every device must apply the same update to its copy of the
  bank, so with ``shard_map``/``pmap`` gather the whole global batch first::

    all_indices = jax.lax.all_gather(indices, 'data', tiled=True)        # [B_global]
    all_embeddings = jax.lax.all_gather(embeddings, 'data', tiled=True)  # [B_global, d]
    bank = update_memory_bank(bank, all_indices, all_embeddings, momentum=0.5)

  (Under plain ``jit`` on globally sharded arrays XLA does this itself.)

  Args:
    bank: ``[N, d]`` memory bank.
    indices: ``[B]`` integer dataset indices of the batch's examples.
    embeddings: ``[B, d]`` this step's embeddings from the bank's own network.
    momentum: ``mu`` in ``[0, 1]`` (0.5 in the authors' code; Python float or scalar
      array).

  Returns:
    ``[N, d]`` updated bank, in the bank's dtype.

  References:
    Tian, Krishnan & Isola, `Contrastive Representation Distillation
    <https://arxiv.org/abs/1910.10699>`_, ICLR 2020; Wu et al., `Unsupervised Feature
    Learning via Non-Parametric Instance Discrimination
    <https://arxiv.org/abs/1805.01978>`_, CVPR 2018.
  """
  _check_static_momentum(momentum)
  bank = jax.lax.stop_gradient(jnp.asarray(bank))
  embeddings = jax.lax.stop_gradient(upcast(embeddings))
  indices = jnp.asarray(indices)
  check_indices(indices, 'indices', 1)
  if (bank.ndim != 2 or embeddings.shape != (indices.shape[0], bank.shape[1])):
    raise ValueError(
        f'bank must be [N, d], indices [B] and embeddings [B, d]; got bank {bank.shape}, '
        f'indices {indices.shape}, embeddings {embeddings.shape}.')
  dtype = jnp.promote_types(upcast(bank).dtype, embeddings.dtype)
  mu = jnp.asarray(momentum, dtype)
  rows = mu * bank[indices].astype(dtype) + (1 - mu) * embeddings.astype(dtype)
  return bank.at[indices].set(safe_l2_normalise(rows).astype(bank.dtype))
