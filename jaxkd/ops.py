"""The operations models and projectors compute with: convolution, channel mix, pooling,
causal attention.

Models (`jaxkd.models.layers`) and loss projectors (`jaxkd.losses.projectors`) write plain
JAX through this seam, `ops.current().conv(...)`, and never name an implementation:

- `Ops` (`XLA`): XLA's own operations, the plain path.
- `jaxkd.accel.CpuOps`: the same maths in formulations XLA:CPU runs faster, compiled with
  its own convolution kernels. The default on CPU.

Which one `current()` returns follows from facts and explicit settings, never from state a
caller cannot see:

1. `with ops.use(impl):` what is built and traced inside the block (a benchmark's
   baseline, a test comparing the two paths);
2. otherwise the settings read once from the environment when this module is imported,
   `SETTINGS` (`JAXKD_CONV_IMPL`: auto | xla | fast; `JAXKD_POOL_IMPL`: auto | xla |
   reshape; `JAXKD_CPU_CONV_KERNELS`: xla | ynnpack), resolved on the backend's platform
   (`auto`: the CPU formulations on CPU, XLA's operations elsewhere).

A step compiled with `impl.jit` (`Parallel.compile`, the teacher cache) traces with `impl`,
the implementation current when it was built, whenever JAX traces it.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

NHWC = ('NHWC', 'HWIO', 'NHWC')
CONV_IMPLS = ('auto', 'xla', 'fast')
POOL_IMPLS = ('auto', 'xla', 'reshape')
CPU_CONV_KERNELS = ('xla', 'ynnpack')


@dataclasses.dataclass(frozen=True)
class Settings:
  """Which implementation `resolve` builds.

  Attributes:
    conv: 'xla' (XLA's convolution and channel mix), 'fast' (`jaxkd.accel`'s) or 'auto'
      ('fast' on CPU).
    pool: 'xla' (reduce-window) or 'reshape' (`jaxkd.accel`'s) or 'auto' ('reshape' on CPU).
    cpu_conv_kernels: with the fast convolutions on CPU, which kernels steps compile for:
      'xla' (XLA's own, `jaxkd.accel.compile`) or 'ynnpack' (XLA:CPU's default library,
      plain `jax.jit`).
  """

  conv: str = 'auto'
  pool: str = 'auto'
  cpu_conv_kernels: str = 'xla'

  @classmethod
  def from_env(cls, environ: Mapping[str, str]) -> Settings:
    return cls(conv=environ.get('JAXKD_CONV_IMPL', 'auto'),
               pool=environ.get('JAXKD_POOL_IMPL', 'auto'),
               cpu_conv_kernels=environ.get('JAXKD_CPU_CONV_KERNELS', 'xla'))

  def check(self) -> Settings:
    """Raises ValueError naming the setting, the valid values and the variable to set."""
    for value, known, what, variable in (
        (self.conv, CONV_IMPLS, 'conv implementation', 'JAXKD_CONV_IMPL'),
        (self.pool, POOL_IMPLS, 'pool implementation', 'JAXKD_POOL_IMPL'),
        (self.cpu_conv_kernels, CPU_CONV_KERNELS, 'CPU convolution kernels',
         'JAXKD_CPU_CONV_KERNELS')):
      if value not in known:
        raise ValueError(f'Unknown {what} {value!r}; choose one of {list(known)} ({variable}).')
    return self


SETTINGS = Settings.from_env(os.environ)


def check_settings() -> None:
  """Raises ValueError for an unknown setting in `SETTINGS`, without starting JAX's backend
  (the experiment scripts call it before anything else)."""
  SETTINGS.check()


def causal_attention_probs(queries: jax.Array, keys: jax.Array) -> jax.Array:
  """Causal `softmax(q k^T / sqrt(head_dim))`: `[B, L, N, H] x2 -> float32 [B, N, L, L]`."""
  scores = jnp.einsum('blnh,bmnh->bnlm', queries, keys, preferred_element_type=jnp.float32)
  length = queries.shape[1]
  causal = jnp.tril(jnp.ones((length, length), bool))
  scores = jnp.where(causal, scores / math.sqrt(queries.shape[-1]), -jnp.inf)
  return jax.nn.softmax(scores, axis=-1)


@dataclasses.dataclass(frozen=True)
class Ops:
  """XLA's own operations (NHWC activations, HWIO kernels), compiled with `jax.jit`."""

  conv_impl = 'xla'  # what a run records (`jaxkd.export`, the benchmarks)
  pool_impl = 'xla'

  def conv_general_dilated(self, lhs, rhs, window_strides, padding, **kwargs):
    """`lax.conv_general_dilated`; `flax.linen.Conv` takes it as `conv_general_dilated`."""
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)

  def conv(self, x, kernel, *, strides: Sequence[int] = (1, 1), padding='SAME'):
    """A 2-D convolution of `x` `[B, H, W, C]` with `kernel` `[kh, kw, C, O]`; `padding` is
    'SAME', 'VALID' or `((top, bottom), (left, right))`."""
    return self.conv_general_dilated(x, kernel, tuple(strides), padding,
                                     dimension_numbers=NHWC)

  def pointwise(self, x, kernel):
    """A 1x1 convolution: `x`'s last axis mixed by `kernel`, `[..., C] x [C, O] -> [..., O]`."""
    return jnp.einsum('...c,cd->...d', x, kernel)

  def materialize(self, v):
    """`v`, computed into a buffer of its own where that helps its consumers; the same
    values, differentiable."""
    return v

  def causal_attention(self, queries, keys, values):
    """Causal multi-head attention, `[B, L, N, H] x3 -> [B, L, N, H]`, through
    `jax.nn.dot_product_attention` (fused kernels where the platform has them)."""
    return jax.nn.dot_product_attention(queries, keys, values, is_causal=True)

  def max_pool(self, x, window: int):
    """Non-overlapping `window`x`window` max pooling of `[B, H, W, C]` (VALID)."""
    return nn.max_pool(x, (window, window), strides=(window, window))

  def avg_pool(self, x, window: int):
    """Non-overlapping `window`x`window` average pooling of `[B, H, W, C]` (VALID)."""
    return nn.avg_pool(x, (window, window), strides=(window, window))

  def bind(self, fn, *, compiler_options: bool = True):
    """`fn`, traced with these operations whenever JAX traces it. `compiler_options=False`:
    for a program compiled without `jit`'s compiler options (`jax.pmap`)."""
    impl = self if compiler_options else self.without_compiler_options()

    @functools.wraps(fn)
    def traced(*args, **kwargs):
      with use(impl):
        return fn(*args, **kwargs)

    # (a partial has no name of its own: profiles and logs then show its function's)
    traced.__name__ = getattr(fn, '__name__', getattr(getattr(fn, 'func', None), '__name__',
                                                      'traced'))
    return traced

  def without_compiler_options(self) -> Ops:
    """These operations as traced for a plain `jax.jit`/`jax.pmap`."""
    return self

  def jit(self, fn, **jit_kwargs):
    """`jax.jit(self.bind(fn), **jit_kwargs)`: the compile function for these operations."""
    return jax.jit(self.bind(fn), **jit_kwargs)


XLA = Ops()
_EXPLICIT: contextvars.ContextVar[Ops | None] = contextvars.ContextVar('jaxkd_ops',
                                                                        default=None)


def resolve(settings: Settings, platform: str | None = None) -> Ops:
  """The operations `settings` name on `platform` (default: the backend's)."""
  settings.check()
  platform = platform or jax.default_backend()
  conv = settings.conv if settings.conv != 'auto' else ('fast' if platform == 'cpu' else 'xla')
  pool = (settings.pool if settings.pool != 'auto'
          else ('reshape' if platform == 'cpu' else 'xla'))
  if (conv, pool) == ('xla', 'xla'):
    return XLA
  from jaxkd import accel  # the CPU formulations plug in here
  return accel.CpuOps(fast_conv=conv == 'fast', fast_pool=pool == 'reshape',
                      own_kernels=(conv == 'fast' and settings.cpu_conv_kernels == 'xla'
                                   and platform == 'cpu' and accel.options_supported()))


@functools.cache
def _default(settings: Settings, platform: str) -> Ops:
  return resolve(settings, platform)


def default() -> Ops:
  """The operations `SETTINGS` name on this backend."""
  return _default(SETTINGS, jax.default_backend())


def configured(**changes) -> Ops:
  """The operations of `SETTINGS` with `changes`, e.g. `configured(conv='xla', pool='xla')`."""
  return resolve(dataclasses.replace(SETTINGS, **changes))


def current() -> Ops:
  """The operations to build and trace with now: `use`'s, else `default()`."""
  explicit = _EXPLICIT.get()
  return explicit if explicit is not None else default()


@contextlib.contextmanager
def use(impl: Ops):
  """Builds and traces with `impl` inside the block (this thread only)."""
  if not isinstance(impl, Ops):
    raise TypeError(f'ops.use takes an Ops (ops.XLA, ops.configured(...)); got {impl!r}.')
  token = _EXPLICIT.set(impl)
  try:
    yield impl
  finally:
    _EXPLICIT.reset(token)


__all__ = ['CONV_IMPLS', 'CPU_CONV_KERNELS', 'NHWC', 'Ops', 'POOL_IMPLS', 'SETTINGS',
           'Settings', 'XLA', 'causal_attention_probs', 'check_settings', 'configured',
           'current', 'default', 'resolve', 'use']
