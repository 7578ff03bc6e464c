"""Layer factories shared by every CNN in the zoo, so each can be swapped in one place.

All convolutions go through `conv` and all spatial pooling through `Pool` / `GlobalAvgPool`.

Implementations (same parameters, same maths; see `jaxkd.models.fastconv`):

- `CONV_IMPL`: `'xla'` (XLA's convolution throughout) or `'fast'` (`fastconv.conv2d`: a
  fused elementwise forward pass and col2im input gradient for few channels, and a kernel
  gradient that XLA:CPU cannot fuse into a slow transpose; steps compiled with `jit` run
  the convolutions on XLA's own kernels rather than YNNPACK's). `'auto'` (the default) is
  `'fast'` on CPU, where it wins, and `'xla'` on GPU/TPU.
- `POOL_IMPL`: `'xla'` (`nn.max_pool`/`nn.avg_pool`: reduce-window, select-and-scatter
  backward) or `'reshape'` (reshape + reduction, elementwise backward); `'auto'` is
  `'reshape'` on CPU, `'xla'` elsewhere.

Both are read when a model is traced (when `init`/`apply` runs under `jit`), from these
module attributes, whose defaults come from the environment variables `JAXKD_CONV_IMPL`
and `JAXKD_POOL_IMPL`. Set them before building steps: `layers.CONV_IMPL = 'xla'`.
"""
from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxkd.models import fastconv

Dtype = Any

CONV_IMPLS = ('auto', 'xla', 'fast')
POOL_IMPLS = ('auto', 'xla', 'reshape')
CPU_CONV_KERNELS_CHOICES = ('xla', 'ynnpack')
CONV_IMPL: str = os.environ.get('JAXKD_CONV_IMPL', 'auto')
POOL_IMPL: str = os.environ.get('JAXKD_POOL_IMPL', 'auto')
# With the fast convolutions on CPU, which kernels `jit` compiles them for: 'xla' (XLA's own,
# `fastconv.jit`) or 'ynnpack' (XLA:CPU's default library, plain `jax.jit`; the before/after
# baseline of `benchmarks/throughput.py --baseline-kernels`).
CPU_CONV_KERNELS: str = os.environ.get('JAXKD_CPU_CONV_KERNELS', 'xla')


_DESCRIBED = {'CONV_IMPL': 'conv implementation', 'POOL_IMPL': 'pool implementation',
              'CPU_CONV_KERNELS': 'CPU convolution kernels'}


def _check(setting: str, value: str, known: tuple[str, ...]) -> None:
  if value not in known:
    raise ValueError(f'Unknown {_DESCRIBED[setting]} {value!r}; choose one of {list(known)} '
                     f'(layers.{setting} or JAXKD_{setting}).')


def check_settings() -> None:
  """Raises ValueError for an unknown `CONV_IMPL`, `POOL_IMPL` or `CPU_CONV_KERNELS`, without
  starting JAX's backend (the experiment scripts call it before anything else)."""
  _check('CONV_IMPL', CONV_IMPL, CONV_IMPLS)
  _check('POOL_IMPL', POOL_IMPL, POOL_IMPLS)
  _check('CPU_CONV_KERNELS', CPU_CONV_KERNELS, CPU_CONV_KERNELS_CHOICES)


def _resolve(kind: str, value: str, known: tuple[str, ...], fast: str) -> str:
  _check(f'{kind.upper()}_IMPL', value, known)
  if value == 'auto':
    return fast if jax.default_backend() == 'cpu' else 'xla'
  return value


def conv_impl() -> str:
  """The convolution implementation `conv` builds now: `'xla'` or `'fast'`."""
  return _resolve('conv', CONV_IMPL, CONV_IMPLS, 'fast')


def jit(fn, **jit_kwargs):
  """`jax.jit(fn, **jit_kwargs)`; with the fast convolutions on CPU, `fastconv.jit`.

  Every step the library builds compiles through this (`Parallel.compile`, the teacher
  cache). Under `fastconv.jit`, XLA:CPU runs the convolutions on its own kernels instead of
  YNNPACK's and the kernel gradient is planned for them: ResNet-20's training step at
  batch 256 1169 -> 844 ms, LeNet-5-half's 14.4 -> 11.7 ms (AMD EPYC, `benchmarks/
  throughput.py --baseline-kernels`). Compile your own loops with it for the same speed.
  `CPU_CONV_KERNELS = 'ynnpack'` makes it plain `jax.jit`.
  """
  _check('CPU_CONV_KERNELS', CPU_CONV_KERNELS, CPU_CONV_KERNELS_CHOICES)
  if conv_impl() == 'fast' and CPU_CONV_KERNELS == 'xla' and jax.default_backend() == 'cpu':
    return fastconv.jit(fn, **jit_kwargs)
  return jax.jit(fn, **jit_kwargs)


def pool_impl() -> str:
  """The pooling implementation `Pool` uses now: `'xla'` or `'reshape'`."""
  return _resolve('pool', POOL_IMPL, POOL_IMPLS, 'reshape')


# PyTorch's kaiming_normal_(mode='fan_out', nonlinearity='relu'), as in the CRD/DKD repos.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def conv(
    features: int,
    kernel_size: int,
    *,
    strides: int = 1,
    padding: str | int = 'SAME',
    use_bias: bool = False,
    dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Module:
  """A square 2-D convolution over NHWC inputs; float32 parameters, `dtype` compute.

  Always an `nn.Conv` (parameters `kernel` [k, k, cin, cout] and `bias`), whichever
  `conv_impl()` computes it.
  """
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  fast = conv_impl() == 'fast'
  return nn.Conv(
      features,
      (kernel_size, kernel_size),
      strides=(strides, strides),
      padding=padding,
      use_bias=use_bias,
      kernel_init=conv_kernel_init,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
      conv_general_dilated=fastconv.conv_general_dilated if fast else None,
  )


def batch_norm(*, train: bool, dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Module:
  """BatchNorm with PyTorch's defaults (momentum 0.1 there is 0.9 here, eps 1e-5)."""
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


def dense(features: int, *, dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Module:
  """A dense layer with float32 parameters and `dtype` compute."""
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)


class Pool(nn.Module):
  """Non-overlapping `window`x`window` max or average pooling; a module, so it has a path."""

  kind: str = 'max'
  window: int = 2

  @nn.compact
  def __call__(self, x):
    if self.kind not in ('avg', 'max'):
      raise ValueError(f"Unknown pool kind {self.kind!r}; known: ['avg', 'max']")
    if pool_impl() == 'reshape':
      pool = fastconv.max_pool if self.kind == 'max' else fastconv.avg_pool
      return pool(x, self.window)
    shape = (self.window, self.window)
    pool = nn.max_pool if self.kind == 'max' else nn.avg_pool
    return pool(x, shape, strides=shape)


class GlobalAvgPool(nn.Module):
  """Mean over height and width: `[B, H, W, C] -> [B, C]`, accumulated in float32."""

  @nn.compact
  def __call__(self, x):
    return jnp.mean(x, axis=(1, 2), dtype=jnp.float32).astype(x.dtype)


class Tap(nn.Module):
  """The identity, under a name: makes a value that is no module's output (a pre-activation
  sum) readable as a feature tap (`jaxkd.models.features(..., 'stage1/preact')`). It has no
  parameters, so adding one renames nothing in a checkpoint."""

  @nn.compact
  def __call__(self, x):
    return x

