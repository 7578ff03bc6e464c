"""The input pipeline: a split held on device, batched and normalized there.

It yields `{'image': float32 [B, H, W, C] normalized, 'label': int32 [B]}` and shuffles
deterministically from a seed and the epoch number.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Batch = dict[str, Any]


def _channel_stats(mean: float | Sequence[float], std: float | Sequence[float],
                   channels: int | None = None):
  """Per-channel (mean, std) as float32 arrays: finite, std positive, and one value or one
  per channel of the images (`channels`, when known)."""
  mean = np.atleast_1d(np.asarray(mean, np.float32))
  std = np.atleast_1d(np.asarray(std, np.float32))
  if np.any(std <= 0) or not np.all(np.isfinite(std)):
    raise ValueError(f"std must be finite and positive, got {std.tolist()}.")
  if not np.all(np.isfinite(mean)):
    raise ValueError(f"mean must be finite, got {mean.tolist()}.")
  for name, values in (("mean", mean), ("std", std)):
    if values.ndim != 1 or (channels is not None and len(values) not in (1, channels)):
      raise ValueError(f"{name} has {values.size} values {values.tolist()}; give one, or one "
                       f"per channel of the images ({channels}).")
  return mean, std


def check_labels(labels: np.ndarray, num_classes: int | None = None, what: str = "labels"):
  """Refuses labels that are not integers, are negative, or are >= `num_classes`."""
  labels = np.asarray(labels)
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    if not (np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels))):
      raise ValueError(f"{what} must be integer class indices, got {labels.dtype} values such "
                       f"as {labels.ravel()[:3].tolist()}.")
  if labels.size and labels.min() < 0:
    raise ValueError(f"{what} must be >= 0, got {labels.min()} "
                     f"(example {int(np.argmin(labels))}).")
  if labels.size and num_classes is not None and labels.max() >= num_classes:
    raise ValueError(f"{what} must be < num_classes={num_classes}, got {labels.max()} "
                     f"(example {int(np.argmax(labels))}).")


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  """(index, count) of this process's shard, defaulting to JAX's process index/count."""
  index = jax.process_index() if shard_index is None else shard_index
  count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= index < count:
    raise ValueError(f"shard_index must be in [0, {count}), got {index}.")
  return index, count


class InMemoryDataset:
  """A split held on device once and batched there: no host round trip per step.

  Two functions, each compiled once, run on device: once per epoch, the
  permutation `jax.random.permutation(fold_in(key(seed), epoch), N)` (kept on
  device; recomputing it every step would cost more than the step on CPU); each
  step, one function slices this process's part of the step's global batch from
  it, gathers and normalizes. A batch is a pure function of (seed, epoch, step):
  a run resumed at step k of epoch e gets exactly the same batches, and processes
  (shards) with the same seed take disjoint examples. The last partial global
  batch of an epoch is dropped.

  Args:
    images: uint8 [N, H, W, C].
    labels: int [N].
    batch_size: examples per batch on this process.
    mean, std: per-channel statistics on [0, 1] pixel values.
    seed: shuffling seed.
    shuffle: False keeps the stored order.
    data_sharding: placement of the stored arrays (default: the default device).
    batch_sharding: output sharding of each batch, e.g.
      `NamedSharding(mesh, P('data'))` to split it over a mesh's data axis
      (single process; with several processes each yields its local batch, to
      be assembled with `jax.make_array_from_process_local_data`).
    shard_index, shard_count: this process's shard (default: JAX's process index/count).
    columns: more per-example arrays (e.g. cached teacher logits), gathered into each
      batch under their names alongside `image` and `label`.
    num_classes: labels must be integers in 0..num_classes-1.
  """

  def __init__(
      self,
      images: np.ndarray | jax.Array,
      labels: np.ndarray | jax.Array,
      *,
      batch_size: int,
      mean: float | Sequence[float],
      std: float | Sequence[float],
      seed: int = 0,
      shuffle: bool = True,
      data_sharding: jax.sharding.Sharding | None = None,
      batch_sharding: jax.sharding.Sharding | None = None,
      shard_index: int | None = None,
      shard_count: int | None = None,
      columns: dict[str, np.ndarray] | None = None,
      num_classes: int,
  ):
    if images.ndim != 4 or images.dtype != np.uint8:
      raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype}"
                       f"{list(images.shape)}.")
    if labels.shape != images.shape[:1]:
      raise ValueError(f"labels must be [{len(images)}], got {list(labels.shape)}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
      raise ValueError(f"num_classes must be a whole number >= 1, got {num_classes!r}.")
    check_labels(np.asarray(labels), num_classes)
    for name, rows in (columns or {}).items():
      if len(rows) != len(images) or name in ("image", "label"):
        raise ValueError(f"columns[{name!r}] must be a new name with one row per example "
                         f"({len(images)}), got {len(rows)} rows.")
    self.num_examples = len(images)
    self.batch_size = batch_size
    self.shard_index, self.shard_count = _shard(shard_index, shard_count)
    self.steps_per_epoch = self.num_examples // (batch_size * self.shard_count)
    if self.steps_per_epoch == 0:
      raise ValueError(f"{self.num_examples} examples do not fill one global batch of "
                       f"{batch_size} x {self.shard_count} shards.")
    self._images = jax.device_put(images, data_sharding)
    self._labels = jax.device_put(jnp.asarray(labels, jnp.int32), data_sharding)
    self._columns = jax.device_put(dict(columns or {}), data_sharding)
    self._key = jax.random.key(seed)
    self._cached_order: tuple[int, jax.Array] | None = None
    mean, std = _channel_stats(mean, std, images.shape[-1])
    self._order_fn = jax.jit(self._make_order_fn(shuffle))
    batch_fn = self._make_batch_fn(1.0 / (255.0 * std), -mean / std)
    jit_kwargs = {} if batch_sharding is None else {"out_shardings": batch_sharding}
    self._batch_fn = jax.jit(batch_fn, **jit_kwargs)

  def _make_order_fn(self, shuffle: bool):
    """The epoch's example order (compiled once): a permutation of fold_in(key, epoch)."""
    n = self.num_examples

    def order_fn(key, epoch) -> jax.Array:
      if not shuffle:
        return jnp.arange(n, dtype=jnp.int32)
      return jax.random.permutation(jax.random.fold_in(key, epoch), n).astype(jnp.int32)

    return order_fn

  def _make_batch_fn(self, scale: np.ndarray, shift: np.ndarray):
    """The per-step function (compiled once): slice the order, gather, normalize."""
    batch_size = self.batch_size
    offset = self.shard_index * batch_size
    global_batch = batch_size * self.shard_count

    def batch_fn(images, labels, columns, order, step) -> Batch:
      idx = jax.lax.dynamic_slice_in_dim(order, step * global_batch + offset, batch_size)
      image = images[idx].astype(jnp.float32) * scale + shift
      return {"image": image, "label": labels[idx],
              **{name: rows[idx] for name, rows in columns.items()}}

    return batch_fn

  def order(self, epoch: int) -> jax.Array:
    """All example indices of epoch `epoch` in visiting order (on device, cached)."""
    if self._cached_order is None or self._cached_order[0] != epoch:
      self._cached_order = (epoch, self._order_fn(self._key, np.int32(epoch)))
    return self._cached_order[1]

  def batch(self, epoch: int, step: int) -> Batch:
    """Batch `step` (0 <= step < steps_per_epoch) of epoch `epoch`."""
    if not 0 <= step < self.steps_per_epoch:
      raise IndexError(f"step must be in [0, {self.steps_per_epoch}), got {step}.")
    return self._batch_fn(self._images, self._labels, self._columns, self.order(epoch),
                          np.int32(step))

  def epoch(self, epoch_index: int, *, start_step: int = 0) -> Iterator[Batch]:
    """Batches of epoch `epoch_index` from `start_step` on (to resume mid-epoch)."""
    for step in range(start_step, self.steps_per_epoch):
      yield self.batch(epoch_index, step)

  def __len__(self) -> int:
    return self.steps_per_epoch
