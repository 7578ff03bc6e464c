"""Convolution and pooling formulations that XLA:CPU runs faster than its native ones.

Same maths, same parameter layout (kernel `[kh, kw, cin, cout]`), different programs:

- `conv_general_dilated`: a drop-in for `lax.conv_general_dilated` (Flax's `nn.Conv`
  accepts it) for plain 2-D NHWC convolutions, with a custom VJP:
  * few channels (LeNet, a ResNet's stem): the forward pass is one fused elementwise loop
    instead of XLA's convolution, and the input gradient one matrix product whose columns
    are scattered back (col2im);
  * many channels: XLA's convolutions forward and for the input gradient (col2im for a
    strided one, where XLA convolves a zero-dilated gradient), and XLA's kernel-gradient
    convolution on a materialized copy of the input. XLA:CPU computes that gradient as a
    convolution with batch and channels swapped, so it transposes the activation first,
    and it would fuse the activation's producers (BatchNorm, ReLU, the residual sum, blocks
    deep) into that transpose and recompute them in transposed, cache-hostile order. A
    ResNet's first 1x1 shortcut (few multiply-adds, many input channels) also reads a
    materialized input for its kernel gradient.
- `jit`: `jax.jit` with `COMPILER_OPTIONS`, under which XLA:CPU runs convolutions with its
  own kernels instead of the YNNPACK library's (1.4-1.9x faster for a ResNet's stages).
  The library's steps compile this way on CPU (`layers.jit`). Traced without these
  options, the kernel gradient above is instead one matrix product per kernel tap, in a
  loop (float32, more than 8 input channels), which beats YNNPACK's convolutions there.
- `pointwise`: a 1x1 convolution (`[..., C] x [C, O]`, the distillation terms'
  connectors and regressors) with a custom VJP: an elementwise channel mix for few
  channels, the kernel gradient as one product over the positions, no transposes.
- `materialized`: a value computed into its own buffer (XLA:CPU otherwise recomputes an
  elementwise chain inside every consumer); the identity, with its gradient.
- `max_pool` / `avg_pool`: non-overlapping pooling as a reshape and a reduction. The
  backward pass of max pooling is an elementwise mask (the first maximum of each window,
  exactly as `nn.max_pool`'s gradient), not XLA's select-and-scatter.

Anything these functions do not cover (dilation, feature groups, other layouts) falls back
to the native operation, so they are always safe to use.
"""
from __future__ import annotations

import functools
import threading
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ('NHWC', 'HWIO', 'NHWC')
Padding = tuple[tuple[int, int], tuple[int, int]]


# --- compiling ----------------------------------------------------------------------------

# XLA:CPU's default library offload (YNNPACK: single dot products, float32 convolutions and
# reductions), minus the convolutions, which then run on XLA's own (Eigen) kernels. Alone,
# at batch 256 (AMD EPYC, AVX2, 2 cores): 3x3 convolutions of 32 channels at 16x16 17 ->
# 9 ms, 64 at 8x8 16 -> 9 ms; their input gradients alike. In ResNet-20's training step,
# with the kernel gradient below: 1169 -> 844 ms (`benchmarks/throughput.py
# --baseline-kernels`, 2026-12-03).
COMPILER_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type':
                    'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}
_TRACING = threading.local()


@functools.cache
def _options_supported() -> bool:
  """Whether this jaxlib's CPU compiler accepts `COMPILER_OPTIONS` (a newer one may not)."""
  try:
    jax.jit(lambda x: x + 1).lower(jnp.zeros((), jnp.float32)).compile(
        compiler_options=COMPILER_OPTIONS)
  except Exception:  # noqa: BLE001 - any refusal means: compile without them
    return False
  return True


def jit(fn, **jit_kwargs):
  """`jax.jit(fn, **jit_kwargs)`, compiled with `COMPILER_OPTIONS` (XLA's own convolution
  kernels) and traced with the plans measured for them.

  For CPU programs; where this jaxlib refuses the options it is plain `jax.jit`.
  """
  if not _options_supported():
    return jax.jit(fn, **jit_kwargs)

  @functools.wraps(fn)
  def traced(*args, **kwargs):
    previous = getattr(_TRACING, 'own_kernels', False)
    _TRACING.own_kernels = True
    try:
      return fn(*args, **kwargs)
    finally:
      _TRACING.own_kernels = previous

  # (a partial has no name of its own: profiles and logs then show its function's)
  traced.__name__ = getattr(fn, '__name__', getattr(getattr(fn, 'func', None), '__name__',
                                                    'traced'))
  return jax.jit(traced, compiler_options=COMPILER_OPTIONS, **jit_kwargs)


def _own_kernels() -> bool:
  """Whether the program being traced compiles with `COMPILER_OPTIONS` (under `jit`)."""
  return getattr(_TRACING, 'own_kernels', False)


# --- convolution ---------------------------------------------------------------------------

def _is_nhwc(dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
  return tuple(dimension_numbers) == _NHWC


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
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
  return conv2d(lhs, rhs, strides=strides, padding=padding, precision=precision)


def conv2d(x, kernel, *, strides: Sequence[int] = (1, 1), padding: Padding = ((0, 0), (0, 0)),
           precision=None):
  """A 2-D NHWC convolution (cross-correlation) with explicit `padding` pairs.

  Args:
    x: `[B, H, W, C]`.
    kernel: `[kh, kw, C, O]`.
    strides: `(sh, sw)`.
    padding: `((top, bottom), (left, right))`, non-negative.
    precision: passed to the matrix products and XLA convolutions.

  Returns:
    `[B, Ho, Wo, O]`, as `lax.conv_general_dilated` with NHWC/HWIO/NHWC.
  """
  return _conv2d(x, kernel, tuple(strides), tuple(map(tuple, padding)), precision,
                 _own_kernels())


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


@jax.custom_vjp
def materialized(y):
  """`y`, computed once into a buffer of its own; the same values.

  XLA:CPU fuses elementwise producers into every consumer and recomputes them there, and
  it removes `optimization_barrier`s; it never fuses a matrix product into its consumers.
  So `y` goes through a product with the identity. Without this cut, the kernel gradient's
  transpose of a ResNet activation recomputes its BatchNorm/ReLU/residual chain (several
  blocks deep) in transposed order, and a ReLU's or max-pool's consumers recompute a
  `_direct` convolution at strided positions, several times slower.

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


def _direct(x, kernel, strides, padding, out_hw):
  """The convolution as one fused elementwise loop, `sum_{i,j,c} x_ij[..., c] * w[i, j, c]`.

  Each output element reads kh*kw*C inputs from cache. For few channels this beats XLA's
  convolution (tuned for many channels) by up to an order of magnitude. Accumulates in
  float32; the result is materialized, so consumers read it instead of re-running the loop.
  """
  kh, kw = kernel.shape[:2]
  kernel = kernel.astype(jnp.float32)
  acc = None
  for t, tap in enumerate(_taps(x.astype(jnp.float32), kh, kw, strides, padding, out_hw)):
    term = _channel_sum(tap, kernel[divmod(t, kw)])
    acc = term if acc is None else acc + term
  return materialized(acc).astype(x.dtype)


def _channel_sum(x, kernel):
  """`sum_c x[..., c:c+1] * kernel[c]`: `[..., C] x [C, O] -> [..., O]` as elementwise terms."""
  acc = None
  for c in range(kernel.shape[0]):
    term = x[..., c:c + 1] * kernel[c]
    acc = term if acc is None else acc + term
  return acc


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
  channels swapped), 1.3-3x slower (ResNet stages, batch 256). Both operands contract
  their leading (positions) axis as they lie: with the output gradient transposed once to
  `[cout, positions]` instead, as this loop first did, ResNet-20's training step took
  1.51 s against 1.11 s (AMD EPYC, batch 256, 9 interleaved windows).
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
# Tests force a plan here, e.g. {'forward': 'direct'}; empty in normal use.
STRATEGY: dict[str, str] = {}


def _plan(kernel_shape, dtype=jnp.float32, strides=(1, 1),
          own_kernels=False) -> dict[str, str]:
  """Which formulation each of the three products uses for this kernel shape, dtype and
  strides, and whether XLA runs convolutions on its own kernels (`COMPILER_OPTIONS`).

  forward: 'direct' or 'xla'. input_grad: 'col2im' or 'xla'. kernel_grad: 'xla' (XLA's
  kernel-gradient convolution), 'xla_mat' (the same, on a materialized copy of the input)
  or 'taps' (a product per kernel tap, `_tap_loop_kernel_grad`).
  """
  kh, kw, cin, cout = kernel_shape
  if kh * kw * cin * cout <= DIRECT_MAX_MACS:
    # Many input channels (a ResNet's first 1x1 shortcut reads the whole first stage's
    # output): the kernel gradient reads a materialized input, as below; few (an image,
    # LeNet's maps) have no chain of producers worth cutting.
    plan = {'forward': 'direct', 'input_grad': 'col2im',
            'kernel_grad': 'xla_mat' if cin > 8 else 'xla'}
  else:
    # XLA's own kernels: its kernel-gradient convolution on a materialized input; ResNet-20's
    # training step 0.99-1.07 s with the tap loop -> 0.76-0.80 s (AMD EPYC, batch 256, 5
    # interleaved windows, two runs). With YNNPACK's convolutions the tap loop wins (that
    # step 1.23 s against 2.18 s). Its products run in float32; for 16-bit inputs the
    # upcasts cost more than they save (ResNet-20, bfloat16: 1286 -> 1460 ms a step).
    # Few input channels (LeNet-5's second convolution, ReviewKD's fusion on LeNet maps):
    # the loop's products are too thin to pay for it (AMD EPYC, batch 256: LeNet-5's
    # training step 39.0 -> 35.1-36.4 ms with the materialized input instead).
    taps = not own_kernels and jnp.dtype(dtype) == jnp.float32 and cin > 8
    # Strided (a ResNet stage's first convolution): XLA:CPU's input gradient is a
    # convolution over the zero-dilated output gradient, 64 ms for ResNet-20's 16 -> 32
    # channels at batch 256 (0.6 GFLOP); col2im instead (its training step 1.67-1.73 ->
    # 1.59-1.61 s, two interleaved A/B runs of 11 windows, AMD EPYC; with XLA's own kernels
    # 0.78 -> 0.97 s without it).
    strided = tuple(strides) != (1, 1)
    plan = {'forward': 'xla', 'input_grad': 'col2im' if strided else 'xla',
            'kernel_grad': 'taps' if taps else 'xla_mat'}
  return {**plan, **STRATEGY}


def _forward(x, kernel, strides, padding, precision, plan):
  if plan['forward'] == 'direct':
    out_hw = tuple(_output_size(n, k, s, p) for n, k, s, p in
                   zip(x.shape[1:3], kernel.shape[:2], strides, padding))
    return _direct(x, kernel, strides, padding, out_hw)
  return _native(x, kernel, strides, padding, precision)


# `own_kernels` (static): traced for `COMPILER_OPTIONS`; it chooses the kernel gradient.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv2d(x, kernel, strides, padding, precision, own_kernels):
  return _forward(x, kernel, strides, padding, precision,
                  _plan(kernel.shape, x.dtype, strides, own_kernels))


def _conv2d_fwd(x, kernel, strides, padding, precision, own_kernels):
  plan = _plan(kernel.shape, x.dtype, strides, own_kernels)
  if plan['kernel_grad'] in ('xla_mat', 'taps'):
    # The forward pass reads the same buffer as the kernel gradient, rather than one of
    # its own: ResNet-20's training step 666 -> 648 ms, cached KD 662 -> 641, online KD
    # 1196 -> 1178 (AMD EPYC, batch 256, tcmalloc, 7 interleaved windows).
    x = materialized(x)
  y = _forward(x, kernel, strides, padding, precision, plan)
  return y, (x, kernel)


def _conv2d_bwd(strides, padding, precision, own_kernels, residuals, grad):
  x, kernel = residuals
  plan = _plan(kernel.shape, x.dtype, strides, own_kernels)
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


# --- pointwise (1x1) convolution ----------------------------------------------------------

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
  both operands in place. A connector's gradient on LeNet's first maps (`[256, 28, 28, 3]`
  onto 6 channels) takes 1.1 ms instead of 5.8 ms (AMD EPYC, 2 cores); 16 -> 32 channels on
  `[256, 16, 16]`, 2.3 ms instead of 7.2 ms.
  """
  return _pointwise(x, kernel, precision)


def _mix(x, kernel, precision):
  dtype = jnp.result_type(x, kernel)
  if kernel.shape[0] > POINTWISE_DIRECT_MAX:
    return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())),
                           precision=precision).astype(dtype)
  return _channel_sum(x.astype(jnp.float32), kernel.astype(jnp.float32)).astype(dtype)


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


# --- pooling -------------------------------------------------------------------------------

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
