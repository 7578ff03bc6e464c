"""Layer factories shared by every CNN in the zoo, so each can be swapped in one place.

All convolutions go through `conv` and all spatial pooling through `Pool` / `GlobalAvgPool`:
a faster CPU convolution (im2col + matmul, say) or pooling backward pass replaces one
function here, not every model.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

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
  """A square 2-D convolution over NHWC inputs; float32 parameters, `dtype` compute."""
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
    shape = (self.window, self.window)
    if self.kind == 'max':
      return nn.max_pool(x, shape, strides=shape)
    if self.kind == 'avg':
      return nn.avg_pool(x, shape, strides=shape)
    raise ValueError(f"Unknown pool kind {self.kind!r}; known: ['avg', 'max']")


class GlobalAvgPool(nn.Module):
  """Mean over height and width: `[B, H, W, C] -> [B, C]`, accumulated in float32."""

  @nn.compact
  def __call__(self, x):
    return jnp.mean(x, axis=(1, 2), dtype=jnp.float32).astype(x.dtype)
