"""Trainable projectors that terms own (beside the student's parameters, never inside):
1x1 convolutions and a BatchNorm on the global batch's statistics.

They compute through the ops seam (`jaxkd.ops.current()`): on CPU by default the
formulations XLA:CPU runs well (`jaxkd.accel`), elsewhere XLA's own operations. Same values
either way (float32 round-off; tests/test_feature_terms.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxkd import ops

BN_EPS = 1e-5


def conv1x1_init(key, c_in: int, c_out: int, *, bias: bool = True) -> dict:
  """A 1x1 convolution's `{kernel [c_in, c_out], bias}` (LeCun-normal kernel, zero bias)."""
  kernel = jax.nn.initializers.lecun_normal()(key, (c_in, c_out))
  return {'kernel': kernel, **({'bias': jnp.zeros((c_out,), jnp.float32)} if bias else {})}


def conv1x1(x: jax.Array, params: dict) -> jax.Array:
  """The 1x1 convolution of NHWC `x` (a matrix product over channels), `channel_mix`."""
  y = channel_mix(x, params['kernel'])
  return y + params['bias'] if 'bias' in params else y


def computed_once(v: jax.Array) -> jax.Array:
  """`v` computed into a buffer of its own before its consumers read it; differentiable.

  XLA:CPU fuses an elementwise chain into every consumer and recomputes it there:
  per-channel values (a margin from `erf`, a BatchNorm's `rsqrt`) once per element of a
  `[B, H, W, C]` map, a hidden map of a regressor once per channel of the next 1x1
  convolution. `ops.current().materialize` cuts it where that helps; elsewhere `v` itself.
  """
  return ops.current().materialize(v)


def channel_mix(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`[..., C] x [C, O] -> [..., O]`, as `conv1x1` computes it (no bias)."""
  return ops.current().pointwise(x, kernel)


def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A SAME 3x3 convolution of NHWC `x` with an HWIO `kernel`, as the models compute theirs."""
  return ops.current().conv(x, kernel, padding=((1, 1), (1, 1)))


def batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, axis_name) -> jax.Array:
  """BatchNorm over the global batch's statistics (a connector used in training only)."""
  mean = jnp.mean(x, axis=(0, 1, 2))
  mean_sq = jnp.mean(x * x, axis=(0, 1, 2))
  if axis_name is not None:
    mean, mean_sq = jax.lax.pmean((mean, mean_sq), axis_name)
  return (x - mean) * jax.lax.rsqrt(mean_sq - mean * mean + BN_EPS) * scale + bias


@jax.custom_vjp
def _moments(flat: jax.Array) -> jax.Array:
  """`[N, C] -> [C, C + 1]`: the second moments `x^T x / N` beside the means `x^T 1 / N`.

  One product with a column of ones appended (XLA:CPU runs `x^T x` alone several times
  slower for few channels); its gradient `(x (G + G^T) + g) / N` is one channel mix, not
  XLA's two transposed products.
  """
  ones = jnp.ones((flat.shape[0], 1), flat.dtype)
  return jax.lax.dot_general(flat, jnp.concatenate([flat, ones], axis=1),
                             (((0,), (0,)), ((), ())),
                             precision=jax.lax.Precision.HIGHEST) / flat.shape[0]


def _moments_fwd(flat):
  return _moments(flat), flat


def _moments_bwd(flat, grad):
  second, mean = grad[:, :-1], grad[:, -1]
  return ((channel_mix(flat, second + second.T) + mean) / flat.shape[0],)


_moments.defvjp(_moments_fwd, _moments_bwd)


def conv1x1_batch_norm(x: jax.Array, kernel: jax.Array, scale: jax.Array, bias: jax.Array,
                       axis_name) -> jax.Array:
  """`batch_norm(conv1x1(x, {'kernel': kernel}), scale, bias, axis_name)` as one affine map.

  The batch statistics of a linear map of `x` follow from `x`'s channel means and second
  moments (`[C]` and `[C, C]`, one pass over `x`), so the normalisation folds into the
  kernel and a bias: `y = x (K * a) + (bias - mean_y * a)` with `a = scale / sd_y`. The
  same values (float32 round-off), without passes over the `[B, H, W, O]` output for its
  statistics or for their gradient.
  """
  moments = _moments(x.reshape(-1, x.shape[-1]).astype(jnp.promote_types(x.dtype, jnp.float32)))
  if axis_name is not None:
    moments = jax.lax.pmean(moments, axis_name)
  second, mean = moments[:, :-1], moments[:, -1]
  mean_y = mean @ kernel
  mean_sq_y = jnp.sum(kernel * (second @ kernel), axis=0)
  inv = jax.lax.rsqrt(mean_sq_y - mean_y * mean_y + BN_EPS) * scale
  return channel_mix(x, computed_once(kernel * inv)) + computed_once(bias - mean_y * inv)
