"""Transfer: strict loading (new head, mismatches, another mesh), freezing without optimizer
state, frozen BatchNorm, layer-wise decay, gradual unfreezing, and fine-tune-then-distill."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from fakedata import make_fashion_mnist
from jaxkd import checkpoint, models, paths, recipes, transfer
from jaxkd.recipes import defaults
from jaxkd.state import create_train_state, init_variables, tree_sha256
from jaxkd.steps import make_train_step

SHAPE = (1, 28, 28, 1)
HEAD = ('params/head/.*',)


class TinyBN(nn.Module):
  """dense1 -> bn -> ReLU -> head: the smallest model with BatchNorm statistics."""

  num_classes: int = 3

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    x = images.reshape((images.shape[0], -1))
    x = nn.BatchNorm(use_running_average=not train, name='bn')(nn.Dense(8, name='dense1')(x))
    return nn.Dense(self.num_classes, name='head')(nn.relu(x))


def _batch(seed=0, n=8, num_classes=3):
  rng = np.random.default_rng(seed)
  return {'image': rng.normal(size=(n, 28, 28, 1)).astype(np.float32),
          'label': rng.integers(0, num_classes, n).astype(np.int32)}


def _trained(model, steps=2, num_classes=10):
  """`model` trained `steps` SGD steps: its variables (host arrays)."""
  tx = optax.sgd(0.1)
  state = create_train_state(model, tx, seed=0, input_shape=SHAPE)
  step_fn = make_train_step(model=model, tx=tx)
  for i in range(steps):
    state, _ = step_fn(state, _batch(i, num_classes=num_classes))
  return jax.device_get(state.variables)


@pytest.mark.parametrize('name', ['mlp', 'tinybn'])
def test_source_checkpoint_loads_into_a_new_head(tmp_path, name):
  build = (lambda c: models.build('mlp', num_classes=c, hidden=(16,))) if name == 'mlp' else (
      lambda c: TinyBN(num_classes=c))
  source = _trained(build(10))
  checkpoint.save_variables(str(tmp_path / 'final'), source, metadata={'model': name}, step=2)
  target_init = init_variables(build(5), key=jax.random.key(7), input_shape=SHAPE)
  loaded, meta = transfer.load_pretrained(str(tmp_path), target_init, dont_load=HEAD)
  assert meta['model'] == name
  flat, fresh, src = (paths.flatten(t) for t in (loaded, target_init, source))
  assert set(flat) == set(fresh)
  for path, leaf in flat.items():
    expected = fresh[path] if path.startswith('params/head/') else src[path]
    assert leaf.dtype == expected.dtype and np.array_equal(leaf, expected), path
  if name == 'tinybn':  # statistics travel with their layer, and they were trained
    assert not np.array_equal(flat['batch_stats/bn/mean'], fresh['batch_stats/bn/mean'])
  # The same through merge_params, on in-memory trees.
  merged = transfer.merge_params(target_init, source, dont_load=HEAD)
  assert tree_sha256(merged) == tree_sha256(loaded)


def _target():
  return {'params': {'a': {'kernel': jnp.zeros((2, 3))}, 'head': {'kernel': jnp.zeros((3, 5))}},
          'batch_stats': {'bn': {'mean': jnp.zeros((3,))}}}


def _source(kind):
  source = {'params': {'a': {'kernel': np.ones((2, 3), np.float32)},
                       'head': {'kernel': np.ones((3, 10), np.float32)}},  # dont_load covers it
            'batch_stats': {'bn': {'mean': np.ones((3,), np.float32)}}}
  if kind in ('missing', 'all'):
    del source['batch_stats']
  if kind in ('extra', 'all'):
    source['params']['b'] = {'bias': np.ones((4,), np.float32)}
  if kind == 'shape':
    source['params']['a']['kernel'] = np.ones((2, 4), np.float32)
  if kind in ('dtype', 'all'):
    source['params']['a']['kernel'] = np.ones((2, 3), np.float16)
  return source


@pytest.mark.parametrize('kind, paths', [
    ('missing', ['batch_stats/bn/mean']),
    ('extra', ['params/b/bias']),
    ('shape', ['params/a/kernel: model (2, 3), checkpoint (2, 4)']),
    ('dtype', ['params/a/kernel: model float32, checkpoint float16']),
    ('all', ['batch_stats/bn/mean', 'params/b/bias', 'params/a/kernel: model float32']),
])
def test_every_mismatch_is_listed_in_one_error(kind, paths):
  with pytest.raises(transfer.TransferError) as error:
    transfer.merge_params(_target(), _source(kind), dont_load=HEAD)
  message = str(error.value)
  for path in paths:
    assert path in message
  assert 'params/head/kernel' not in message  # covered by dont_load
  assert len(message.split('\n')) == 3 + len(paths) + (2 if kind == 'all' else 0)
  merged = transfer.merge_params(_target(), _source('none'), dont_load=HEAD)
  assert np.array_equal(merged['params']['a']['kernel'], np.ones((2, 3)))
  assert np.array_equal(merged['params']['head']['kernel'], np.zeros((3, 5)))


def test_checkpoint_mismatch_raises_before_reading(tmp_path):
  source = _trained(models.build('mlp', num_classes=10, hidden=(16,)))
  checkpoint.save_variables(str(tmp_path), source, metadata={'model': 'mlp'})
  target_init = init_variables(models.build('mlp', num_classes=10, hidden=(32,)),
                               key=jax.random.key(0), input_shape=SHAPE)
  with pytest.raises(transfer.TransferError) as error:
    transfer.load_pretrained(str(tmp_path), target_init, dont_load=())
  for path in ('params/dense1/kernel', 'params/dense1/bias', 'params/head/kernel'):
    assert path in str(error.value)
  assert 'params/head/bias' not in str(error.value)  # same shape (10,)


def test_loads_onto_another_device_mesh(tmp_path):
  assert jax.device_count() == 8
  source = _trained(models.build('mlp', num_classes=10, hidden=(16,)))
  checkpoint.save_variables(str(tmp_path), source, metadata={'model': 'mlp'})
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  target_init = init_variables(models.build('mlp', num_classes=5, hidden=(16,)),
                               key=jax.random.key(0), input_shape=SHAPE)
  specs = {'params/dense1/kernel': P(None, 'data'), 'params/dense1/bias': P('data')}
  target_init = jax.tree_util.tree_map_with_path(
      lambda p, x: jax.device_put(x, NamedSharding(mesh, specs.get(paths.path_str(p), P()))),
      target_init)
  loaded, _ = transfer.load_pretrained(str(tmp_path), target_init, dont_load=HEAD)
  flat, target, src = (paths.flatten(t) for t in (loaded, target_init, source))
  for path, leaf in flat.items():
    assert leaf.sharding == target[path].sharding, path
    assert np.array_equal(leaf, target[path] if 'head' in path else src[path]), path
  assert len(flat['params/dense1/kernel'].addressable_shards) == 8
  assert flat['params/dense1/kernel'].addressable_shards[0].data.shape == (784, 2)


def test_layer_order_follows_the_forward_pass():
  model = models.build('lenet5_half', num_classes=5)
  assert transfer.layer_order(model, input_shape=SHAPE) == (
      'conv1', 'conv2', 'dense1', 'dense2', 'head')
  assert transfer.layer_order(TinyBN(), input_shape=SHAPE) == ('dense1', 'bn', 'head')


def _finetune_state(model, tx, variables):
  return create_train_state(model, tx, seed=0, input_shape=SHAPE, variables=variables)


@pytest.mark.parametrize('method', ['freeze_dense1', 'lp'])
def test_frozen_parameters_unchanged_and_without_optimizer_state(method):
  model = models.build('mlp', num_classes=3, hidden=(16, 12))
  variables = init_variables(model, key=jax.random.key(0), input_shape=SHAPE)
  order = transfer.layer_order(model, input_shape=SHAPE)
  rules = ({'frozen': ('dense1/.*',)} if method == 'freeze_dense1'
           else {'trainable': transfer.METHODS['lp']})
  tx = transfer.partition_optimizer(lambda: optax.sgd(0.1, momentum=0.9), variables['params'],
                                    order=order, **rules)
  state = _finetune_state(model, tx, variables)
  param_starts = transfer.unfreeze_steps(variables['params'], order=order, **rules)
  step_fn = transfer.make_finetune_step(model=model, tx=tx, param_starts=param_starts,
                                        stats_starts={})
  plain_fn = make_train_step(model=model, tx=tx)  # computes every gradient; tx drops some
  plain = _finetune_state(model, tx, variables)
  before = paths.flatten(jax.device_get(state.params))
  for i in range(3):
    state, metrics = step_fn(state, _batch(i))
    plain, _ = plain_fn(plain, _batch(i))
  after = paths.flatten(jax.device_get(state.params))
  # Skipping the frozen gradients changes no value.
  for path, value in paths.flatten(jax.device_get(plain.params)).items():
    np.testing.assert_allclose(after[path], value, rtol=1e-6, atol=1e-7, err_msg=path)
  frozen = {p for p in before if (p.startswith('dense1/') if method == 'freeze_dense1'
                                  else not p.startswith('head/'))}
  for path in before:
    assert np.array_equal(before[path], after[path]) == (path in frozen), path
  # Momentum buffers exist for the trainable leaves only.
  buffers = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
  trainable = [before[p] for p in before if p not in frozen]
  assert sorted(b.shape for b in buffers) == sorted(t.shape for t in trainable)
  assert sum(b.size for b in buffers) == sum(t.size for t in trainable)


@pytest.mark.parametrize('method', ['lp', 'ft', 'gradual'])
def test_batchnorm_statistics_of_frozen_layers_stay_frozen(method):
  model = TinyBN()
  variables = init_variables(model, key=jax.random.key(0), input_shape=SHAPE)
  order = transfer.layer_order(model, input_shape=SHAPE)
  rules = dict(order=order, trainable=transfer.METHODS['lp' if method == 'lp' else 'ft'],
               unfreeze_every=2 if method == 'gradual' else 0)
  tx = transfer.partition_optimizer(lambda: optax.adam(1e-2), variables['params'], **rules)
  stats_starts = transfer.unfreeze_steps(variables['batch_stats'], **rules)
  step_fn = transfer.make_finetune_step(
      model=model, tx=tx, param_starts=transfer.unfreeze_steps(variables['params'], **rules),
      stats_starts=stats_starts)
  state = _finetune_state(model, tx, variables)
  history = [jax.device_get(state)]
  for i in range(3):
    state, _ = step_fn(state, _batch(i))
    history.append(jax.device_get(state))
  stats = [paths.flatten(s.batch_stats) for s in history]
  params = [paths.flatten(s.params) for s in history]
  changed = lambda trees, step, path: not np.array_equal(trees[step - 1][path], trees[step][path])
  for step in (1, 2, 3):
    # bn is one layer below the head: it unfreezes at step 2 (its third update) when gradual.
    trains = {'lp': False, 'ft': True, 'gradual': step == 3}[method]
    assert changed(stats, step, 'bn/mean') == trains
    assert changed(stats, step, 'bn/var') == trains
    assert changed(params, step, 'bn/scale') == trains
    assert changed(params, step, 'head/kernel')
    assert changed(params, step, 'dense1/kernel') == (method == 'ft')  # 2 layers below: step 4


def test_layer_decay_scales_each_group_update():
  model = models.build('mlp', num_classes=3, hidden=(8, 8))
  params = init_variables(model, key=jax.random.key(0), input_shape=SHAPE)['params']
  order = transfer.layer_order(model, input_shape=SHAPE)
  assert order == ('dense1', 'dense2', 'head')
  make_tx = lambda: optax.sgd(0.1, momentum=0.9)  # noqa: E731
  tx = transfer.partition_optimizer(make_tx, params, order=order, layer_decay=0.5)
  plain = make_tx()
  state, plain_state = tx.init(params), plain.init(params)
  rng = np.random.default_rng(1)
  factor = {'dense1': 0.25, 'dense2': 0.5, 'head': 1.0}
  for _ in range(3):
    grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    updates, state = tx.update(grads, state, params)
    reference, plain_state = plain.update(grads, plain_state, params)
    for path, update in paths.flatten(updates).items():
      expected = paths.flatten(reference)[path] * factor[path.split('/')[0]]
      np.testing.assert_allclose(update, expected, rtol=1e-6, atol=0, err_msg=path)
  assert transfer.layer_scales(order, 0.5) == factor


def test_gradual_unfreezing_opens_layers_from_the_head_down():
  model = models.build('mlp', num_classes=3, hidden=(8, 8))
  params = init_variables(model, key=jax.random.key(0), input_shape=SHAPE)['params']
  order = transfer.layer_order(model, input_shape=SHAPE)
  tx = transfer.partition_optimizer(lambda: optax.sgd(0.1), params, order=order,
                                    unfreeze_every=2)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  starts = {'head': 0, 'dense2': 2, 'dense1': 4}
  for step in range(6):
    updates, state = tx.update(grads, state, params)
    for path, update in paths.flatten(updates).items():
      assert bool(jnp.any(update != 0)) == (step >= starts[path.split('/')[0]]), (step, path)


def test_unknown_layer_and_bad_patterns_are_refused():
  params = {'head': {'kernel': jnp.zeros((2, 2))}, 'extra': {'w': jnp.zeros(2)}}
  with pytest.raises(ValueError, match="'extra/w' belongs to no layer"):
    transfer.unfreeze_steps(params, order=('head',))
  with pytest.raises(TypeError, match='sequence of regexes'):
    transfer.merge_params(params, params, dont_load='head/.*')


def test_patterns_that_match_nothing_are_refused():
  """A freeze or skip pattern that matches no path would freeze or skip nothing."""
  params = {'head': {'kernel': jnp.zeros((2, 2))}, 'conv1': {'kernel': jnp.zeros((2, 2))}}
  make_tx = lambda: optax.sgd(0.1)  # noqa: E731
  with pytest.raises(ValueError, match=r"frozen pattern\(s\) \['conv9/.\*'\] match no path"):
    transfer.partition_optimizer(make_tx, params, order=('conv1', 'head'), frozen=('conv9/.*',))
  with pytest.raises(ValueError, match=r"trainable pattern\(s\) \['haed/.\*'\] match no path"):
    transfer.partition_optimizer(make_tx, params, order=('conv1', 'head'), trainable=('haed/.*',))
  with pytest.raises(ValueError, match=r"dont_load pattern\(s\) \['params/haed/.\*'\]"):
    transfer.merge_params({'params': params}, {'params': params}, dont_load=('params/haed/.*',))
  tx = transfer.partition_optimizer(make_tx, params, order=('conv1', 'head'), frozen=('conv1/.*',))
  assert tx.init(params) is not None  # a matching pattern is accepted


@pytest.fixture()
def fake_data(tmp_path, monkeypatch):
  make_fashion_mnist(tmp_path / 'raw', n_train=400, n_test=100, learnable=True)
  monkeypatch.setenv('JAXKD_FASHION_MNIST_DIR', str(tmp_path / 'raw'))
  monkeypatch.setenv('JAXKD_DATA_DIR', str(tmp_path / 'tfds'))
  monkeypatch.setenv('JAXKD_OFFLINE', '1')
  return tmp_path


def _small(config, **changes):
  """A tiny MLP on one device, logging and checkpointing every step or two."""
  config.model = 'mlp'
  config.model_overrides = ml_collections.ConfigDict({'hidden': (16,)})
  config.parallel.num_devices = 1
  config.log_every = 1
  config.eval_batch_size = 100
  config.checkpoint_every = 2
  for key, value in changes.items():
    config[key] = value
  return config


def test_finetune_then_distill_into_a_student_initialized_from_the_source(fake_data):
  tmp = fake_data
  source = _small(defaults.supervised(), classes=(0, 1, 2, 3, 4),
                  num_steps=3, batch_size=16)
  recipes.train(source, str(tmp / 'source'))

  target = dict(classes=(5, 6, 7, 8, 9), train_per_class=16, batch_size=16)
  ft = _small(defaults.finetune(), num_steps=3,
              init_dir=str(tmp / 'source'), **target)
  ft.finetune.method, ft.finetune.lp_steps = 'lp_ft', 2
  ft.optimizer.learning_rate = 1e-3
  final = recipes.finetune(ft, str(tmp / 'ft'))
  assert final['init_dir'] == str(tmp / 'ft' / 'lp') and 'lp_test_accuracy' in final
  assert final['steps'] == 3 and final['method'] == 'ft'
  lp_vars, lp_meta = checkpoint.load_variables(str(tmp / 'ft' / 'lp'))
  source_vars, _ = checkpoint.load_variables(str(tmp / 'source'))
  for path, leaf in paths.flatten(lp_vars).items():  # LP trained the new head only
    assert np.array_equal(leaf, paths.flatten(source_vars)[path]) == ('head' not in path)
  assert lp_meta['classes'] == [5, 6, 7, 8, 9] and lp_meta['task'] == 'finetune'

  kd = _small(defaults.distillation(), num_steps=3,
              teacher_dir=str(tmp / 'ft'), student_init_dir=str(tmp / 'source'), **target)
  student = recipes.distill(kd, str(tmp / 'kd'))
  teacher_vars, _ = checkpoint.load_variables(str(tmp / 'ft'))
  assert student['teacher_fingerprints'] == [tree_sha256(teacher_vars)]
  assert student['init_fingerprint'] and student['init_classes'] == [0, 1, 2, 3, 4]
  assert checkpoint.read_metadata(str(tmp / 'kd' / 'final'))['teacher_fingerprints'] == [
      tree_sha256(teacher_vars)]

  # Resuming that distillation with another teacher (the LP stage) is refused, untouched.
  def snapshot():
    return {os.path.join(r, n): os.stat(os.path.join(r, n)).st_mtime_ns
            for r, _, names in os.walk(tmp / 'kd') for n in names}
  before = snapshot()
  kd.teacher_dir = str(tmp / 'ft' / 'lp')
  with pytest.raises(checkpoint.IncompatibleCheckpointError) as error:
    recipes.distill(kd, str(tmp / 'kd'))
  assert tree_sha256(lp_vars) in str(error.value)
  assert tree_sha256(teacher_vars) in str(error.value)
  assert snapshot() == before
