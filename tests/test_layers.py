"""The fast CPU convolution and pooling match XLA's native ones: values and gradients."""
import functools

import flax.linen as nn
import jax
import jax.test_util
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxkd import models
from jaxkd.models import fastconv, layers

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


@pytest.fixture
def plan(request):
  fastconv.STRATEGY.clear()
  fastconv.STRATEGY.update(request.param)
  yield request.param
  fastconv.STRATEGY.clear()


@pytest.mark.parametrize('plan', PLANS, indirect=True, ids=lambda p: '-'.join(p.values()) or 'auto')
@pytest.mark.parametrize('case', CONV_CASES, ids=str)
def test_conv_matches_lax_values_and_gradients(case, plan):
  batch, height, width, cin, cout, k, stride, padding = case
  x = _random((batch, height, width, cin), 0)
  kernel = _random((k, k, cin, cout), 1) / np.sqrt(k * k * cin)

  def reference(x, kernel):
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                    dimension_numbers=NHWC)

  def fast(x, kernel):
    return fastconv.conv_general_dilated(x, kernel, (stride, stride), padding,
                                         dimension_numbers=NHWC)

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
    fastconv.STRATEGY.update(plan)
    try:
      conv = lambda x, k: fastconv.conv2d(x, k, strides=(2, 1), padding=((1, 0), (1, 1)))
      jax.test_util.check_grads(conv, (x, kernel), order=1, modes=['rev'], atol=1e-2,
                                rtol=1e-2)
    finally:
      fastconv.STRATEGY.clear()


def test_unsupported_convolutions_fall_back_to_lax():
  x = _random((2, 8, 8, 4), 5)
  kernel = _random((3, 3, 2, 6), 6)
  kwargs = dict(window_strides=(1, 1), padding='SAME', dimension_numbers=NHWC,
                feature_group_count=2, rhs_dilation=(2, 2))
  np.testing.assert_array_equal(fastconv.conv_general_dilated(x, kernel, **kwargs),
                                lax.conv_general_dilated(x, kernel, **kwargs))


def test_bfloat16_conv_stays_close_and_keeps_dtype():
  x = _random((2, 8, 8, 3), 7).astype(jnp.bfloat16)
  kernel = _random((3, 3, 3, 8), 8).astype(jnp.bfloat16)
  y = fastconv.conv2d(x, kernel, padding=((1, 1), (1, 1)))
  expected = lax.conv_general_dilated(x.astype(jnp.float32), kernel.astype(jnp.float32),
                                      (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32), expected, atol=0.1, rtol=0.02)


@pytest.mark.parametrize('plan', PLANS, indirect=True, ids=lambda p: '-'.join(p.values()) or 'auto')
def test_bfloat16_gradients_stay_close_and_keep_dtype(plan):
  # 16 -> 16 channels: the default plan's tap-loop kernel gradient
  x = _random((2, 8, 8, 16), 11)
  kernel = _random((3, 3, 16, 16), 12) / 12
  grad = _random((2, 8, 8, 16), 13)
  conv = lambda x, k: fastconv.conv2d(x, k, padding=((1, 1), (1, 1)))  # noqa: E731
  expected = jax.vjp(conv, x, kernel)[1](grad)
  x16, k16, g16 = (a.astype(jnp.bfloat16) for a in (x, kernel, grad))
  actual = jax.jit(lambda x, k, g: jax.vjp(conv, x, k)[1](g))(x16, k16, g16)
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
  y, vjp = jax.jit(lambda x, k: jax.vjp(fastconv.pointwise, x, k))(x, kernel)
  dx, dkernel = jax.jit(vjp)(grad)
  x64, k64, g64 = (np.asarray(a, np.float64) for a in (x, kernel, grad))
  _assert_close(y, x64 @ k64)
  _assert_close(dx, g64 @ k64.T)
  _assert_close(dkernel, x64.reshape(-1, cin).T @ g64.reshape(-1, cout))


@pytest.mark.parametrize('shape', [(6,), (3, 7), (2, 4, 16)], ids=str)
def test_materialized_is_the_identity_with_its_gradient(shape):
  y = _random(shape, 25)
  weights = _random(shape, 26)
  np.testing.assert_array_equal(jax.jit(fastconv.materialized)(y), y)
  grad = jax.jit(jax.grad(lambda y: jnp.sum(fastconv.materialized(y) * weights)))(y)
  np.testing.assert_array_equal(grad, weights)


def test_pointwise_keeps_bfloat16():
  x = _random((2, 4, 4, 3), 23).astype(jnp.bfloat16)
  kernel = _random((3, 5), 24).astype(jnp.bfloat16)
  y, vjp = jax.vjp(fastconv.pointwise, x, kernel)
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
  fast = functools.partial(fastconv.max_pool if kind == 'max' else fastconv.avg_pool,
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
  actual = jax.vjp(functools.partial(fastconv.max_pool, window=2), x)[1](grad)[0]
  np.testing.assert_array_equal(actual, expected)


# --- the layer factories ---------------------------------------------------------------------

@pytest.fixture
def impls():
  saved = layers.CONV_IMPL, layers.POOL_IMPL
  yield
  layers.CONV_IMPL, layers.POOL_IMPL = saved


def _apply(name, shape, conv, pool, jit=jax.jit):
  layers.CONV_IMPL, layers.POOL_IMPL = conv, pool
  model = models.build(name, num_classes=10)
  images = _random(shape, 13)
  variables = jax.jit(lambda x: model.init({'params': jax.random.key(0)}, x))(images)

  def loss(params):
    logits, _ = model.apply({**variables, 'params': params}, images, train=True,
                            mutable=['batch_stats'])
    return jnp.sum(logits ** 2)

  value, grads = jit(jax.value_and_grad(loss))(variables['params'])
  return variables, value, grads


@pytest.mark.parametrize('jit', [jax.jit, layers.jit], ids=['jax.jit', 'layers.jit'])
@pytest.mark.parametrize('name,shape', [('lenet5_half', (4, 28, 28, 1)),
                                        ('resnet8', (2, 32, 32, 3))])
def test_fast_layers_keep_parameters_and_numerics(impls, name, shape, jit):
  # layers.jit: XLA's own convolution kernels and the kernel gradient planned for them
  xla_vars, xla_value, xla_grads = _apply(name, shape, 'xla', 'xla')
  fast_vars, fast_value, fast_grads = _apply(name, shape, 'fast', 'reshape', jit)
  assert jax.tree.structure(fast_vars) == jax.tree.structure(xla_vars)
  for a, b in zip(jax.tree.leaves(fast_vars), jax.tree.leaves(xla_vars)):
    np.testing.assert_array_equal(a, b)  # same initialisation, same layout
  np.testing.assert_allclose(fast_value, xla_value, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(fast_grads), jax.tree.leaves(xla_grads)):
    _assert_close(a, b)


def test_layers_jit_traces_and_compiles_for_xla_own_kernels(impls):
  x = _random((2, 8, 8, 32), 14)
  kernel = _random((3, 3, 32, 32), 15) / 24

  def kernel_grad(x, kernel):
    return jax.grad(lambda k: jnp.sum(fastconv.conv2d(x, k, padding=((1, 1), (1, 1)))))(kernel)

  # The tap loop (a `while`) only where YNNPACK runs the convolutions (plain jax.jit).
  layers.CONV_IMPL = 'fast'
  assert 'while' in jax.jit(kernel_grad).lower(x, kernel).as_text()
  assert 'while' not in layers.jit(kernel_grad).lower(x, kernel).as_text()
  np.testing.assert_allclose(layers.jit(kernel_grad)(x, kernel),
                             jax.jit(kernel_grad)(x, kernel), rtol=1e-4, atol=1e-4)
  # No convolution handed to a library fusion under layers.jit.
  forward = layers.jit(lambda x, k: fastconv.conv2d(x, k, padding=((1, 1), (1, 1))))
  assert 'ynn' not in forward.lower(x, kernel).compile().as_text().lower()

  own = lambda x: x * fastconv._own_kernels()  # noqa: E731 - read while tracing
  assert float(layers.jit(own)(jnp.ones(()))) == 1.0
  assert float(jax.jit(own)(jnp.ones(()))) == 0.0 and not fastconv._own_kernels()
  layers.CONV_IMPL = 'xla'  # XLA's layers throughout: plain jax.jit, no options
  assert float(layers.jit(own)(jnp.ones(()))) == 0.0


def test_auto_picks_the_fast_path_on_cpu_only(impls, monkeypatch):
  layers.CONV_IMPL = layers.POOL_IMPL = 'auto'
  assert (layers.conv_impl(), layers.pool_impl()) == ('fast', 'reshape')
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert (layers.conv_impl(), layers.pool_impl()) == ('xla', 'xla')


def test_unknown_impl_lists_the_valid_ones(impls):
  layers.CONV_IMPL = 'winograd'
  with pytest.raises(ValueError, match=r"\['auto', 'xla', 'fast'\]"):
    layers.conv(8, 3)


def test_cpu_conv_kernels_setting_is_checked_and_switches_jit(impls, monkeypatch):
  own = lambda x: x * fastconv._own_kernels()  # noqa: E731 - read while tracing
  layers.CONV_IMPL = 'fast'
  monkeypatch.setattr(layers, 'CPU_CONV_KERNELS', 'ynnpack')  # XLA:CPU's default: plain jit
  assert float(layers.jit(own)(jnp.ones(()))) == 0.0
  monkeypatch.setattr(layers, 'CPU_CONV_KERNELS', 'eigen')
  for call in (layers.check_settings, lambda: layers.jit(own)):
    with pytest.raises(ValueError, match=r"CPU convolution kernels 'eigen'.*\['xla', 'ynnpack'\]"
                                         r".*JAXKD_CPU_CONV_KERNELS"):
      call()
