"""Trainable projectors that terms own (beside the student's parameters, never inside):
1x1 convolutions and a BatchNorm on the global batch's statistics."""
from __future__ import annotations

import jax
import jax.numpy as jnp

BN_EPS = 1e-5


def conv1x1_init(key, c_in: int, c_out: int, *, bias: bool = True) -> dict:
  """A 1x1 convolution's `{kernel [c_in, c_out], bias}` (LeCun-normal kernel, zero bias)."""
  kernel = jax.nn.initializers.lecun_normal()(key, (c_in, c_out))
  return {'kernel': kernel, **({'bias': jnp.zeros((c_out,), jnp.float32)} if bias else {})}


def conv1x1(x: jax.Array, params: dict) -> jax.Array:
  """The 1x1 convolution of NHWC `x` (a matrix product over channels)."""
  y = jnp.einsum('bhwc,cd->bhwd', x, params['kernel'])
  return y + params['bias'] if 'bias' in params else y


def batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, axis_name) -> jax.Array:
  """BatchNorm over the global batch's statistics (a connector used in training only)."""
  mean = jnp.mean(x, axis=(0, 1, 2))
  mean_sq = jnp.mean(x * x, axis=(0, 1, 2))
  if axis_name is not None:
    mean, mean_sq = jax.lax.pmean((mean, mean_sq), axis_name)
  return (x - mean) * jax.lax.rsqrt(mean_sq - mean * mean + BN_EPS) * scale + bias
