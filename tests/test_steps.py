"""Supervised step, eval step, augmentation, train state."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxkd import models
from jaxkd.augment import Augment
from jaxkd.parallel import Parallel
from jaxkd.state import create_train_state, tree_sha256
from jaxkd.steps import make_eval_step, make_train_step, summarize_eval


def _batch(n=32, seed=0, classes=10):
  rng = np.random.default_rng(seed)
  return {'image': rng.normal(size=(n, 28, 28, 1)).astype(np.float32),
          'label': rng.integers(0, classes, n).astype(np.int32)}


def test_supervised_steps_reduce_loss_and_compile_once():
  model = models.build('lenet5_half', num_classes=10)
  tx = optax.adam(1e-2)
  parallel = Parallel()
  # Placed once, the state keeps its sharding across steps, so the step compiles once.
  state = parallel.replicate(create_train_state(model, tx, seed=0, input_shape=(1, 28, 28, 1)))
  step = make_train_step(model=model, tx=tx, parallel=parallel)
  batch = parallel.shard_batch(_batch())
  state, first = step(state, batch)
  for _ in range(10):
    state, metrics = step(state, batch)
  assert int(state.step) == 11
  assert float(metrics['loss']) < 0.5 * float(first['loss'])
  assert step._cache_size() == 1  # the second and later calls did not recompile
  assert {'loss', 'ce_loss', 'accuracy', 'grad_norm'} <= set(metrics)


def test_train_state_is_donated():
  model = models.build('mlp', num_classes=10, hidden=(16,))
  tx = optax.sgd(0.1)
  state = create_train_state(model, tx, seed=0, input_shape=(1, 28, 28, 1))
  old_params = state.params
  step = make_train_step(model=model, tx=tx)
  step(state, _batch())
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old_params))


def test_eval_step_counts_a_hand_made_case():
  # A "model" whose logits are the first three pixels: predictions are known by hand.
  import flax.linen as nn

  class Picker(nn.Module):
    @nn.compact
    def __call__(self, images, train=False):
      return images.reshape(images.shape[0], -1)[:, :3]

  model = Picker()
  images = np.zeros((4, 2, 2, 1), np.float32)
  images[0, 0, 0, 0] = 5   # predicts 0, label 0: right
  images[1, 0, 1, 0] = 5   # predicts 1, label 1: right
  images[2, 1, 0, 0] = 5   # predicts 2, label 0: wrong
  images[3, 0, 0, 0] = 5   # padding (mask 0), would be right
  batch = {'image': images, 'label': np.array([0, 1, 0, 0], np.int32),
           'mask': np.array([1, 1, 1, 0], np.float32)}
  step = make_eval_step(model=model, num_classes=3)
  sums = jax.device_get(step({}, batch))
  summary = summarize_eval(sums)
  assert summary['count'] == 3
  assert summary['accuracy'] == pytest.approx(2 / 3)
  assert summary['per_class_accuracy'] == pytest.approx([0.5, 1.0, 0.0])
  # Cross-entropy by hand: log(2 + e^5) - 5 for the right ones, log(2 + e^5) - 0 for the wrong.
  lse = np.log(2 + np.exp(5.0))
  assert summary['loss'] == pytest.approx(((lse - 5) * 2 + lse) / 3, rel=1e-5)


def test_augment_translates_and_flips():
  images = jnp.arange(2 * 6 * 6, dtype=jnp.float32).reshape(2, 6, 6, 1)
  assert Augment()(jax.random.key(0), images) is images
  shifted = Augment(crop_padding=2)(jax.random.key(1), images)
  assert shifted.shape == images.shape
  for out, src in zip(np.asarray(shifted), np.asarray(images)):
    padded = np.pad(src, ((2, 2), (2, 2), (0, 0)))
    windows = [padded[i:i + 6, j:j + 6] for i in range(5) for j in range(5)]
    assert any(np.array_equal(out, w) for w in windows)
  flipped = np.asarray(Augment(flip=True)(jax.random.key(2), images))
  for out, src in zip(flipped, np.asarray(images)):
    assert np.array_equal(out, src) or np.array_equal(out, src[:, ::-1])
  with pytest.raises(ValueError, match='crop_padding'):
    Augment(crop_padding=-1)


def test_tree_sha256_depends_on_values_and_paths_only():
  a = {'w': np.ones((2, 2), np.float32), 'b': np.zeros(3, np.float32)}
  b = {'b': np.zeros(3, np.float32), 'w': np.ones((2, 2), np.float32)}
  assert tree_sha256(a) == tree_sha256(b)
  c = {'w': np.ones((2, 2), np.float32), 'b': np.array([0, 0, 1e-7], np.float32)}
  assert tree_sha256(a) != tree_sha256(c)


def test_raw_pixels_are_refused_and_nan_pixels_are_named():
  model = models.build('mlp', num_classes=10, hidden=(16,))
  tx = optax.sgd(0.1)
  step = make_train_step(model=model, tx=tx)
  state = create_train_state(model, tx, seed=0, input_shape=(1, 28, 28, 1))
  raw = {**_batch(), 'image': np.zeros((32, 28, 28, 1), np.uint8)}
  with pytest.raises(ValueError, match=r'normalized float images; got uint8 pixels'):
    step(state, raw)
  batch = _batch()
  batch['image'][3, 5, 5, 0] = np.nan
  _, metrics = step(create_train_state(model, tx, seed=0, input_shape=(1, 28, 28, 1)), batch)
  assert float(metrics['check_inputs']) == 1 / 32
  assert float(metrics['check_labels']) == 0.0
