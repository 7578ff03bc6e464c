"""The same step on 1 device and on 8 fake CPU devices under jit, pmap and shard_map."""
import jax
import numpy as np
import optax
import pytest

from jaxkd import losses, models, ops
from jaxkd.augment import Augment
from jaxkd.distill import make_distill_step
from jaxkd.parallel import Parallel
from jaxkd.state import create_train_state, init_variables
from jaxkd.steps import make_eval_step, make_train_step

SHAPE = (1, 28, 28, 1)
AUGMENT = Augment(crop_padding=2, flip=True)


def _batches(count, n=32):
  rng = np.random.default_rng(0)
  return [{'image': rng.normal(size=(n, 28, 28, 1)).astype(np.float32),
           'label': rng.integers(0, 10, n).astype(np.int32)} for _ in range(count)]


def _run(parallel, make_step, model, tx, step_args=(), steps=3):
  step = make_step(parallel)
  state = parallel.replicate(create_train_state(model, tx, seed=0, input_shape=SHAPE))
  step_args = tuple(parallel.place_teacher(a) for a in step_args)
  losses_seen = []
  for batch in _batches(steps):
    state, metrics = step(state, parallel.shard_batch(batch), *step_args)
    losses_seen.append(float(parallel.unreplicate(metrics)['loss']))
  return losses_seen, jax.device_get(parallel.unreplicate(state).params)


MODES = [Parallel('jit'), Parallel('pmap'), Parallel('shard_map'),
         Parallel('jit', shard_teacher=True)]


@pytest.fixture(scope='module')
def distill_setup():
  teacher = models.build('lenet5_half', num_classes=10)
  student = models.build('mlp', num_classes=10, hidden=(32,))
  teacher_vars = init_variables(teacher, key=jax.random.key(1), input_shape=SHAPE)
  tx = optax.sgd(0.05, momentum=0.9)
  objective = losses.make_objective(hard_weight=0.5, soft_weight=0.5, temperature=4.0)
  make = lambda p: make_distill_step(student=student, teachers=teacher, tx=tx,
                                     objective=objective, augment=AUGMENT, parallel=p)
  reference = _run(Parallel('jit', num_devices=1), make, student, tx, (teacher_vars,))
  return make, student, tx, teacher_vars, reference


@pytest.mark.parametrize('parallel', MODES, ids=lambda p: p.mode + ('_fsdp' * p.shard_teacher))
def test_distill_step_same_on_8_devices(distill_setup, parallel):
  make, student, tx, teacher_vars, (ref_losses, ref_params) = distill_setup
  assert parallel.size == 8
  got_losses, got_params = _run(parallel, make, student, tx, (teacher_vars,))
  np.testing.assert_allclose(got_losses, ref_losses, rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               got_params, ref_params)


@pytest.fixture(scope='module')
def supervised_setup():
  model = models.build('lenet5_half', num_classes=10)
  tx = optax.adam(1e-3)
  make = lambda p: make_train_step(model=model, tx=tx, augment=AUGMENT, parallel=p)
  return make, model, tx, _run(Parallel('jit', num_devices=1), make, model, tx)


@pytest.mark.parametrize('mode', ['jit', 'pmap', 'shard_map'])
def test_supervised_step_same_on_8_devices(supervised_setup, mode):
  make, model, tx, (ref_losses, ref_params) = supervised_setup
  got_losses, got_params = _run(Parallel(mode), make, model, tx)
  np.testing.assert_allclose(got_losses, ref_losses, rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               got_params, ref_params)


def test_batchnorm_model_same_on_8_devices_under_jit():
  # Under jit XLA computes BatchNorm statistics over the global batch, as on one device.
  # XLA's convolutions (LeNet's tests above run the CPU ones on 8 devices): faster to compile.
  model = models.build('resnet8', num_classes=10, widths=(4, 4, 8, 8))  # narrow: fast
  tx = optax.sgd(0.1, momentum=0.9)
  make = lambda p: make_train_step(model=model, tx=tx, parallel=p)
  with ops.use(ops.XLA):
    ref_losses, ref_params = _run(Parallel('jit', num_devices=1), make, model, tx, steps=2)
    got_losses, got_params = _run(Parallel('jit'), make, model, tx, steps=2)
  np.testing.assert_allclose(got_losses, ref_losses, rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
               got_params, ref_params)


@pytest.mark.parametrize('mode', ['jit', 'pmap', 'shard_map'])
def test_eval_step_sums_over_devices(mode):
  model = models.build('mlp', num_classes=10, hidden=(8,))
  variables = init_variables(model, key=jax.random.key(0), input_shape=SHAPE)
  batch = _batches(1, n=64)[0]
  batch['mask'] = (np.arange(64) < 50).astype(np.float32)
  reference = jax.device_get(make_eval_step(model=model, num_classes=10,
                                            parallel=Parallel('jit', num_devices=1))(
                                                variables, batch))
  parallel = Parallel(mode)
  step = make_eval_step(model=model, num_classes=10, parallel=parallel)
  got = jax.device_get(parallel.unreplicate(
      step(parallel.replicate(variables), parallel.shard_batch(batch))))
  assert float(got['count']) == 50.0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), got, reference)


def test_bad_parallel_settings_are_refused():
  with pytest.raises(ValueError, match='Unknown parallel mode'):
    Parallel('dp')
  with pytest.raises(ValueError, match='num_devices'):
    Parallel('jit', num_devices=99)
  with pytest.raises(ValueError, match='shard_teacher'):
    Parallel('pmap', shard_teacher=True)
  with pytest.raises(ValueError, match='divisible'):
    Parallel('jit').shard_batch({'label': np.zeros(12, np.int32)})


@pytest.mark.parametrize('mode', ['jit', 'shard_map'])
def test_batches_placed_by_the_pipeline_are_not_moved_again(mode):
  from jaxkd.data import InMemoryDataset
  parallel = Parallel(mode)
  images = np.arange(64 * 4, dtype=np.uint8).reshape(64, 2, 2, 1)
  dataset = InMemoryDataset(images, np.arange(64) % 10, batch_size=16, mean=0.0, std=1.0,
                            batch_sharding=parallel.batch_sharding(), num_classes=10)
  batch = dataset.batch(0, 0)
  placed = parallel.shard_batch(batch)
  assert all(placed[k] is batch[k] for k in batch)  # already where the step wants it
  assert len(placed['image'].sharding.device_set) == 8
  loose = jax.device_put(batch, jax.devices()[0])  # one device: resharded over all 8
  moved = parallel.shard_batch(loose)
  assert moved['image'].sharding.is_equivalent_to(parallel.batch_sharding(), 4)
  np.testing.assert_array_equal(moved['image'], batch['image'])
  assert Parallel('pmap').batch_sharding() is None
