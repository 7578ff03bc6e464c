"""Trainable projectors that terms own (beside the student's parameters, never inside):
1x1 convolutions and a BatchNorm on the global batch's statistics.

On the CPU (`jaxkd.models.layers.conv_impl() == 'fast'`) they run the formulations XLA:CPU
runs well (`fastconv.pointwise`, buffers cut by `computed_once`); elsewhere XLA's own ops.
Same values either way (float32 round-off; tests/test_feature_terms.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxkd.models import fastconv, layers

BN_EPS = 1e-5


def conv1x1_init(key, c_in: int, c_out: int, *, bias: bool = True) -> dict:
  """A 1x1 convolution's `{kernel [c_in, c_out], bias}` (LeCun-normal kernel, zero bias)."""
  kernel = jax.nn.initializers.lecun_normal()(key, (c_in, c_out))
  return {'kernel': kernel, **({'bias': jnp.zeros((c_out,), jnp.float32)} if bias else {})}


def conv1x1(x: jax.Array, params: dict) -> jax.Array:
  """The 1x1 convolution of NHWC `x` (a matrix product over channels): on the models'
  convolution implementation (`jaxkd.models.layers.conv_impl`), `fastconv.pointwise`
  where that is `'fast'` (CPU), XLA's product elsewhere."""
  y = channel_mix(x, params['kernel'])
  return y + params['bias'] if 'bias' in params else y


def computed_once(v: jax.Array) -> jax.Array:
  """`v` computed into a buffer of its own before its consumers read it; differentiable.

  XLA:CPU (`conv_impl() == 'fast'`) fuses an elementwise chain into every consumer and
  recomputes it there: per-channel values (a margin from `erf`, a BatchNorm's `rsqrt`)
  once per element of a `[B, H, W, C]` map (OFD's two loss fusions on LeNet's first maps
  took 14 ms each), a hidden map of a regressor once per channel of the next 1x1
  convolution. Cut with `fastconv.materialized`; elsewhere `v` itself.
  """
  return fastconv.materialized(v) if layers.conv_impl() == 'fast' else v


def channel_mix(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`[..., C] x [C, O] -> [..., O]`, as `conv1x1` computes it (no bias)."""
  if layers.conv_impl() == 'fast':
    return fastconv.pointwise(x, kernel)
  return jnp.einsum('...c,cd->...d', x, kernel)


def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A SAME 3x3 convolution of NHWC `x` with an HWIO `kernel`, on the models' implementation
  (`layers.conv_impl`)."""
  conv = (fastconv.conv_general_dilated if layers.conv_impl() == 'fast'
          else jax.lax.conv_general_dilated)
  return conv(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


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

  One product with a column of ones appended (XLA:CPU ran `x^T x` alone 4.6x slower for
  `C = 3`: 2.28 ms vs 0.49 ms on `[200704, 3]`); its gradient `(x (G + G^T) + g) / N` is
  one channel mix, not XLA's two transposed products (2.1 ms each there).
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
