"""Several processes, one run: JAX's multi-controller runtime (`jax.distributed`).

Every process runs the same script on its own devices; the device mesh spans them all, so
each jitted step is one program over every process's devices. jaxkd keeps to a few rules:

- each process feeds its contiguous share of every global batch (`process_rows`); the
  in-memory pipeline draws the same permutation on every process and each process slices
  its part (`jaxkd.data.InMemoryDataset(shard_index=..., shard_count=...)`), and
  `Parallel.shard_batch` assembles the global batch with
  `jax.make_array_from_process_local_data`;
- step outputs are replicated, so every process reads the same metrics;
- Orbax checkpoints are written and restored by all processes together;
- only the main process (index 0) writes logs, TensorBoard files, results and prints, and
  holds the workdir lock.

On one machine the processes reach each other over 127.0.0.1 with CPU collectives from gloo;
on a GPU cluster or a TPU pod `jax.distributed.initialize()` finds its peers itself.
"""
from __future__ import annotations

import os

import jax
import numpy as np

AUTO_ENV = 'JAXKD_DISTRIBUTED'  # 'auto': let jax.distributed discover the cluster (SLURM, TPU)


def initialize(coordinator_address: str = '', num_processes: int = 0,
               process_id: int = -1) -> bool:
  """Joins a multi-process run before JAX starts its backend; True when it did.

  With `coordinator_address` (e.g. '127.0.0.1:12355' or 'node0:12355'), `num_processes` and
  `process_id` given, they are passed to `jax.distributed.initialize`. Without them, it is
  called with none (JAX reads SLURM's or the TPU pod's environment) when `$JAXKD_DISTRIBUTED`
  is 'auto' or the job is a SLURM job of several tasks; otherwise the run is one process.
  On CPU, processes exchange data through gloo collectives.
  """
  given = (coordinator_address, num_processes > 0, process_id >= 0)
  if any(given) and not all(given):
    raise ValueError(
        f'coordinator_address={coordinator_address!r}, num_processes={num_processes}, '
        f'process_id={process_id}: give all three for a multi-process run (e.g. '
        '--coordinator_address=127.0.0.1:12355 --num_processes=2 --process_id=0), or none.')
  if all(given):
    if not 0 <= process_id < num_processes:
      raise ValueError(f'process_id={process_id}: must be in 0..{num_processes - 1}.')
    _cpu_collectives()
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True
  slurm_tasks = int(os.environ.get('SLURM_NTASKS', '1') or 1)
  if os.environ.get(AUTO_ENV, '').lower() == 'auto' or slurm_tasks > 1:
    _cpu_collectives()
    jax.distributed.initialize()
    return True
  return False


def _cpu_collectives() -> None:
  """gloo for cross-process collectives of CPU devices (XLA:CPU has no default)."""
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')


def is_main() -> bool:
  """Whether this is the process that writes logs, results and prints (index 0)."""
  return jax.process_index() == 0


def process_rows(batch, *, index: int | None = None, count: int | None = None):
  """This process's contiguous share of a global host batch (a dict or array tree whose
  leading dimension divides by the process count); the batch itself with one process."""
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  if count == 1:
    return batch

  def rows(x):
    x = np.asarray(x)
    if x.shape[0] % count:
      raise ValueError(f'A global batch of {x.shape[0]} does not split over {count} processes.')
    share = x.shape[0] // count
    return x[index * share:(index + 1) * share]
  return jax.tree.map(rows, batch)


def allgather_rows(local: np.ndarray, total: int) -> np.ndarray:
  """The rows every process computed, in process order, trimmed to `total` (each process's
  block padded to the same length before the gather)."""
  if jax.process_count() == 1:
    return np.asarray(local)[:total]
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))[:total]


def process_block(num_rows: int) -> slice:
  """The rows `[start, stop)` this process computes of `num_rows` split in equal blocks
  (the last block may run past the end: pad it)."""
  share = -(-num_rows // jax.process_count())
  start = jax.process_index() * share
  return slice(start, start + share)


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


__all__ = ['AUTO_ENV', 'allgather_rows', 'barrier', 'initialize', 'is_main', 'process_block',
           'process_rows']
