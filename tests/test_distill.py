"""The distillation step (jaxkd.distill): teacher untouched, student-only gradients,
multi-teacher, adapters; terms in the step: taps, loss parameters beside the student's,
batch-level terms on 1 and 8 devices, checkpoints of the loss state, what a cache refuses."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxkd import cache, losses, models
from jaxkd.augment import Augment
from jaxkd.checkpoint import Checkpointer, IncompatibleCheckpointError
from jaxkd.distill import create_distill_state, make_distill_step
from jaxkd.losses import build_objective
from jaxkd.models.features import features
from jaxkd.parallel import Parallel
from jaxkd.state import (DistillState, TrainState, create_train_state, init_variables,
                         tree_sha256)

SHAPE = (1, 28, 28, 1)


def _np_kd(student, teacher, t):
  """Independent float64 reference: T^2 KL(softmax(teacher/T) || softmax(student/T))."""
  def log_softmax(z):
    z = np.asarray(z, np.float64) / t
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
  lt, ls = log_softmax(teacher), log_softmax(student)
  return t * t * (np.exp(lt) * (lt - ls)).sum(-1)


def _np_ce(logits, labels):
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -logp[np.arange(len(labels)), labels]


@pytest.fixture(scope='module')
def pair(lenet_pair, teacher_vars):
  """The LeNet-5 teacher with a small MLP student."""
  return lenet_pair[0], models.build('mlp', num_classes=10, hidden=(32,)), teacher_vars


def test_teacher_untouched_and_student_learns(pair, make_batches):
  teacher, student, teacher_vars = pair
  tx = optax.adam(3e-3)
  objective = losses.make_objective(hard_weight=0.5, soft_weight=0.5, temperature=4.0)
  step = make_distill_step(student=student, teachers=teacher, tx=tx, objective=objective,
                           augment=Augment(crop_padding=2))
  parallel = Parallel()
  state = parallel.replicate(create_train_state(student, tx, seed=0, input_shape=SHAPE))
  teacher_vars = parallel.place_teacher(teacher_vars)
  before = jax.tree.map(np.array, teacher_vars)
  batch = parallel.shard_batch(make_batches(1)[0])
  state, first = step(state, batch, teacher_vars)
  for _ in range(15):
    state, metrics = step(state, batch, teacher_vars)
  assert step._cache_size() == 1
  # Teacher variables bit-identical and still alive (never donated).
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, teacher_vars))
  # Only the student's parameters are in the optimizer state.
  assert jax.tree.structure(state.opt_state[0].mu) == jax.tree.structure(state.params)
  assert float(metrics['loss']) < float(first['loss'])
  for key in ('loss', 'ce_loss', 'kd_loss', 'accuracy', 'teacher_accuracy', 'agreement',
              'grad_norm'):
    assert np.isfinite(float(metrics[key])), key


def test_loss_matches_numpy_for_two_teachers(pair, make_batches):
  teacher, student, teacher_vars = pair
  other = models.build('lenet5_half', num_classes=10)
  other_vars = init_variables(other, key=jax.random.key(7), input_shape=SHAPE)
  tx = optax.sgd(0.0)
  batch = make_batches(1, seed=3)[0]
  state = create_train_state(student, tx, seed=0, input_shape=SHAPE)
  s = np.asarray(student.apply(state.variables, batch['image'], train=False))
  t1 = np.asarray(teacher.apply(teacher_vars, batch['image'], train=False))
  t2 = np.asarray(other.apply(other_vars, batch['image'], train=False))
  ce = _np_ce(s, batch['label'])
  for mode, soft in [('sum', 0.25 * _np_kd(s, t1, 2.0) + 0.75 * _np_kd(s, t2, 2.0)),
                     ('ensemble', None)]:
    objective = losses.make_objective(hard_weight=0.3, soft_weight=0.7, temperature=2.0,
                                      teacher_weights=(1.0, 3.0), multi_teacher=mode)
    step = make_distill_step(student=student, teachers=[teacher, other], tx=tx,
                             objective=objective)
    fresh = create_train_state(student, tx, seed=0, input_shape=SHAPE)  # steps donate state
    _, metrics = step(fresh, batch, (teacher_vars, other_vars))
    if soft is None:  # KD against the weighted average of the softened teacher distributions
      def probs(z):
        e = np.exp((z - z.max(-1, keepdims=True)) / 2.0)
        return e / e.sum(-1, keepdims=True)
      p = 0.25 * probs(t1.astype(np.float64)) + 0.75 * probs(t2.astype(np.float64))
      z = s.astype(np.float64) / 2.0
      log_q = z - z.max(-1, keepdims=True)
      log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))
      soft = 4.0 * (p * (np.log(p) - log_q)).sum(-1)
    np.testing.assert_allclose(float(metrics['kd_loss']), soft.mean(), rtol=1e-4)
    np.testing.assert_allclose(float(metrics['loss']), (0.3 * ce + 0.7 * soft).mean(), rtol=1e-4)
    np.testing.assert_allclose(float(metrics['teacher0_accuracy']),
                               np.mean(t1.argmax(-1) == batch['label']))


def test_teacher_runs_in_inference_mode(make_batches):
  # A dropout teacher: the step's teacher accuracy must equal its deterministic eval output.
  teacher = models.build('mlp_1200', num_classes=10)
  teacher_vars = init_variables(teacher, key=jax.random.key(2), input_shape=SHAPE)
  student = models.build('mlp', num_classes=10, hidden=(8,))
  tx = optax.sgd(0.0)
  objective = losses.make_objective(hard_weight=0.0, soft_weight=1.0, temperature=1.0)
  step = make_distill_step(student=student, teachers=teacher, tx=tx, objective=objective)
  state = create_train_state(student, tx, seed=0, input_shape=SHAPE)
  batch = make_batches(1, n=64, seed=5)[0]
  t = np.asarray(teacher.apply(teacher_vars, batch['image'], train=False))
  s = np.asarray(student.apply(state.variables, batch['image'], train=False))
  _, metrics = step(state, batch, teacher_vars)
  np.testing.assert_allclose(float(metrics['kd_loss']), _np_kd(s, t, 1.0).mean(), rtol=1e-4)


def test_nnx_models_through_adapters(make_batches):
  class NNXMLP(nnx.Module):
    def __init__(self, *, rngs):
      self.hidden = nnx.Linear(784, 16, rngs=rngs)
      self.head = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x, train=False):
      return self.head(nnx.relu(self.hidden(x.reshape(x.shape[0], -1))))

  # Teacher: split once into (graphdef, state); the pure apply merges them back.
  graphdef, teacher_state = nnx.split(NNXMLP(rngs=nnx.Rngs(0)))
  teacher_apply = lambda state, images: nnx.merge(graphdef, state)(images)
  # Student: nnx.bridge.to_linen turns the NNX class into a Linen module.
  student = nnx.bridge.to_linen(NNXMLP)
  tx = optax.adam(1e-2)
  objective = losses.make_objective(hard_weight=0.0, soft_weight=1.0, temperature=2.0)
  step = make_distill_step(student=student, teachers=teacher_apply, tx=tx, objective=objective)
  state = create_train_state(student, tx, seed=0, input_shape=SHAPE)
  batch = make_batches(1)[0]
  state, first = step(state, batch, teacher_state)
  for _ in range(20):
    state, metrics = step(state, batch, teacher_state)
  assert float(metrics['kd_loss']) < 0.5 * float(first['kd_loss'])


def test_rejects_bad_wiring(pair, make_batches):
  teacher, student, teacher_vars = pair
  tx = optax.sgd(0.1)
  objective = losses.make_objective(hard_weight=1.0, soft_weight=1.0, temperature=2.0)
  with pytest.raises(ValueError, match='teachers=None'):
    make_distill_step(student=student, teachers=teacher, tx=tx, objective=objective, cached=True)
  with pytest.raises(ValueError, match='No teachers'):
    make_distill_step(student=student, teachers=None, tx=tx, objective=objective)
  # Teacher with 5 classes, student with 10: refused with a message naming the class counts.
  small = models.build('mlp', num_classes=5, hidden=(8,))
  small_vars = init_variables(small, key=jax.random.key(0), input_shape=SHAPE)
  step = make_distill_step(student=student, teachers=small, tx=tx, objective=objective)
  state = create_train_state(student, tx, seed=0, input_shape=SHAPE)
  with pytest.raises(ValueError, match='class'):
    step(state, make_batches(1)[0], small_vars)
  # Two teachers, one variable tree.
  step = make_distill_step(student=student, teachers=[teacher, teacher], tx=tx,
                           objective=objective)
  with pytest.raises(ValueError, match='one tree per teacher'):
    step(state, make_batches(1)[0], (teacher_vars,))


FITNET = {'ce': {'weight': 1.0},
          'fitnet': {'weight': 100.0, 'student_tap': 'pool2', 'teacher_tap': 'pool2'}}


def _setup(spec, lenet_pair, teacher_vars, parallel=Parallel('jit', num_devices=1)):
  """`(objective, tx, step, state)` of the LeNet pair distilled through the terms `spec`."""
  teacher, student = lenet_pair
  objective = build_objective(spec, num_teachers=1)
  tx = optax.sgd(0.05, momentum=0.9)
  step = make_distill_step(student=student, teachers=teacher, tx=tx, objective=objective,
                           parallel=parallel)
  state = create_distill_state(student, tx, objective, teachers=[teacher],
                               teacher_variables=[teacher_vars], seed=0, input_shape=SHAPE)
  return objective, tx, step, state


def test_fitnet_regressor_trains_beside_the_student(teacher_vars, lenet_pair, make_batches):
  teacher, student = lenet_pair
  _, _, step, state = _setup(FITNET, lenet_pair, teacher_vars)
  assert isinstance(state, DistillState)
  kernel = np.asarray(state.loss_params['fitnet']['kernel'])  # a copy: the step donates
  assert kernel.shape == (1, 1, 8, 16)  # LeNet-5-Half pool2 (8 ch.) -> LeNet-5 pool2 (16)
  batch = make_batches(1)[0]
  # The hint of step 0 from an independent computation: the tapped features, in NumPy.
  (_, s_feats), _ = features(student, state.variables, batch['image'], ['pool2'], train=True,
                             mutable=['batch_stats'])
  _, t_feats = features(teacher, teacher_vars, batch['image'], ['pool2'])
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
      init_variables(student, key=jax.random.key(0), input_shape=SHAPE)['params'])


def test_objective_without_owned_variables_keeps_the_plain_state(teacher_vars, lenet_pair):
  _, _, _, state = _setup({'ce': {'weight': 1.0}, 'at': {'weight': 1000.0,
                                                          'student_taps': ['pool1', 'pool2'],
                                                          'teacher_taps': ['pool1', 'pool2']}},
                          lenet_pair, teacher_vars)
  assert type(state) is TrainState


def test_unknown_tap_lists_the_valid_paths(teacher_vars, lenet_pair):
  with pytest.raises(ValueError, match=r"No module at path\(s\) \['stage2'\].*pool2"):
    _setup({'fitnet': {'weight': 1.0, 'student_tap': 'stage2', 'teacher_tap': 'pool2'}},
           lenet_pair, teacher_vars)


@pytest.mark.parametrize('parallel', [Parallel('jit'), Parallel('pmap'), Parallel('shard_map')],
                         ids=lambda p: p.mode)
def test_batch_level_and_feature_terms_same_on_8_devices(teacher_vars, parallel, lenet_pair,
                                                         make_batches, distill_steps):
  spec = {'ce': {'weight': 1.0}, 'dist': {'weight': 2.0},
          'at': {'weight': 100.0, 'student_taps': ['pool1'], 'teacher_taps': ['pool1']}}
  batches = make_batches(3, n=32)
  _, _, step, state = _setup(spec, lenet_pair, teacher_vars)
  one_device = Parallel('jit', num_devices=1)
  ref_state, ref = distill_steps(step, state, teacher_vars, one_device, batches)
  _, _, step, state = _setup(spec, lenet_pair, teacher_vars, parallel)
  got_state, got = distill_steps(step, state, teacher_vars, parallel, batches)
  for key in ('loss', 'dist_loss', 'at_loss'):
    np.testing.assert_allclose([m[key] for m in got], [m[key] for m in ref], rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(got_state.params), jax.device_get(ref_state.params))


def test_loss_parameters_checkpoint_and_a_changed_term_set_is_refused(teacher_vars, tmp_path,
                                                                      lenet_pair, make_batches):
  spec = {'ce': {'weight': 0.1}, 'ctkd': {'weight': 0.9, 'curriculum_steps': 4}}
  objective, _, step, state = _setup(spec, lenet_pair, teacher_vars)
  for batch in make_batches(2):
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
  batch = make_batches(1, seed=5)[0]
  a, _ = step(state, batch, teacher_vars)
  b, _ = step(restored, batch, teacher_vars)
  assert tree_sha256(a) == tree_sha256(b)
  other = build_objective({**spec, 'ctkd': {'weight': 0.9, 'curriculum_steps': 8}})
  before = sorted(p.name for p in (tmp_path / 'ckpt').rglob('*'))
  with pytest.raises(IncompatibleCheckpointError, match='objective'):
    Checkpointer(tmp_path / 'ckpt', metadata={'objective': other.describe()})
  assert sorted(p.name for p in (tmp_path / 'ckpt').rglob('*')) == before


def test_cached_teacher_refuses_feature_terms_and_topk_refuses_other_losses(lenet_pair,
                                                                            make_batches):
  _, student = lenet_pair
  tx = optax.sgd(0.1)
  at = build_objective({'at': {'weight': 1.0, 'student_taps': ['pool1'],
                               'teacher_taps': ['pool1']}})
  with pytest.raises(ValueError, match='live teacher'):
    make_distill_step(student=student, teachers=None, tx=tx, objective=at, cached=True)
  dkd = build_objective({'dkd': {'weight': 1.0}})
  step = make_distill_step(student=student, teachers=None, tx=tx, objective=dkd, cached=True)
  state = create_distill_state(student, tx, dkd, teachers=None, teacher_variables=None, seed=0,
                               input_shape=SHAPE)
  batch = {**make_batches(1, n=4)[0], 'teacher_topk_logits': np.ones((4, 2), np.float32),
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
