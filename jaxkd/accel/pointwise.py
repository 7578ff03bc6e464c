"""Channel mixes XLA:CPU runs well: a 1x1 convolution with its own VJP, and `materialized`."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


@jax.custom_vjp
def materialized(y):
  """`y`, computed once into a buffer of its own; the same values.

  XLA:CPU fuses elementwise producers into every consumer and recomputes them there, and
  it removes `optimization_barrier`s; it never fuses a matrix product into its consumers.
  So `y` goes through a product with the identity. Without this cut, the kernel gradient's
  transpose of a ResNet activation recomputes its BatchNorm/ReLU/residual chain (several
  blocks deep) in transposed order, and a ReLU's or max-pool's consumers recompute a
  direct convolution at strided positions, several times slower.

  Few channels: `y`'s bits times the identity, as integers (exact, NaN and inf included);
  a floating-point product here would go to XLA's library fusion, which pulls the producers
  back in and runs them slowly. Many channels: a floating-point product with the identity
  (exact for finite values), which that library runs well while XLA's integer product is
  slow. Differentiable: the gradient passes through unchanged.
  """
  channels = y.shape[-1]
  if channels > 8:
    eye = jnp.eye(channels, dtype=y.dtype)
    return lax.dot_general(y, eye, (((y.ndim - 1,), (0,)), ((), ())),
                           precision=lax.Precision.HIGHEST)
  ints = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[jnp.dtype(y.dtype).itemsize]
  if ints == jnp.int16:  # 16-bit floats travel as float32 (exactly)
    return materialized(y.astype(jnp.float32)).astype(y.dtype)
  bits = lax.bitcast_convert_type(y, ints)
  eye = jnp.eye(channels, dtype=ints)
  bits = lax.dot_general(bits, eye, (((y.ndim - 1,), (0,)), ((), ())))
  return lax.bitcast_convert_type(bits, y.dtype)


materialized.defvjp(lambda y: (materialized(y), None), lambda _, grad: (grad,))


def channel_sum(x, kernel):
  """`sum_c x[..., c:c+1] * kernel[c]`: `[..., C] x [C, O] -> [..., O]` as elementwise terms."""
  acc = None
  for c in range(kernel.shape[0]):
    term = x[..., c:c + 1] * kernel[c]
    acc = term if acc is None else acc + term
  return acc


# Up to this many input channels the forward product (output channels: the input gradient)
# is an elementwise loop over the channels, one fused pass; above, a matrix product.
POINTWISE_DIRECT_MAX = 8


def pointwise(x, kernel, *, precision=None):
  """`x`'s last axis mixed by `kernel`: `[..., C] x [C, O] -> [..., O]`, a 1x1 convolution.

  The same values as `jnp.einsum('...c,co->...o', x, kernel)` (float32 round-off), with a
  custom VJP. XLA:CPU runs skinny products (few channels, ~10^5 positions) slowly in both
  directions and, differentiating the einsum, transposes the activation and its gradient
  before the kernel gradient's product. Here few channels are mixed by one fused
  elementwise loop, and the kernel gradient is one product that contracts the positions of
  both operands in place.
  """
  return _pointwise(x, kernel, precision)


def _mix(x, kernel, precision):
  dtype = jnp.result_type(x, kernel)
  if kernel.shape[0] > POINTWISE_DIRECT_MAX:
    return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())),
                           precision=precision).astype(dtype)
  return channel_sum(x.astype(jnp.float32), kernel.astype(jnp.float32)).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pointwise(x, kernel, precision):
  return _mix(x, kernel, precision)


def _pointwise_fwd(x, kernel, precision):
  return _mix(x, kernel, precision), (x, kernel)


def _pointwise_bwd(precision, residuals, grad):
  x, kernel = residuals
  dx = _mix(grad, kernel.T, precision)
  dkernel = lax.dot_general(x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1]),
                            (((0,), (0,)), ((), ())), precision=precision,
                            preferred_element_type=jnp.float32)
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)
