"""jaxkd.accel: the CPU formulations match XLA's native operations (values and gradients),
the accelerated and plain model paths agree, and steps compile for the kernels they trace for."""
import functools

import flax.linen as nn
import jax
import jax.test_util
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxkd import models, ops
from jaxkd.accel import CpuOps, conv, pointwise, pool

NHWC = ('NHWC', 'HWIO', 'NHWC')
RTOL = 2e-5  # relative to the largest magnitude of the reference

# (batch, height, width, cin, cout, kernel, stride, padding)
CONV_CASES = [
    (2, 28, 28, 1, 6, 5, 1, 'SAME'),            # LeNet conv1: direct forward, col2im dx
    (2, 14, 14, 6, 16, 5, 1, 'VALID'),          # LeNet conv2
    (2, 14, 14, 3, 8, 5, 1, 'VALID'),           # LeNet-half conv2
    (2, 32, 32, 3, 16, 3, 1, ((1, 1), (1, 1))),   # ResNet stem
    (2, 16, 16, 16, 16, 3, 1, ((1, 1), (1, 1))),  # ResNet stage conv
    (2, 16, 16, 16, 32, 3, 2, ((1, 1), (1, 1))),  # strided
    (2, 16, 16, 16, 32, 1, 2, 'VALID'),         # 1x1 shortcut, strided
    (2, 9, 11, 2, 3, 3, 2, ((0, 1), (2, 0))),   # odd sizes, asymmetric explicit padding
    (3, 7, 7, 4, 5, 3, 1, 'SAME'),
    (2, 8, 8, 5, 4, 2, 2, 'SAME'),              # even kernel: SAME pads asymmetrically
]
PLANS = [
    {},  # the shape-based default
    {'forward': 'direct', 'input_grad': 'col2im', 'kernel_grad': 'xla'},
    {'forward': 'xla', 'input_grad': 'xla', 'kernel_grad': 'xla_mat'},
    {'forward': 'direct', 'input_grad': 'xla', 'kernel_grad': 'xla'},
    {'forward': 'direct', 'input_grad': 'col2im', 'kernel_grad': 'taps'},
]


def _random(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _assert_close(actual, expected):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  scale = max(float(np.max(np.abs(expected))), 1e-6)
  np.testing.assert_allclose(actual / scale, expected / scale, atol=RTOL, rtol=0)


PLAN_IDS = lambda p: '-'.join(p.values()) or 'auto'  # noqa: E731


@pytest.mark.parametrize('plan', PLANS, ids=PLAN_IDS)
@pytest.mark.parametrize('case', CONV_CASES, ids=str)
def test_conv_matches_lax_values_and_gradients(case, plan):
  batch, height, width, cin, cout, k, stride, padding = case
  x = _random((batch, height, width, cin), 0)
  kernel = _random((k, k, cin, cout), 1) / np.sqrt(k * k * cin)

  def reference(x, kernel):
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                    dimension_numbers=NHWC)

  def fast(x, kernel):
    return conv.conv_general_dilated(x, kernel, (stride, stride), padding,
                                     dimension_numbers=NHWC, strategy=plan)

  expected, expected_vjp = jax.vjp(reference, x, kernel)
  actual, actual_vjp = jax.jit(lambda x, k: jax.vjp(fast, x, k))(x, kernel)
  _assert_close(actual, expected)
  grad = _random(expected.shape, 2)
  for a, e in zip(jax.jit(actual_vjp)(grad), expected_vjp(grad)):
    _assert_close(a, e)


def test_conv_gradients_numerically():
  x = _random((2, 6, 6, 2), 3)
  kernel = _random((3, 3, 2, 3), 4)
  for plan in PLANS[1:]:
    fast = functools.partial(conv.conv2d, strides=(2, 1), padding=((1, 0), (1, 1)),
                             strategy=plan)
    jax.test_util.check_grads(fast, (x, kernel), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


def test_unsupported_convolutions_fall_back_to_lax():
  x = _random((2, 8, 8, 4), 5)
  kernel = _random((3, 3, 2, 6), 6)
  kwargs = dict(window_strides=(1, 1), padding='SAME', dimension_numbers=NHWC,
                feature_group_count=2, rhs_dilation=(2, 2))
  np.testing.assert_array_equal(conv.conv_general_dilated(x, kernel, **kwargs),
                                lax.conv_general_dilated(x, kernel, **kwargs))


def test_bfloat16_conv_stays_close_and_keeps_dtype():
  x = _random((2, 8, 8, 3), 7).astype(jnp.bfloat16)
  kernel = _random((3, 3, 3, 8), 8).astype(jnp.bfloat16)
  y = conv.conv2d(x, kernel, padding=((1, 1), (1, 1)))
  expected = lax.conv_general_dilated(x.astype(jnp.float32), kernel.astype(jnp.float32),
                                      (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32), expected, atol=0.1, rtol=0.02)


@pytest.mark.parametrize('plan', PLANS, ids=PLAN_IDS)
def test_bfloat16_gradients_stay_close_and_keep_dtype(plan):
  # 16 -> 16 channels: the default plan's tap-loop kernel gradient
  x = _random((2, 8, 8, 16), 11)
  kernel = _random((3, 3, 16, 16), 12) / 12
  grad = _random((2, 8, 8, 16), 13)
  fast = functools.partial(conv.conv2d, padding=((1, 1), (1, 1)), strategy=plan)
  expected = jax.vjp(fast, x, kernel)[1](grad)
  x16, k16, g16 = (a.astype(jnp.bfloat16) for a in (x, kernel, grad))
  actual = jax.jit(lambda x, k, g: jax.vjp(fast, x, k)[1](g))(x16, k16, g16)
  for a, e in zip(actual, expected):
    assert a.dtype == jnp.bfloat16
    scale = float(np.max(np.abs(e)))
    np.testing.assert_allclose(np.asarray(a, np.float32) / scale, e / scale, atol=0.03)


# --- pointwise (1x1) convolution -----------------------------------------------------------

@pytest.mark.parametrize('cin,cout', [(3, 6), (8, 16), (16, 4), (12, 20)],
                         ids=lambda c: str(c))  # both sides of POINTWISE_DIRECT_MAX
def test_pointwise_matches_numpy_values_and_gradients(cin, cout):
  x = _random((2, 5, 7, cin), 20)
  kernel = _random((cin, cout), 21) / np.sqrt(cin)
  grad = _random((2, 5, 7, cout), 22)
  y, vjp = jax.jit(lambda x, k: jax.vjp(pointwise.pointwise, x, k))(x, kernel)
  dx, dkernel = jax.jit(vjp)(grad)
  x64, k64, g64 = (np.asarray(a, np.float64) for a in (x, kernel, grad))
  _assert_close(y, x64 @ k64)
  _assert_close(dx, g64 @ k64.T)
  _assert_close(dkernel, x64.reshape(-1, cin).T @ g64.reshape(-1, cout))


@pytest.mark.parametrize('shape', [(6,), (3, 7), (2, 4, 16)], ids=str)
def test_materialized_is_the_identity_with_its_gradient(shape):
  y = _random(shape, 25)
  weights = _random(shape, 26)
  np.testing.assert_array_equal(jax.jit(pointwise.materialized)(y), y)
  grad = jax.jit(jax.grad(lambda y: jnp.sum(pointwise.materialized(y) * weights)))(y)
  np.testing.assert_array_equal(grad, weights)


def test_pointwise_keeps_bfloat16():
  x = _random((2, 4, 4, 3), 23).astype(jnp.bfloat16)
  kernel = _random((3, 5), 24).astype(jnp.bfloat16)
  y, vjp = jax.vjp(pointwise.pointwise, x, kernel)
  dx, dkernel = vjp(jnp.ones_like(y))
  assert (y.dtype, dx.dtype, dkernel.dtype) == (jnp.bfloat16,) * 3
  expected = np.asarray(x, np.float64) @ np.asarray(kernel, np.float64)
  np.testing.assert_allclose(np.asarray(y, np.float64), expected, atol=0.05, rtol=0.02)


# --- pooling ---------------------------------------------------------------------------------

@pytest.mark.parametrize('shape,window', [((2, 28, 28, 3), 2), ((2, 10, 10, 8), 2),
                                          ((3, 7, 9, 2), 2), ((2, 9, 9, 4), 3)])
@pytest.mark.parametrize('kind', ['max', 'avg'])
def test_pool_matches_flax_values_and_gradients(shape, window, kind):
  x = _random(shape, 9)
  fast = functools.partial(pool.max_pool if kind == 'max' else pool.avg_pool,
                           window=window)
  flax_pool = nn.max_pool if kind == 'max' else nn.avg_pool
  reference = lambda x: flax_pool(x, (window, window), strides=(window, window))
  expected, expected_vjp = jax.vjp(reference, x)
  actual, actual_vjp = jax.jit(lambda x: jax.vjp(fast, x))(x)
  if kind == 'max':
    np.testing.assert_array_equal(actual, expected)
  _assert_close(actual, expected)  # avg: the same sum, perhaps in another order
  grad = _random(expected.shape, 10)
  _assert_close(jax.jit(actual_vjp)(grad)[0], expected_vjp(grad)[0])


def test_max_pool_gives_ties_to_the_first_maximum_like_flax():
  # Whole windows of equal values (ReLU zeros, say): the gradient goes to one element only.
  x = jnp.asarray(np.random.default_rng(11).integers(0, 2, (2, 8, 8, 3)), jnp.float32)
  grad = _random((2, 4, 4, 3), 12)
  reference = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  expected = jax.vjp(reference, x)[1](grad)[0]
  actual = jax.vjp(functools.partial(pool.max_pool, window=2), x)[1](grad)[0]
  np.testing.assert_array_equal(actual, expected)


# --- the models on the accelerated and the plain operations -----------------------------------

def _apply(name, shape, impl, jit=None):
  """Variables, loss and gradients of `name` built and traced on `impl` (`impl.jit`)."""
  with ops.use(impl):
    model = models.build(name, num_classes=10)
    images = _random(shape, 13)
    variables = jax.jit(lambda x: model.init({'params': jax.random.key(0)}, x))(images)

    def loss(params):
      logits, _ = model.apply({**variables, 'params': params}, images, train=True,
                              mutable=['batch_stats'])
      return jnp.sum(logits ** 2)

    value, grads = (jit or impl.jit)(jax.value_and_grad(loss))(variables['params'])
  return variables, value, grads


# own_kernels=True: XLA's own convolution kernels and the kernel gradient planned for them;
# False: YNNPACK's (plain jax.jit) and the tap-loop kernel gradient.
@pytest.mark.parametrize('own_kernels', [False, True], ids=['ynnpack', 'own_kernels'])
@pytest.mark.parametrize('name,shape', [('lenet5_half', (4, 28, 28, 1)),
                                        ('resnet8', (2, 32, 32, 3))])
def test_accelerated_models_match_the_plain_path(name, shape, own_kernels):
  xla_vars, xla_value, xla_grads = _apply(name, shape, ops.XLA)
  fast_vars, fast_value, fast_grads = _apply(name, shape, CpuOps(own_kernels=own_kernels))
  assert jax.tree.structure(fast_vars) == jax.tree.structure(xla_vars)
  for a, b in zip(jax.tree.leaves(fast_vars), jax.tree.leaves(xla_vars)):
    np.testing.assert_array_equal(a, b)  # same initialization, same layout
  np.testing.assert_allclose(fast_value, xla_value, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(fast_grads), jax.tree.leaves(xla_grads)):
    _assert_close(a, b)


def test_cpu_ops_compile_for_the_kernels_they_trace_for():
  x = _random((2, 8, 8, 32), 14)
  kernel = _random((3, 3, 32, 32), 15) / 24

  def kernel_grad(x, kernel):
    return jax.grad(lambda k: jnp.sum(ops.current().conv(x, k, padding=((1, 1), (1, 1)))))(
        kernel)

  own, ynnpack = CpuOps(own_kernels=True), CpuOps(own_kernels=False)
  # The tap loop (a `while`) only where YNNPACK runs the convolutions (plain jax.jit).
  assert 'while' in ynnpack.jit(kernel_grad).lower(x, kernel).as_text()
  assert 'while' not in own.jit(kernel_grad).lower(x, kernel).as_text()
  np.testing.assert_allclose(own.jit(kernel_grad)(x, kernel), ynnpack.jit(kernel_grad)(x, kernel),
                             rtol=1e-4, atol=1e-4)
  # No convolution handed to a library fusion under own.jit.
  forward = own.jit(lambda x, k: ops.current().conv(x, k, padding=((1, 1), (1, 1))))
  assert 'ynn' not in forward.lower(x, kernel).compile().as_text().lower()


def test_a_compiled_step_keeps_the_operations_it_was_built_with():
  kernels = lambda x: x * getattr(ops.current(), 'own_kernels', -1)  # noqa: E731 - traced
  own = CpuOps(own_kernels=True)
  step = own.jit(kernels)
  with ops.use(ops.XLA):  # a caller's context does not reach into a built step
    assert float(step(jnp.ones(()))) == 1.0
    assert float(ops.current().jit(kernels)(jnp.ones(()))) == -1.0
  # jax.pmap takes no compiler options: traced for YNNPACK's kernels.
  assert float(jax.jit(own.bind(kernels, compiler_options=False))(jnp.ones(()))) == 0.0
  assert ops.XLA.without_compiler_options() is ops.XLA
