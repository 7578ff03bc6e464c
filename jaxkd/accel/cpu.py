"""`CpuOps`: the ops seam (`jaxkd.ops`) on the CPU formulations of `jaxkd.accel`."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd import ops
from jaxkd.accel import compile as _compile
from jaxkd.accel import conv, pointwise, pool


@dataclasses.dataclass(frozen=True)
class CpuOps(ops.Ops):
  """`jaxkd.ops.Ops` computed in the formulations XLA:CPU runs faster (same maths).

  Attributes:
    fast_conv: convolutions as `jaxkd.accel.conv`, channel mixes as `pointwise.pointwise`,
      `materialize` as `pointwise.materialized`; else XLA's.
    fast_pool: pooling as `jaxkd.accel.pool` (reshape and elementwise maxima/sums).
  Causal attention is always the probabilities then one product (`causal_attention`).
    own_kernels: `jit` compiles with `jaxkd.accel.compile.COMPILER_OPTIONS` (XLA's own
      convolution kernels) and the convolutions' kernel gradient is planned for them.
  """

  fast_conv: bool = True
  fast_pool: bool = True
  own_kernels: bool = False

  @property
  def conv_impl(self) -> str:
    return 'fast' if self.fast_conv else 'xla'

  @property
  def pool_impl(self) -> str:
    return 'reshape' if self.fast_pool else 'xla'

  def conv_general_dilated(self, lhs, rhs, window_strides, padding, **kwargs):
    if not self.fast_conv:
      return super().conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
    return conv.conv_general_dilated(lhs, rhs, window_strides, padding,
                                     own_kernels=self.own_kernels, **kwargs)

  def pointwise(self, x, kernel):
    return pointwise.pointwise(x, kernel) if self.fast_conv else super().pointwise(x, kernel)

  def materialize(self, v):
    return pointwise.materialized(v) if self.fast_conv else v

  def causal_attention(self, queries, keys, values):
    # The probabilities, then one product: XLA:CPU runs this forward and backward about 2x
    # faster than `jax.nn.dot_product_attention`'s own formulation (benchmarks/README.md).
    probs = ops.causal_attention_probs(queries, keys).astype(values.dtype)
    return jnp.einsum('bnlm,bmnh->blnh', probs, values)

  def max_pool(self, x, window: int):
    return pool.max_pool(x, window) if self.fast_pool else super().max_pool(x, window)

  def avg_pool(self, x, window: int):
    return pool.avg_pool(x, window) if self.fast_pool else super().avg_pool(x, window)

  def without_compiler_options(self) -> CpuOps:
    return dataclasses.replace(self, own_kernels=False)

  def jit(self, fn, **jit_kwargs):
    if not self.own_kernels:
      return jax.jit(self.bind(fn), **jit_kwargs)
    return _compile.jit(self.bind(fn), **jit_kwargs)

