"""jaxkd.ops: which operations a step computes with follows from the platform and explicit
settings, and an unknown setting is refused with the valid values and the variable to set."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd import ops
from jaxkd.accel import CpuOps


def test_settings_come_from_the_environment():
  settings = ops.Settings.from_env({'JAXKD_CONV_IMPL': 'xla', 'JAXKD_CPU_CONV_KERNELS': 'ynnpack'})
  assert settings == ops.Settings(conv='xla', pool='auto', cpu_conv_kernels='ynnpack')
  assert ops.Settings.from_env({}) == ops.Settings()


def test_auto_picks_the_cpu_formulations_on_cpu_only():
  cpu = ops.resolve(ops.Settings(), platform='cpu')
  assert isinstance(cpu, CpuOps) and (cpu.conv_impl, cpu.pool_impl) == ('fast', 'reshape')
  assert ops.resolve(ops.Settings(), platform='gpu') is ops.XLA
  assert ops.resolve(ops.Settings(conv='xla', pool='xla'), platform='cpu') is ops.XLA
  mixed = ops.resolve(ops.Settings(conv='xla'), platform='cpu')
  assert (mixed.conv_impl, mixed.pool_impl, mixed.own_kernels) == ('xla', 'reshape', False)


def test_the_default_is_the_accelerated_path_on_this_cpu():
  assert ops.current() is ops.default()
  assert (ops.current().conv_impl, ops.current().pool_impl) == ('fast', 'reshape')
  with ops.use(ops.XLA):
    assert ops.current() is ops.XLA
  assert ops.current() is ops.default()


def test_cpu_conv_kernels_setting_picks_the_compile_function():
  assert ops.configured(cpu_conv_kernels='ynnpack').own_kernels is False
  assert ops.configured(cpu_conv_kernels='xla').own_kernels is True  # this jaxlib's CPU
  x = np.zeros((2, 8, 8, 32), np.float32)
  kernel = np.ones((3, 3, 32, 32), np.float32)
  conv = lambda x: ops.current().conv(x, kernel)  # noqa: E731
  texts = {name: ops.configured(cpu_conv_kernels=name).jit(conv).lower(x).compile().as_text()
           for name in ('xla', 'ynnpack')}
  assert 'ynn' not in texts['xla'].lower() and 'ynn' in texts['ynnpack'].lower()


@pytest.mark.parametrize('change,message', [
    ({'conv': 'winograd'}, r"conv implementation 'winograd'; choose one of "
                           r"\['auto', 'xla', 'fast'\] \(JAXKD_CONV_IMPL\)"),
    ({'pool': 'sum'}, r"pool implementation 'sum'.*\['auto', 'xla', 'reshape'\]"),
    ({'cpu_conv_kernels': 'eigen'}, r"CPU convolution kernels 'eigen'; choose one of "
                                    r"\['xla', 'ynnpack'\] \(JAXKD_CPU_CONV_KERNELS\)"),
])
def test_unknown_settings_list_the_valid_ones(monkeypatch, change, message):
  with pytest.raises(ValueError, match=message):
    ops.configured(**change)
  monkeypatch.setattr(ops, 'SETTINGS', ops.Settings(**change))
  with pytest.raises(ValueError, match=message):
    ops.check_settings()


def test_use_takes_operations_only():
  with pytest.raises(TypeError, match='ops.use takes an Ops'):
    with ops.use('xla'):
      pass


def test_plain_operations_are_xlas():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 3)), jnp.float32)
  kernel = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 3, 4)), jnp.float32)
  np.testing.assert_array_equal(
      ops.XLA.conv(x, kernel, strides=(2, 2), padding='VALID'),
      jax.lax.conv_general_dilated(x, kernel, (2, 2), 'VALID', dimension_numbers=ops.NHWC))
  np.testing.assert_array_equal(ops.XLA.materialize(x), x)
  np.testing.assert_allclose(ops.XLA.pointwise(x, kernel[0, 0]), x @ kernel[0, 0], rtol=1e-6)
  np.testing.assert_array_equal(ops.XLA.max_pool(x, 2), jnp.max(
      x[:, :6, :6].reshape(2, 3, 2, 3, 2, 3), axis=(2, 4)))
