"""Optimizers by name: gradient clipping and the unknown-name error."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd import optim


@pytest.mark.parametrize('name', ['sgd', 'adam'])
def test_clip_norm_rescales_only_large_gradients(name):
  params = {'w': jnp.zeros(3), 'b': jnp.zeros(1)}
  small = {'w': jnp.array([0.3, 0.0, -0.4]), 'b': jnp.array([0.0])}  # norm 0.5
  large = {'w': jnp.array([3.0, 0.0, -4.0]), 'b': jnp.array([0.0])}  # norm 5
  clipped = optim.make_optimizer(name=name, learning_rate=0.1, clip_norm=1.0)
  plain = optim.make_optimizer(name=name, learning_rate=0.1)
  for grads, scale in ((small, 1.0), (large, 0.2)):
    want, _ = plain.update(
        {k: v * scale for k, v in grads.items()}, plain.init(params), params)
    got, _ = clipped.update(grads, clipped.init(params), params)
    if name == 'sgd':  # first SGD step: -lr * g, g rescaled to norm 1 when above it
      np.testing.assert_allclose(got['w'], -0.1 * scale * np.asarray(grads['w']), rtol=1e-6)
    for k in got:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7)


def test_unknown_optimizer_names_the_choices():
  with pytest.raises(ValueError, match="Unknown optimizer 'rmsprop'.*sgd"):
    optim.make_optimizer(name='rmsprop', learning_rate=0.1)


def test_warmup_longer_than_the_run_warns_and_a_negative_one_is_refused():
  with pytest.warns(optim.SettingWarning, match=r'warmup_steps=1000 is not shorter than the run '
                                                r'\(30 steps\).*only ever reaches 3%'):
    schedule = optim.make_schedule(name='constant', learning_rate=0.1, total_steps=30,
                                   warmup_steps=1000)
  np.testing.assert_allclose(float(schedule(29)), 0.1 * 29 / 1000, rtol=1e-5)
  with pytest.raises(ValueError, match=r'warmup_steps=-5: give a whole number'):
    optim.make_schedule(name='constant', learning_rate=0.1, total_steps=30, warmup_steps=-5)
