"""Non-overlapping pooling as a reshape and elementwise maxima or sums.

The backward pass of max pooling is an elementwise mask (the first maximum of each window,
exactly as `nn.max_pool`'s gradient), not XLA's select-and-scatter.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _windows(x, window: int):
  """`[B, H, W, C] -> [B, H//k, k, W//k, k, C]`, dropping the rows/columns a VALID pool drops."""
  batch, height, width, channels = x.shape
  ho, wo = height // window, width // window
  x = x[:, :ho * window, :wo * window, :]
  return x.reshape(batch, ho, window, wo, window, channels)


def max_pool(x, window: int):
  """`nn.max_pool(x, (k, k), strides=(k, k))` (VALID) with an elementwise backward pass."""
  return _max_pool(x, window)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x, window):
  # Elementwise maxima of the window's slices rather than a reduction: XLA:CPU hands
  # reductions (with the convolution fused into them) to a library that runs them slower.
  windows = _windows(x, window)
  y = None
  for i in range(window):
    for j in range(window):
      y = windows[:, :, i, :, j, :] if y is None else jnp.maximum(y, windows[:, :, i, :, j, :])
  return y


def _max_pool_fwd(x, window):
  y = _max_pool(x, window)
  return y, (x, y)


def _max_pool_bwd(window, residuals, grad):
  x, y = residuals
  windows = _windows(x, window)
  taken = jnp.zeros(y.shape, bool)
  rows = []
  for i in range(window):
    row = []
    for j in range(window):
      # The first maximum in row-major window order gets the gradient, as XLA's
      # select-and-scatter does for nn.max_pool.
      hit = (windows[:, :, i, :, j, :] == y) & ~taken
      taken = taken | hit
      row.append(jnp.where(hit, grad, jnp.zeros((), grad.dtype)))
    rows.append(jnp.stack(row, axis=3))
  dx = jnp.stack(rows, axis=2).reshape(y.shape[0], y.shape[1] * window, y.shape[2] * window,
                                       y.shape[3])
  pad = ((0, 0), (0, x.shape[1] - dx.shape[1]), (0, x.shape[2] - dx.shape[2]), (0, 0))
  return (jnp.pad(dx, pad),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def avg_pool(x, window: int):
  """`nn.avg_pool(x, (k, k), strides=(k, k))` (VALID) as a sum of the window's slices."""
  windows = _windows(x, window)
  total = sum(windows[:, :, i, :, j, :] for i in range(window) for j in range(window))
  return total / (window * window)
