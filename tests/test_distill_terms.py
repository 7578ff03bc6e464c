"""Terms in the distillation step: taps, loss parameters beside the student's, batch-level
terms on 1 and 8 devices, checkpoints of the loss state, and what a cache refuses."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxkd import cache, losses, models
from jaxkd.checkpoint import Checkpointer, IncompatibleCheckpointError
from jaxkd.distill import create_distill_state, make_distill_step
from jaxkd.losses import build_objective
from jaxkd.models.features import features
from jaxkd.parallel import Parallel
from jaxkd.state import DistillState, TrainState, init_variables, tree_sha256

SHAPE = (1, 28, 28, 1)
TEACHER = models.build('lenet5', num_classes=10)
STUDENT = models.build('lenet5_half', num_classes=10)
FITNET = {'ce': {'weight': 1.0},
          'fitnet': {'weight': 100.0, 'student_tap': 'pool2', 'teacher_tap': 'pool2'}}


@pytest.fixture(scope='module')
def teacher_vars():
  return init_variables(TEACHER, key=jax.random.key(1), input_shape=SHAPE)


def _batches(count, n=16, seed=0):
  rng = np.random.default_rng(seed)
  return [{'image': rng.normal(size=(n, 28, 28, 1)).astype(np.float32),
           'label': rng.integers(0, 10, n).astype(np.int32)} for _ in range(count)]


def _setup(spec, teacher_vars, parallel=Parallel('jit', num_devices=1)):
  objective = build_objective(spec, num_teachers=1)
  tx = optax.sgd(0.05, momentum=0.9)
  step = make_distill_step(student=STUDENT, teachers=TEACHER, tx=tx, objective=objective,
                           parallel=parallel)
  state = create_distill_state(STUDENT, tx, objective, teachers=[TEACHER],
                               teacher_variables=[teacher_vars], seed=0, input_shape=SHAPE)
  return objective, tx, step, state


def _run(step, state, teacher_vars, parallel, batches):
  state = parallel.replicate(state)
  teacher = parallel.place_teacher(teacher_vars)
  history = []
  for batch in batches:
    state, metrics = step(state, parallel.shard_batch(batch), teacher)
    history.append(jax.device_get(parallel.unreplicate(metrics)))
  return parallel.unreplicate(state), history


def test_fitnet_regressor_trains_beside_the_student(teacher_vars):
  _, _, step, state = _setup(FITNET, teacher_vars)
  assert isinstance(state, DistillState)
  kernel = np.asarray(state.loss_params['fitnet']['kernel'])  # a copy: the step donates
  assert kernel.shape == (1, 1, 8, 16)  # LeNet-5-Half pool2 (8 ch.) -> LeNet-5 pool2 (16)
  batch = _batches(1)[0]
  # The hint of step 0 from an independent computation: the tapped features, in NumPy.
  (_, s_feats), _ = features(STUDENT, state.variables, batch['image'], ['pool2'], train=True,
                             mutable=['batch_stats'])
  _, t_feats = features(TEACHER, teacher_vars, batch['image'], ['pool2'])
  s, t = np.asarray(s_feats['pool2'], np.float64), np.asarray(t_feats['pool2'], np.float64)
  regressed = s @ np.asarray(kernel[0, 0], np.float64) + np.asarray(
      state.loss_params['fitnet']['bias'])
  want = np.mean((regressed - t) ** 2, axis=(1, 2, 3)).mean()
  student_sha = tree_sha256(state.params)
  new_state, metrics = step(state, batch, teacher_vars)
  assert tree_sha256(new_state.params) != student_sha  # the student trained too
  assert float(metrics['fitnet_loss']) == pytest.approx(want, rel=1e-4)
  assert {'ce_loss', 'fitnet_loss', 'ce_weight', 'fitnet_weight'} <= set(metrics)
  assert not np.allclose(new_state.loss_params['fitnet']['kernel'], kernel)  # trained
  # The student's own variables and fingerprint know nothing of the regressor.
  assert set(new_state.variables) == {'params'} and 'fitnet' not in new_state.params
  assert jax.tree.structure(new_state.params) == jax.tree.structure(
      init_variables(STUDENT, key=jax.random.key(0), input_shape=SHAPE)['params'])


def test_objective_without_owned_variables_keeps_the_plain_state(teacher_vars):
  _, _, _, state = _setup({'ce': {'weight': 1.0}, 'at': {'weight': 1000.0,
                                                          'student_taps': ['pool1', 'pool2'],
                                                          'teacher_taps': ['pool1', 'pool2']}},
                          teacher_vars)
  assert type(state) is TrainState


def test_unknown_tap_lists_the_valid_paths(teacher_vars):
  with pytest.raises(ValueError, match=r"No module at path\(s\) \['stage2'\].*pool2"):
    _setup({'fitnet': {'weight': 1.0, 'student_tap': 'stage2', 'teacher_tap': 'pool2'}},
           teacher_vars)


@pytest.mark.parametrize('parallel', [Parallel('jit'), Parallel('pmap'), Parallel('shard_map')],
                         ids=lambda p: p.mode)
def test_batch_level_and_feature_terms_same_on_8_devices(teacher_vars, parallel):
  spec = {'ce': {'weight': 1.0}, 'dist': {'weight': 2.0},
          'at': {'weight': 100.0, 'student_taps': ['pool1'], 'teacher_taps': ['pool1']}}
  batches = _batches(3, n=32)
  _, _, step, state = _setup(spec, teacher_vars)
  ref_state, ref = _run(step, state, teacher_vars, Parallel('jit', num_devices=1), batches)
  _, _, step, state = _setup(spec, teacher_vars, parallel)
  got_state, got = _run(step, state, teacher_vars, parallel, batches)
  for key in ('loss', 'dist_loss', 'at_loss'):
    np.testing.assert_allclose([m[key] for m in got], [m[key] for m in ref], rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(got_state.params), jax.device_get(ref_state.params))


def test_loss_parameters_checkpoint_and_a_changed_term_set_is_refused(teacher_vars, tmp_path):
  spec = {'ce': {'weight': 0.1}, 'ctkd': {'weight': 0.9, 'curriculum_steps': 4}}
  objective, _, step, state = _setup(spec, teacher_vars)
  for batch in _batches(2):
    state, _ = step(state, batch, teacher_vars)
  assert float(state.loss_params['ctkd']['temperature_logit']) != 1.0  # it learned
  meta = {'objective': objective.describe()}
  with Checkpointer(tmp_path / 'ckpt', metadata=meta) as ckpt:
    ckpt.save(2, state)
  template = jax.tree.map(np.asarray, state)
  with Checkpointer(tmp_path / 'ckpt', metadata=meta) as ckpt:
    restored = ckpt.restore(template).state
  assert isinstance(restored, DistillState)
  assert tree_sha256(restored) == tree_sha256(template)
  # One more step from the restored state equals one more from the original.
  batch = _batches(1, seed=5)[0]
  a, _ = step(state, batch, teacher_vars)
  b, _ = step(restored, batch, teacher_vars)
  assert tree_sha256(a) == tree_sha256(b)
  other = build_objective({**spec, 'ctkd': {'weight': 0.9, 'curriculum_steps': 8}})
  before = sorted(p.name for p in (tmp_path / 'ckpt').rglob('*'))
  with pytest.raises(IncompatibleCheckpointError, match='objective'):
    Checkpointer(tmp_path / 'ckpt', metadata={'objective': other.describe()})
  assert sorted(p.name for p in (tmp_path / 'ckpt').rglob('*')) == before


def test_cached_teacher_refuses_feature_terms_and_topk_refuses_other_losses():
  tx = optax.sgd(0.1)
  at = build_objective({'at': {'weight': 1.0, 'student_taps': ['pool1'],
                               'teacher_taps': ['pool1']}})
  with pytest.raises(ValueError, match='live teacher'):
    make_distill_step(student=STUDENT, teachers=None, tx=tx, objective=at, cached=True)
  dkd = build_objective({'dkd': {'weight': 1.0}})
  step = make_distill_step(student=STUDENT, teachers=None, tx=tx, objective=dkd, cached=True)
  state = create_distill_state(STUDENT, tx, dkd, teachers=None, teacher_variables=None, seed=0,
                               input_shape=SHAPE)
  batch = {**_batches(1, n=4)[0], 'teacher_topk_logits': np.ones((4, 2), np.float32),
           'teacher_topk_indices': np.zeros((4, 2), np.int32),
           'teacher_rest_log_mass': np.full((4,), -1.0, np.float32)}
  with pytest.raises(ValueError, match=r"'dkd'.*top-k teacher cache"):
    step(state, batch, ())


def test_topk_cache_teacher_metrics_come_from_its_stored_top1():
  tx = optax.sgd(0.1)
  objective = losses.make_objective(hard_weight=0.5, soft_weight=0.5, temperature=2.0)
  rng = np.random.default_rng(3)
  teacher_logits = rng.normal(size=(64, 100)).astype(np.float32) * 3
  labels = np.argmax(teacher_logits, -1).astype(np.int32)
  labels[::2] = (labels[::2] + 1) % 100  # the teacher is right on every other example
  stored = cache.compute(lambda v, x: jnp.asarray(teacher_logits), None, np.zeros((64, 1)),
                         dataset='d', split='train', transform={}, teacher_fingerprint='t',
                         dtype='float32', topk=3, temperature=2.0, batch_size=64)
  student = models.build('mlp', num_classes=100, hidden=(8,))
  step = make_distill_step(student=student, teachers=None, tx=tx, objective=objective,
                           cached=True)
  state = create_distill_state(student, tx, objective, teachers=None, teacher_variables=None,
                               seed=0, input_shape=SHAPE)
  batch = {'image': rng.normal(size=(64, 28, 28, 1)).astype(np.float32), 'label': labels,
           **stored.rows()}
  want_agreement = np.mean(np.argmax(teacher_logits, -1) == np.argmax(
      student.apply(state.variables, batch['image']), -1))
  _, metrics = step(state, batch, ())
  assert float(metrics['teacher_accuracy']) == pytest.approx(0.5)
  assert float(metrics['agreement']) == pytest.approx(want_agreement)
