"""Data parallelism for any step: `jax.jit` over a mesh (default), `jax.pmap`, `jax.shard_map`.

A step is written once as `fn(first, batch, *step_args, axis_name=None)`: `first` is the
student state (donated) or variables being evaluated, `batch` is split over devices,
`step_args` are read-only trees such as teacher variables (replicated, or sharded FSDP-style under `jit`).
Under `jit` XLA inserts the cross-device reductions, so `axis_name` is None; under `pmap` and
`shard_map` the step reduces with `lax.pmean`/`psum` over `axis_name` itself.

`pmap` does not mix with `jax.set_mesh`; this module never sets a global mesh, it passes
`NamedSharding`s explicitly, so the three modes stay apart.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from jaxkd import ops

MODES = ('jit', 'pmap', 'shard_map')


@dataclasses.dataclass(frozen=True)
class Parallel:
  """How a step is spread over devices.

  Attributes:
    mode: 'jit' (GSPMD over a mesh with NamedSharding), 'pmap' or 'shard_map'.
    num_devices: how many devices to use (default: all).
    axis: the mesh axis the batch is split over.
    shard_teacher: under 'jit', shard each teacher leaf's largest divisible dimension over
      the devices (FSDP-style) instead of replicating it, so a large teacher need not fit on
      one device; XLA gathers what each layer needs.
  """

  mode: str = 'jit'
  num_devices: int | None = None
  axis: str = 'data'
  shard_teacher: bool = False

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f'Unknown parallel mode {self.mode!r}; choose one of {MODES}.')
    if self.num_devices is not None:  # (a default Parallel() must not start the backend)
      available = jax.device_count()
      if not 1 <= self.num_devices <= available:
        raise ValueError(
            f'num_devices={self.num_devices} but {available} devices exist; pass a number in '
            f'1..{available} or None for all.')
    if self.shard_teacher and self.mode != 'jit':
      raise ValueError(f"shard_teacher=True needs mode='jit' (got {self.mode!r}).")

  @functools.cached_property
  def mesh(self) -> jax.sharding.Mesh:
    if jax.process_count() > 1:
      if self.mode == 'pmap':
        raise ValueError(f"parallel.mode='pmap' runs in one process, this run has "
                         f"{jax.process_count()}; use 'jit' (default) or 'shard_map'.")
      if self.num_devices not in (None, jax.device_count()):
        raise ValueError(f'num_devices={self.num_devices}: a run of {jax.process_count()} '
                         f'processes uses all {jax.device_count()} devices (pass 0 for all).')
    devices = jax.devices()[: self.size]
    return jax.make_mesh((len(devices),), (self.axis,), axis_types=(AxisType.Auto,),
                         devices=devices)

  @property
  def size(self) -> int:
    return self.num_devices or jax.device_count()

  @property
  def local_size(self) -> int:
    """Devices of this process in the mesh: a process feeds `local_size` shards per batch."""
    return self.size // jax.process_count()

  @property
  def axis_name(self) -> str | None:
    """The named axis a step reduces over itself: None under 'jit'."""
    return None if self.mode == 'jit' else self.axis

  def _sharding(self, spec: P) -> NamedSharding:
    return NamedSharding(self.mesh, spec)

  # --- compiling -------------------------------------------------------------------------

  def compile(self, fn: Callable, *, num_step_args: int = 0, donate: bool = True) -> Callable:
    """Compiles `fn(first, batch, *step_args, axis_name=...)` once for this mode.

    Returns a callable `(first, batch, *step_args) -> outputs`; every output is replicated
    (under pmap: stacked over devices, see `unreplicate`). It computes with the operations
    current now (`jaxkd.ops.current()`) and compiles with their compile function (on CPU
    by default `jaxkd.accel`'s, with XLA's own convolution kernels).
    """
    impl = ops.current()
    donate_argnums = (0,) if donate else ()
    if self.mode == 'jit':
      replicated = self._sharding(P())
      return impl.jit(functools.partial(fn, axis_name=None), donate_argnums=donate_argnums,
                      out_shardings=replicated)
    per_device = functools.partial(fn, axis_name=self.axis)
    if self.mode == 'pmap':  # (`jax.pmap` takes no compiler options: YNNPACK's kernels)
      return jax.pmap(impl.bind(per_device, compiler_options=False), axis_name=self.axis,
                      devices=list(self.mesh.devices.flat), donate_argnums=donate_argnums)
    in_specs = (P(), P(self.axis)) + (P(),) * num_step_args
    # check_vma=False gives pmap's semantics: gradients of replicated parameters stay
    # per-device until the step's own pmean (with it, autodiff would psum them already).
    mapped = jax.shard_map(per_device, mesh=self.mesh, in_specs=in_specs, out_specs=P(),
                           check_vma=False)
    return impl.jit(mapped, donate_argnums=donate_argnums)

  # --- placing data ----------------------------------------------------------------------

  def replicate(self, tree: Any) -> Any:
    """Places a tree on every device (under pmap: with a leading device axis). With several
    processes each passes the same values (from the host)."""
    if self.mode != 'pmap':
      if jax.process_count() > 1:
        tree = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
      return jax.device_put(tree, self._sharding(P()))
    sharding = self._sharding(P(self.axis))

    def stack(leaf):
      host = np.asarray(jax.device_get(leaf))
      return jax.make_array_from_callback((self.size,) + host.shape, sharding,
                                          lambda index: host[None])
    return jax.tree.map(stack, tree)

  def unreplicate(self, tree: Any) -> Any:
    """The single copy of a replicated tree (identity except under pmap)."""
    if self.mode != 'pmap':
      return tree
    return jax.tree.map(lambda x: x[0], tree)

  def shard_batch(self, batch: Any) -> Any:
    """Splits a batch's leading dimension over the devices.

    Host arrays are this process's share of the global batch; device arrays are taken as
    the global batch and resharded (with several processes: as this process's share, unless
    already placed over the mesh).
    """
    several = jax.process_count() > 1

    def put(x):
      global_batch = isinstance(x, jax.Array) and not several
      devices = self.size if global_batch else self.local_size
      if x.shape[0] % devices:
        raise ValueError(
            f'Batch dimension {x.shape[0]} is not divisible by {devices} devices; use a '
            f'batch size that is a multiple of the device count.')
      if self.mode == 'pmap':
        x = x.reshape((self.size, x.shape[0] // self.size) + x.shape[1:])
      sharding = self._sharding(P(self.axis))
      if isinstance(x, jax.Array) and several and not x.sharding.is_equivalent_to(
          sharding, x.ndim):
        x = np.asarray(x)  # this process's rows, on one of its devices
      if isinstance(x, jax.Array):
        if x.sharding.is_equivalent_to(sharding, x.ndim):
          # Already placed (e.g. by `batch_sharding`): a device_put would wait for the
          # array, stalling the host's dispatch of the next step (1-5 ms a step on CPU).
          return x
        return jax.device_put(x, sharding)
      return jax.make_array_from_process_local_data(sharding, np.asarray(x))
    return jax.tree.map(put, batch)

  def batch_sharding(self) -> NamedSharding | None:
    """Where `shard_batch` puts a global batch (None under pmap, which reshapes it): give
    it to an on-device input pipeline so its batches need no move."""
    return None if self.mode == 'pmap' else self._sharding(P(self.axis))

  def place_teacher(self, variables: Any) -> Any:
    """Replicates teacher variables, or shards them FSDP-style when `shard_teacher`."""
    if not self.shard_teacher:
      return self.replicate(variables)

    def put(leaf):
      dims = [d for d in np.argsort(leaf.shape)[::-1] if leaf.shape[d] % self.size == 0]
      spec = [None] * leaf.ndim
      if dims and leaf.shape[dims[0]] >= self.size:
        spec[dims[0]] = self.axis
      return jax.device_put(leaf, self._sharding(P(*spec)))
    return jax.tree.map(put, variables)
