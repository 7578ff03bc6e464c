"""Feature and relation terms in the distillation step: every one trains the LeNet pair, the
batch-level ones see the global batch (1 and 8 devices agree), projectors live beside the
student, and OFD reads the teacher's BatchNorm margins."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxkd import losses, models, ops
from jaxkd.distill import create_distill_state, make_distill_step
from jaxkd.losses import projectors
from jaxkd.losses import ofd_margin
from jaxkd.parallel import Parallel
from jaxkd.recipes.method_configs import METHODS
from jaxkd.state import DistillState, init_variables

SHAPE = (1, 28, 28, 1)
TEACHER = models.build('lenet5', num_classes=10)
STUDENT = models.build('lenet5_half', num_classes=10)
NEW = ('sp', 'cc', 'rkd', 'pkt', 'nst', 'ickd', 'fsp', 'vid', 'ofd', 'reviewkd')


@pytest.fixture(scope='module')
def teacher_vars():
  return init_variables(TEACHER, key=jax.random.key(1), input_shape=SHAPE)


def _batches(count, n=16, seed=0):
  rng = np.random.default_rng(seed)
  return [{'image': rng.normal(size=(n, 28, 28, 1)).astype(np.float32),
           'label': rng.integers(0, 10, n).astype(np.int32)} for _ in range(count)]


def _spec(methods):
  spec = {'ce': {'weight': 1.0}}
  for method in methods:
    spec.update({k: dict(v) for k, v in METHODS[method][1].items()})
  return spec


def _state_and_step(spec, teacher_vars, parallel):
  """The LeNet pair's distillation state (on the host) and step for the objective `spec`."""
  objective = losses.build_objective(spec, num_teachers=1)
  tx = optax.sgd(0.01)
  step = make_distill_step(student=STUDENT, teachers=TEACHER, tx=tx, objective=objective,
                           parallel=parallel)
  state = create_distill_state(STUDENT, tx, objective, teachers=[TEACHER],
                               teacher_variables=[teacher_vars], seed=0, input_shape=SHAPE)
  return state, step


def _run(distill_steps, spec, teacher_vars, parallel, batches):
  """The state and metrics after `batches` (`distill_steps`, the conftest fixture)."""
  state, step = _state_and_step(spec, teacher_vars, parallel)
  return distill_steps(step, state, teacher_vars, parallel, batches)


@pytest.fixture(scope='module')
def all_new_terms(teacher_vars, distill_steps):
  """All ten together in one objective (one compile), two steps, as the session traces."""
  return _run(distill_steps, _spec(NEW), teacher_vars, Parallel('jit', num_devices=1),
              _batches(2))


def test_every_new_term_trains_the_lenet_pair(all_new_terms):
  """Each term positive and finite, the projectors of ickd/fsp/vid/ofd/reviewkd beside the
  student's parameters."""
  state, history = all_new_terms
  for name in NEW:
    values = [h[f'{name}_loss'] for h in history]
    assert all(np.isfinite(v) and v > 0 for v in values), (name, values)
  assert isinstance(state, DistillState)
  assert sorted(state.loss_params) == ['fsp', 'ickd', 'ofd', 'reviewkd', 'vid']
  assert state.loss_params['reviewkd']['stage0']['conv2'].shape == (3, 3, 8, 6)  # -> pool1
  # pool2: 8 -> 16 channels, then the authors' BatchNorm.
  assert state.loss_params['ickd']['pair0']['conv']['kernel'].shape == (8, 16)
  assert state.loss_params['ickd']['pair0']['bn_scale'].shape == (16,)
  assert state.loss_params['vid']['pair1']['log_scale'].shape == (16,)
  np.testing.assert_allclose(jax.nn.softplus(state.loss_params['vid']['pair0']['log_scale']),
                             5.0 - 1e-5, rtol=1e-3)  # initial variance 5 (after one update)
  assert 'ickd' not in str(jax.tree_util.tree_structure(state.params))


def test_terms_on_the_cpu_formulations_match_xla(teacher_vars, all_new_terms, distill_steps):
  """The same two steps traced on XLA's own operations (`ops.XLA`) give the losses and
  parameters of the CPU formulations (the default on CPU: the models' convolutions,
  `jaxkd.accel` connectors, buffers cut by `computed_once`)."""
  with ops.use(ops.XLA):
    xla, xla_history = _run(distill_steps, _spec(NEW), teacher_vars,
                            Parallel('jit', num_devices=1), _batches(2))
  fast, fast_history = all_new_terms
  for a, b in zip(fast_history, xla_history):
    for name in NEW:
      np.testing.assert_allclose(a[f'{name}_loss'], b[f'{name}_loss'], rtol=2e-4, atol=1e-7)
  for a, b in zip(jax.tree.leaves((fast.params, fast.loss_params)),
                  jax.tree.leaves((xla.params, xla.loss_params))):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_connector_batch_norm_folds_into_the_kernel():
  """`conv1x1_batch_norm` is BatchNorm (batch statistics) of the 1x1 convolution: values
  against NumPy in float64, gradients against the two steps written out."""
  rng = np.random.default_rng(3)
  x = rng.normal(1.0, 2.0, size=(4, 5, 6, 3)).astype(np.float32)
  kernel = rng.normal(size=(3, 7)).astype(np.float32)
  scale, bias = rng.uniform(0.5, 2, 7).astype(np.float32), rng.normal(size=7).astype(np.float32)
  y = x.astype(np.float64) @ kernel.astype(np.float64)
  mean, var = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
  expected = (y - mean) / np.sqrt(var + projectors.BN_EPS) * scale + bias
  folded = lambda *a: projectors.conv1x1_batch_norm(*a, None)  # noqa: E731
  np.testing.assert_allclose(folded(x, kernel, scale, bias), expected, rtol=1e-4, atol=1e-4)

  def two_steps(x, kernel, scale, bias):
    return projectors.batch_norm(projectors.conv1x1(x, {'kernel': kernel}), scale, bias, None)

  weights = rng.normal(size=expected.shape).astype(np.float32)
  grads = [jax.grad(lambda *a: jnp.sum(f(*a) * weights), argnums=(0, 1, 2, 3))(
      x, kernel, scale, bias) for f in (folded, two_steps)]
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


BATCH_LEVEL = _spec(('sp', 'cc', 'rkd', 'pkt', 'ofd', 'reviewkd'))


@pytest.fixture(scope='module')
def on_one_device(teacher_vars, distill_steps):
  return _run(distill_steps, BATCH_LEVEL, teacher_vars, Parallel('jit', num_devices=1),
              _batches(2))


@pytest.mark.parametrize('mode', ['jit', 'pmap', 'shard_map'])
def test_batch_level_terms_see_the_global_batch(teacher_vars, on_one_device, mode,
                                                distill_steps):
  one, ones = on_one_device
  eight, eights = _run(distill_steps, BATCH_LEVEL, teacher_vars, Parallel(mode, num_devices=8),
                       _batches(2))
  for a, b in zip(ones, eights):
    for name in ('sp', 'cc', 'rkd', 'pkt', 'ofd', 'reviewkd'):
      np.testing.assert_allclose(a[f'{name}_loss'], b[f'{name}_loss'], rtol=2e-4, atol=1e-7)
  for a, b in zip(jax.tree.leaves((one.params, one.loss_params)),
                  jax.tree.leaves((eight.params, eight.loss_params))):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_ofd_margin_from_the_teachers_batchnorm():
  """With `teacher_bns`, the margin comes from the BatchNorm's scale and bias (not the batch)."""
  teacher, student = models.build('resnet8', num_classes=10), models.build('resnet8',
                                                                           num_classes=10)
  shape = (1, 8, 8, 3)
  t_vars = init_variables(teacher, key=jax.random.key(3), input_shape=shape)
  t_vars['params']['stage1']['block0']['bn2']['scale'] = jnp.full((16,), 2.0)
  t_vars['params']['stage1']['block0']['bn2']['bias'] = jnp.full((16,), -1.0)
  term = losses.OFD(student_taps=('stage1/preact',), teacher_taps=('stage1/preact',),
                    teacher_bns=('stage1/block0/bn2',))
  outputs = losses.Outputs(jnp.zeros((2, 10)), {'stage1/preact': jnp.zeros((2, 8, 8, 16))},
                           variables=t_vars)
  margin = term._margin(0, outputs.features['stage1/preact'], outputs, None)
  np.testing.assert_allclose(margin, ofd_margin(jnp.full((16,), 2.0), jnp.full((16,), -1.0)))
  bad = losses.OFD(student_taps=('a',), teacher_taps=('a',), teacher_bns=('stage1/nope',))
  with pytest.raises(ValueError, match="no BatchNorm at teacher_bns path 'stage1/nope'"):
    bad._margin(0, outputs.features['stage1/preact'], outputs, None)
  del student


def test_sdd_classifies_multiscale_cells_with_each_models_head():
  """SDD's loss equals `sdd_loss` on the cells classified by each model's own head; a model
  whose classifier does not read the pooled map (LeNet-5) is refused by name."""
  from jaxkd.losses import multiscale_pooled_features, sdd_loss
  from jaxkd.models import features
  teacher, student = models.build('resnet8', num_classes=10), models.build('resnet8',
                                                                           num_classes=10)
  shape = (4, 16, 16, 3)
  t_vars = init_variables(teacher, key=jax.random.key(3), input_shape=shape)
  s_vars = init_variables(student, key=jax.random.key(4), input_shape=shape)
  images = jax.random.normal(jax.random.key(5), shape)
  labels = jnp.array([0, 1, 2, 3])
  # One compiled program for both (same architecture), not op-by-op dispatch: cheaper.
  tapped = jax.jit(lambda variables, x: features(student, variables, x, ['stage3']))
  outs = []
  for variables in (s_vars, t_vars):
    logits, feats = tapped(variables, images)
    outs.append(losses.Outputs(logits, feats, variables=variables))
  term = losses.make_term('sdd', temperature=4.0)
  value, _, _ = term(losses.Context(outs[0], [outs[1]], {'label': labels}))

  def cells(out, variables):
    pooled = multiscale_pooled_features(out.features['stage3'])
    head = variables['params']['head']
    return pooled @ head['kernel'] + head['bias']
  want = sdd_loss(cells(outs[0], s_vars), cells(outs[1], t_vars), labels, temperature=4.0,
                  complementary_weight=2.0)
  np.testing.assert_allclose(value, want, rtol=1e-6)
  np.testing.assert_allclose(cells(outs[0], s_vars)[:, 0], outs[0].logits, rtol=1e-4,
                             atol=1e-5)  # the global cell is the model's own logits
  lenet = losses.Outputs(jnp.zeros((2, 10)), {'stage3': jnp.zeros((2, 5, 5, 16))},
                         variables=init_variables(TEACHER, key=jax.random.key(0),
                                                  input_shape=SHAPE))
  with pytest.raises(ValueError, match='global average'):
    term(losses.Context(lenet, [lenet], {'label': labels[:2]}))


def test_term_settings_are_checked():
  with pytest.raises(ValueError, match='order must be an int >= 1'):
    losses.make_term('cc', order=0)
  with pytest.raises(ValueError, match='at least 2'):
    losses.make_term('fsp', student_taps=('pool2',), teacher_taps=('pool2',))
  with pytest.raises(ValueError, match='one to one'):
    losses.make_term('nst', student_taps=('pool1',), teacher_taps=('pool1', 'pool2'))
  with pytest.raises(ValueError, match='one teacher_bns path per teacher tap'):
    losses.make_term('ofd', teacher_bns=('a',))


# ----------------------------------------------------------------------------------- CRD

CRD_SPEC = {'ce': {'weight': 1.0},
            'crd': {'weight': 0.8, 'embed_dim': 8, 'num_negatives': 32, 'num_data': 64,
                    'student_tap': 'dense2', 'teacher_tap': 'dense2', 'sampling': 'uniform'}}


def _indexed(count, n=16):
  """Batches carrying their examples' dataset indices (distinct, out of 64)."""
  order = np.random.default_rng(5).permutation(64)
  return [{**b, 'index': order[i * n:(i + 1) * n].astype(np.int32)}
          for i, b in enumerate(_batches(count, n=n, seed=7))]


def _crd_state_and_step(teacher_vars, parallel):
  state, step = _state_and_step(CRD_SPEC, teacher_vars, parallel)
  return jax.tree.map(np.asarray, jax.device_get(state)), step


@pytest.fixture(scope='module')
def crd_one_device(teacher_vars):
  state, step = _crd_state_and_step(teacher_vars, Parallel('jit', num_devices=1))
  return state, step


def test_crd_bank_update_and_normalisers(teacher_vars, crd_one_device):
  state, step = crd_one_device
  assert state.loss_state['crd']['student_bank'].shape == (64, 8)
  assert float(state.loss_state['crd']['student_normaliser']) < 0  # unset until step 1
  batch = _indexed(1)[0]
  new, metrics = step(jax.tree.map(jnp.array, state), batch, teacher_vars)
  assert np.isfinite(metrics['crd_loss']) and metrics['crd_loss'] > 0
  before, after = state.loss_state['crd'], jax.device_get(new.loss_state['crd'])
  touched = batch['index']
  untouched = np.setdiff1d(np.arange(64), touched)
  for side in ('student', 'teacher'):
    np.testing.assert_array_equal(after[f'{side}_bank'][untouched],
                                  before[f'{side}_bank'][untouched])
    rows = after[f'{side}_bank'][touched]
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(rows, before[f'{side}_bank'][touched])
    assert float(after[f'{side}_normaliser']) > 0  # estimated on the first batch...
  again, _ = step(new, _indexed(2)[1], teacher_vars)
  for side in ('student', 'teacher'):  # ...and kept
    assert float(jax.device_get(again.loss_state['crd'][f'{side}_normaliser'])) == float(
        after[f'{side}_normaliser'])


@pytest.mark.parametrize('mode', ['pmap', 'shard_map'])
def test_crd_on_8_devices_equals_1_and_resumes_exactly(teacher_vars, crd_one_device, mode,
                                                       tmp_path):
  from jaxkd.checkpoint import Checkpointer
  state, step = crd_one_device
  batches = _indexed(4)
  one = jax.tree.map(jnp.array, state)
  for batch in batches:
    one, _ = step(one, batch, teacher_vars)
  parallel = Parallel(mode, num_devices=8)
  _, eight_step = _crd_state_and_step(teacher_vars, parallel)
  eight, teacher = parallel.replicate(state), parallel.place_teacher(teacher_vars)
  for batch in batches[:2]:
    eight, _ = eight_step(eight, parallel.shard_batch(batch), teacher)
  with Checkpointer(str(tmp_path / 'ckpt'), metadata={'task': 'crd'}) as checkpointer:
    checkpointer.save(2, parallel.unreplicate(eight))
    eight = parallel.replicate(checkpointer.restore(state).state)
  for batch in batches[2:]:
    eight, _ = eight_step(eight, parallel.shard_batch(batch), teacher)
  eight = parallel.unreplicate(eight)
  for a, b in zip(jax.tree.leaves(one.loss_state), jax.tree.leaves(eight.loss_state)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(eight.params)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_crd_refuses_missing_indices_and_a_bank_too_large(teacher_vars, crd_one_device):
  state, step = crd_one_device
  with pytest.raises(ValueError, match=r"batch\['index'\]"):
    step(jax.tree.map(jnp.array, state), _batches(1)[0], teacher_vars)
  objective = losses.build_objective(
      {'crd': {'weight': 1.0, 'num_data': 10**12, 'embed_dim': 128, 'sampling': 'uniform'}},
      num_teachers=1)
  with pytest.raises(ValueError, match='num_data'):
    create_distill_state(STUDENT, optax.sgd(0.1), objective, teachers=[TEACHER],
                         teacher_variables=[teacher_vars], seed=0, input_shape=SHAPE)
