"""2-D convolutions in formulations that XLA:CPU runs faster than its native one.

Same maths, same parameter layout (kernel `[kh, kw, cin, cout]`), different programs, with
a custom VJP (`conv2d`; `conv_general_dilated` is a drop-in for `lax.conv_general_dilated`
that `flax.linen.Conv` accepts):

* few multiply-adds per output (LeNet, a ResNet's stem and first 1x1 shortcut): the
  forward pass is one fused elementwise loop (`_direct`) instead of XLA's convolution, and
  the input gradient one matrix product whose columns are scattered back (col2im);
* many: XLA's convolutions forward and for the input gradient (col2im for a strided one,
  where XLA convolves a zero-dilated gradient), and for the kernel gradient either XLA's
  kernel-gradient convolution on a materialized copy of the input (`own_kernels`: compiled
  with `jaxkd.accel.compile`'s options) or one matrix product per kernel tap, in a loop
  (compiled for YNNPACK's convolutions). XLA:CPU computes that gradient as a convolution
  with batch and channels swapped, so it transposes the activation first, and it would
  fuse the activation's producers (BatchNorm, ReLU, the residual sum, blocks deep) into
  that transpose and recompute them in transposed, cache-hostile order: the materialized
  copy prevents it.

Anything these functions do not cover (dilation, feature groups, other layouts) falls back
to the native operation, so they are always safe to use. Why each plan: docs/performance.md.
"""
from __future__ import annotations

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxkd.accel.pointwise import channel_sum, materialized

_NHWC = ('NHWC', 'HWIO', 'NHWC')
Padding = tuple[tuple[int, int], tuple[int, int]]


def _is_nhwc(dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
  return tuple(dimension_numbers) == _NHWC


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None, *,
                         own_kernels: bool = False, strategy: Mapping[str, str] | None = None):
  """`lax.conv_general_dilated`, computed as `conv2d` for plain 2-D NHWC convolutions."""
  plain = (lhs.ndim == 4 and _is_nhwc(dimension_numbers) and feature_group_count == 1
           and batch_group_count == 1 and preferred_element_type is None
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1))))
  if not plain:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
  strides = tuple(int(s) for s in window_strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return conv2d(lhs, rhs, strides=strides, padding=padding, precision=precision,
                own_kernels=own_kernels, strategy=strategy)


def conv2d(x, kernel, *, strides: Sequence[int] = (1, 1), padding: Padding = ((0, 0), (0, 0)),
           precision=None, own_kernels: bool = False,
           strategy: Mapping[str, str] | None = None):
  """A 2-D NHWC convolution (cross-correlation) with explicit `padding` pairs.

  Args:
    x: `[B, H, W, C]`.
    kernel: `[kh, kw, C, O]`.
    strides: `(sh, sw)`.
    padding: `((top, bottom), (left, right))`, non-negative.
    precision: passed to the matrix products and XLA convolutions.
    own_kernels: the program compiles with `jaxkd.accel.compile`'s options (XLA's own
      convolution kernels); it picks the kernel gradient planned for them.
    strategy: overrides of `_plan`'s choices, e.g. `{'forward': 'direct'}` (tests).

  Returns:
    `[B, Ho, Wo, O]`, as `lax.conv_general_dilated` with NHWC/HWIO/NHWC.
  """
  return _conv2d(x, kernel, tuple(strides), tuple(map(tuple, padding)), precision,
                 bool(own_kernels), tuple(sorted((strategy or {}).items())))


def _native(x, kernel, strides, padding, precision):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC,
                                   precision=precision)


def _output_size(size: int, k: int, stride: int, pad: tuple[int, int]) -> int:
  return (size + pad[0] + pad[1] - k) // stride + 1


def _taps(x, kh: int, kw: int, strides, padding, out_hw):
  """The input under each kernel tap `(i, j)`, each `[B, Ho, Wo, C]`, row-major in (i, j)."""
  batch, _, _, channels = x.shape
  ho, wo = out_hw
  sh, sw = strides
  padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  return [lax.slice(padded, (0, i, j, 0),
                    (batch, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, channels),
                    (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]


def _direct(x, kernel, strides, padding, out_hw):
  """The convolution as one fused elementwise loop, `sum_{i,j,c} x_ij[..., c] * w[i, j, c]`.

  Each output element reads kh*kw*C inputs from cache; for few channels this beats XLA's
  convolution (tuned for many channels). Accumulates in float32; the result is
  materialized, so consumers read it instead of re-running the loop.
  """
  kh, kw = kernel.shape[:2]
  kernel = kernel.astype(jnp.float32)
  acc = None
  for t, tap in enumerate(_taps(x.astype(jnp.float32), kh, kw, strides, padding, out_hw)):
    term = channel_sum(tap, kernel[divmod(t, kw)])
    acc = term if acc is None else acc + term
  return materialized(acc).astype(x.dtype)


def _col2im_input_grad(grad, kernel, x_shape, strides, padding, precision):
  """dL/dx as one matrix product and a scatter of its columns back onto the input.

  `dP = dY W^T` is `[B, Ho, Wo, kh*kw*C]`; tap `(i, j)`'s columns are padded (interior
  padding for strides > 1) to where that tap read the input, and summed.
  """
  kh, kw, channels, cout = kernel.shape
  _, height, width, _ = x_shape
  ho, wo = grad.shape[1:3]
  sh, sw = strides
  dpatches = lax.dot_general(grad, kernel.reshape(-1, cout), (((3,), (1,)), ((), ())),
                             precision=precision)
  padded_h = height + padding[0][0] + padding[0][1]
  padded_w = width + padding[1][0] + padding[1][1]
  zero = jnp.zeros((), grad.dtype)
  acc = None
  for t in range(kh * kw):
    i, j = divmod(t, kw)
    piece = dpatches[..., t * channels:(t + 1) * channels]
    config = ((0, 0, 0),
              (i, padded_h - i - (ho - 1) * sh - 1, sh - 1),
              (j, padded_w - j - (wo - 1) * sw - 1, sw - 1),
              (0, 0, 0))
    placed = lax.pad(piece, zero, config)
    acc = placed if acc is None else acc + placed
  return materialized(
      acc[:, padding[0][0]:padding[0][0] + height, padding[1][0]:padding[1][0] + width, :])


def _tap_loop_kernel_grad(x, grad, kernel_shape, strides, padding, precision):
  """dL/dW one kernel tap at a time: `dW[i, j] = X_ij^T dY`, in a loop over the taps.

  `X_ij` is the input under tap `(i, j)` at every output position, `[B*Ho*Wo, C]`, sliced
  from the padded input inside the loop body, so that each product reads two plain
  buffers: XLA:CPU runs a product whose operand is a fused slice, or its own kernel-
  gradient convolution (a transpose of the input, then a convolution with batch and
  channels swapped), slower. Both operands contract their leading (positions) axis as
  they lie, with no transpose of the output gradient.
  """
  kh, kw, cin, cout = kernel_shape
  batch = x.shape[0]
  ho, wo = grad.shape[1:3]
  sh, sw = strides
  # Products in float32 (XLA:CPU has no bfloat16 x bfloat16 -> float32 product, and a sum
  # over every output position in bfloat16 would lose the gradient's low bits).
  padded = jnp.pad(x.astype(jnp.float32), ((0, 0), padding[0], padding[1], (0, 0)))
  dy = grad.astype(jnp.float32).reshape(-1, cout)

  def tap(t, acc):
    i, j = t // kw, t % kw
    window = lax.dynamic_slice(padded, (0, i, j, 0),
                               (batch, (ho - 1) * sh + 1, (wo - 1) * sw + 1, cin))
    window = window[:, ::sh, ::sw, :].reshape(-1, cin)
    product = lax.dot_general(window, dy, (((0,), (0,)), ((), ())),  # [cin, cout]
                              precision=precision)
    return lax.dynamic_update_slice(acc, product[None], (t, 0, 0))

  acc = lax.fori_loop(0, kh * kw, tap, jnp.zeros((kh * kw, cin, cout), jnp.float32))
  return acc.reshape(kh, kw, cin, cout)


# `_direct` is used up to this many multiply-adds per output element (kh*kw*cin*cout):
# LeNet-5-half's convolutions (75, 600), LeNet-5's first (150), a CIFAR ResNet's stem (432)
# and first 1x1 shortcut (512) are below it; LeNet-5's second (2400) and the 3x3
# convolutions of ResNet stages (2304 and up) are above, where XLA's convolution wins.
DIRECT_MAX_MACS = 1024


def _plan(kernel_shape, dtype=jnp.float32, strides=(1, 1), own_kernels=False,
          strategy=()) -> dict[str, str]:
  """Which formulation each of the three products uses for this kernel shape, dtype and
  strides, and whether XLA runs convolutions on its own kernels (`own_kernels`).

  forward: 'direct' or 'xla'. input_grad: 'col2im' or 'xla'. kernel_grad: 'xla' (XLA's
  kernel-gradient convolution), 'xla_mat' (the same, on a materialized copy of the input)
  or 'taps' (a product per kernel tap, `_tap_loop_kernel_grad`). `strategy`: overrides.
  """
  kh, kw, cin, cout = kernel_shape
  if kh * kw * cin * cout <= DIRECT_MAX_MACS:
    # Many input channels (a ResNet's first 1x1 shortcut reads the whole first stage's
    # output): the kernel gradient reads a materialized input, as below; few (an image,
    # LeNet's maps) have no chain of producers worth cutting.
    plan = {'forward': 'direct', 'input_grad': 'col2im',
            'kernel_grad': 'xla_mat' if cin > 8 else 'xla'}
  else:
    # The tap loop beats YNNPACK's kernel-gradient convolutions, not XLA's own kernels; its
    # products run in float32, and for 16-bit inputs the upcasts cost more than they save;
    # with few input channels its products are too thin to pay for it.
    taps = not own_kernels and jnp.dtype(dtype) == jnp.float32 and cin > 8
    # Strided (a ResNet stage's first convolution): XLA:CPU's input gradient is a
    # convolution over the zero-dilated output gradient; col2im instead.
    strided = tuple(strides) != (1, 1)
    plan = {'forward': 'xla', 'input_grad': 'col2im' if strided else 'xla',
            'kernel_grad': 'taps' if taps else 'xla_mat'}
  return {**plan, **dict(strategy)}


def _forward(x, kernel, strides, padding, precision, plan):
  if plan['forward'] == 'direct':
    out_hw = tuple(_output_size(n, k, s, p) for n, k, s, p in
                   zip(x.shape[1:3], kernel.shape[:2], strides, padding))
    return _direct(x, kernel, strides, padding, out_hw)
  return _native(x, kernel, strides, padding, precision)


# `own_kernels`, `strategy` (static): what `_plan` decides with.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv2d(x, kernel, strides, padding, precision, own_kernels, strategy):
  return _forward(x, kernel, strides, padding, precision,
                  _plan(kernel.shape, x.dtype, strides, own_kernels, strategy))


def _conv2d_fwd(x, kernel, strides, padding, precision, own_kernels, strategy):
  plan = _plan(kernel.shape, x.dtype, strides, own_kernels, strategy)
  if plan['kernel_grad'] in ('xla_mat', 'taps'):
    # The forward pass reads the same buffer as the kernel gradient, not one of its own.
    x = materialized(x)
  y = _forward(x, kernel, strides, padding, precision, plan)
  return y, (x, kernel)


def _conv2d_bwd(strides, padding, precision, own_kernels, strategy, residuals, grad):
  x, kernel = residuals
  plan = _plan(kernel.shape, x.dtype, strides, own_kernels, strategy)
  if plan['kernel_grad'] == 'taps':
    dkernel = _tap_loop_kernel_grad(x, grad, kernel.shape, strides, padding, precision)
  else:
    _, kernel_vjp = jax.vjp(lambda k: _native(x, k, strides, padding, precision), kernel)
    (dkernel,) = kernel_vjp(grad)
  if plan['input_grad'] == 'col2im':
    dx = _col2im_input_grad(grad, kernel, x.shape, strides, padding, precision)
  else:
    _, input_vjp = jax.vjp(lambda x: _native(x, kernel, strides, padding, precision), x)
    (dx,) = input_vjp(grad)
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
