"""CPU accelerations: faster formulations of the `jaxkd.ops` seam, their compile function,
and the host-memory probes.

- `CpuOps` (`jaxkd.accel.cpu`): the seam on the CPU formulations of `conv` (2-D
  convolutions with custom VJPs), `pointwise` (1x1 channel mixes, `materialized`) and
  `pool` (reshape pooling). `jaxkd.ops` resolves to it on CPU by default.
- `compile`: `jit`, `jax.jit` with XLA:CPU's convolutions on its own kernels
  (`COMPILER_OPTIONS`, probed once per process); `CpuOps.jit` compiles with it, and so do
  `Parallel`, the teacher cache and `jaxkd.serving` through it.
- `hostmem`: which allocator serves this process and whether its large blocks sit on
  transparent huge pages (for a run's record).

Measurements behind each choice: docs/performance.md.
"""
from __future__ import annotations

from jaxkd.accel import hostmem as hostmem
from jaxkd.accel.compile import COMPILER_OPTIONS as COMPILER_OPTIONS
from jaxkd.accel.compile import jit as jit
from jaxkd.accel.compile import options_supported as options_supported
from jaxkd.accel.cpu import CpuOps as CpuOps
