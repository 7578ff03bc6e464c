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

import json
import os
import socket
import time

import jax
import numpy as np

from jaxkd import paths

AUTO_ENV = 'JAXKD_DISTRIBUTED'  # 'auto': let jax.distributed discover the cluster (SLURM, TPU)
# How long the processes of a run given `coordinator_address` wait for each other at start-up,
# in seconds; then every one of them stops with a message naming who did not come.
TIMEOUT_ENV = 'JAXKD_DISTRIBUTED_TIMEOUT'
DEFAULT_TIMEOUT_S = 120


def initialize(coordinator_address: str = '', num_processes: int = 0,
               process_id: int = -1, *, settings: dict | None = None) -> bool:
  """Joins a multi-process run before JAX starts its backend; True when it did.

  With `coordinator_address` (e.g. '127.0.0.1:12355' or 'node0:12355'), `num_processes` and
  `process_id` given, they are passed to `jax.distributed.initialize`. Without them, it is
  called with none (JAX reads SLURM's or the TPU pod's environment) when `$JAXKD_DISTRIBUTED`
  is 'auto' or the job is a SLURM job of several tasks; otherwise the run is one process.
  On CPU, processes exchange data through gloo collectives.

  With `coordinator_address`, the processes first meet over a plain TCP connection to it
  (`rendezvous`): process 0 checks that every process came, once, with the same
  `num_processes` and the same `settings` (the run's config, as JSON-able values), and each
  process stops with one clear `ValueError` within `$JAXKD_DISTRIBUTED_TIMEOUT` seconds
  (default 120) when one did not come or disagrees, before JAX starts.
  """
  if num_processes < 0 or (num_processes == 0 and process_id >= 0 and not coordinator_address):
    raise ValueError(f'num_processes={num_processes}: give the number of processes (>= 1) of a '
                     'multi-process run, or 0 for one process.')
  given = (coordinator_address, num_processes > 0, process_id >= 0)
  if any(given) and not all(given):
    raise ValueError(
        f'coordinator_address={coordinator_address!r}, num_processes={num_processes}, '
        f'process_id={process_id}: give all three for a multi-process run (e.g. '
        '--coordinator_address=127.0.0.1:12355 --num_processes=2 --process_id=0), or none.')
  if all(given):
    if not 0 <= process_id < num_processes:
      raise ValueError(f'process_id={process_id}: must be in 0..{num_processes - 1}.')
    timeout = _timeout()
    rendezvous(coordinator_address, num_processes, process_id, settings or {}, timeout=timeout)
    _cpu_collectives()
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=int(timeout))
    return True
  slurm_tasks = int(os.environ.get('SLURM_NTASKS', '1') or 1)
  if os.environ.get(AUTO_ENV, '').lower() == 'auto' or slurm_tasks > 1:
    _cpu_collectives()
    jax.distributed.initialize()
    return True
  return False


def _timeout() -> float:
  """`$JAXKD_DISTRIBUTED_TIMEOUT` in seconds (> 0), default `DEFAULT_TIMEOUT_S`."""
  text = os.environ.get(TIMEOUT_ENV, '') or str(DEFAULT_TIMEOUT_S)
  try:
    value = float(text)
  except ValueError:
    value = -1.0
  if not value > 0:
    raise ValueError(f'{TIMEOUT_ENV}={text!r}: give the start-up timeout in seconds (> 0).')
  return value


def _send(connection: socket.socket, message: dict) -> None:
  connection.sendall(json.dumps(message).encode() + b'\n')


def _receive(connection: socket.socket) -> dict:
  data = b''
  while not data.endswith(b'\n'):
    chunk = connection.recv(1 << 16)
    if not chunk:
      raise ConnectionError('closed')
    data += chunk
  return json.loads(data)


def rendezvous(address: str, num_processes: int, process_id: int, settings: dict, *,
               timeout: float) -> None:
  """Meets the other processes at `address` ('host:port', the coordinator's) before JAX does.

  Process 0 listens there, each other process connects and says who it is; process 0 answers
  every one once all have come, and raises (as do the others) a `ValueError` naming the
  problem when a process is missing after `timeout` seconds, two claim the same id, or their
  `num_processes` or `settings` differ. The port is free again when this returns, for JAX's
  coordinator.
  """
  host, _, port = address.rpartition(':')
  if not host or not port.isdigit():
    raise ValueError(f'coordinator_address={address!r}: give host:port, e.g. 127.0.0.1:12355.')
  hello = {'process_id': process_id, 'num_processes': num_processes,
           'settings': json.loads(json.dumps(settings, default=repr))}
  deadline = time.monotonic() + timeout
  late = (f'within {timeout:g} s ({TIMEOUT_ENV}); start all {num_processes} processes with '
          'the same --coordinator_address')
  if process_id != 0:
    while True:
      try:
        with socket.create_connection((host, int(port)), timeout=max(
            deadline - time.monotonic(), 0.1)) as connection:
          connection.settimeout(max(deadline - time.monotonic(), 0.1))
          _send(connection, hello)
          reply = _receive(connection)
        break
      except (ConnectionRefusedError, ConnectionError, socket.timeout, OSError) as error:
        if time.monotonic() > deadline:
          raise ValueError(f'process {process_id}: no answer from process 0 at {address} '
                           f'{late}.') from error
        time.sleep(0.2)
    if reply.get('error'):
      raise ValueError(reply['error'])
    return
  try:
    server = socket.create_server((host, int(port)))
  except OSError as error:
    raise ValueError(f'process 0 cannot listen at {address} ({error.strerror}): is another '
                     'process started with --process_id=0, or the port taken? Give each process '
                     'its own --process_id and process 0 a free port.') from None
  with server:
    server.settimeout(0.5)
    peers, problems = {}, []
    while len(peers) < num_processes - 1 and time.monotonic() < deadline:
      try:
        connection, _ = server.accept()
      except socket.timeout:
        continue
      connection.settimeout(max(deadline - time.monotonic(), 0.1))
      try:
        theirs = _receive(connection)
      except (ConnectionError, socket.timeout, ValueError):
        connection.close()
        continue
      other = theirs.get('process_id')
      if theirs.get('num_processes') != num_processes:
        problems.append(f'process {other} was started with --num_processes='
                        f'{theirs.get("num_processes")}, process 0 with {num_processes}')
      elif other in peers or other == 0 or not isinstance(other, int):
        problems.append(f'two processes were started with --process_id={other}')
      else:
        differ = [f'{k}: {a!r} vs {b!r}' for k, (a, b) in
                  paths.differences(hello['settings'], theirs.get('settings', {})).items()]
        if differ:
          problems.append(f'process {other} runs other settings than process 0: '
                          + '; '.join(differ[:5]) + (' ...' if len(differ) > 5 else ''))
      peers.setdefault(other, []).append(connection)
      if problems:
        break
    missing = sorted(set(range(1, num_processes)) - set(peers))
    error = ('; '.join(problems) if problems else
             f'processes {missing} of {num_processes} did not join process 0 at {address} {late}'
             if missing else '')
    for connections in peers.values():
      for connection in connections:
        try:
          _send(connection, {'error': error})
        except OSError:
          pass
        connection.close()
    if error:
      raise ValueError(error)


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
