"""Layer factories shared by every CNN in the zoo, so each can be swapped in one place.

All convolutions go through `conv` and all spatial pooling through `Pool` / `GlobalAvgPool`.
They compute with the operations of `jaxkd.ops.current()` when a model is traced (XLA's,
or on CPU by default `jaxkd.accel`'s formulations): same parameters, same maths.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxkd import ops

Dtype = Any


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
  operations (`jaxkd.ops.current()`) compute it.
  """
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
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
      conv_general_dilated=ops.current().conv_general_dilated,
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
    impl = ops.current()
    return (impl.max_pool if self.kind == 'max' else impl.avg_pool)(x, self.window)


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

