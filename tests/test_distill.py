"""The distillation step: teacher untouched, student-only gradients, multi-teacher, adapters."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxkd import losses, models
from jaxkd.augment import Augment
from jaxkd.distill import make_distill_step
from jaxkd.parallel import Parallel
from jaxkd.state import create_train_state, init_variables

SHAPE = (1, 28, 28, 1)


def _batch(n=16, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.normal(size=(n, 28, 28, 1)).astype(np.float32),
          'label': rng.integers(0, 10, n).astype(np.int32)}


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
def pair():
  teacher = models.build('lenet5', num_classes=10)
  student = models.build('mlp', num_classes=10, hidden=(32,))
  teacher_vars = init_variables(teacher, key=jax.random.key(1), input_shape=SHAPE)
  return teacher, student, teacher_vars


def test_teacher_untouched_and_student_learns(pair):
  teacher, student, teacher_vars = pair
  tx = optax.adam(3e-3)
  objective = losses.make_objective(hard_weight=0.5, soft_weight=0.5, temperature=4.0)
  step = make_distill_step(student=student, teachers=teacher, tx=tx, objective=objective,
                           augment=Augment(crop_padding=2))
  parallel = Parallel()
  state = parallel.replicate(create_train_state(student, tx, seed=0, input_shape=SHAPE))
  teacher_vars = parallel.place_teacher(teacher_vars)
  before = jax.tree.map(np.array, teacher_vars)
  batch = parallel.shard_batch(_batch())
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


def test_loss_matches_numpy_for_two_teachers(pair):
  teacher, student, teacher_vars = pair
  other = models.build('lenet5_half', num_classes=10)
  other_vars = init_variables(other, key=jax.random.key(7), input_shape=SHAPE)
  tx = optax.sgd(0.0)
  batch = _batch(seed=3)
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


def test_teacher_runs_in_inference_mode():
  # A dropout teacher: the step's teacher accuracy must equal its deterministic eval output.
  teacher = models.build('mlp_1200', num_classes=10)
  teacher_vars = init_variables(teacher, key=jax.random.key(2), input_shape=SHAPE)
  student = models.build('mlp', num_classes=10, hidden=(8,))
  tx = optax.sgd(0.0)
  objective = losses.make_objective(hard_weight=0.0, soft_weight=1.0, temperature=1.0)
  step = make_distill_step(student=student, teachers=teacher, tx=tx, objective=objective)
  state = create_train_state(student, tx, seed=0, input_shape=SHAPE)
  batch = _batch(n=64, seed=5)
  t = np.asarray(teacher.apply(teacher_vars, batch['image'], train=False))
  s = np.asarray(student.apply(state.variables, batch['image'], train=False))
  _, metrics = step(state, batch, teacher_vars)
  np.testing.assert_allclose(float(metrics['kd_loss']), _np_kd(s, t, 1.0).mean(), rtol=1e-4)


def test_nnx_models_through_adapters():
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
  batch = _batch()
  state, first = step(state, batch, teacher_state)
  for _ in range(20):
    state, metrics = step(state, batch, teacher_state)
  assert float(metrics['kd_loss']) < 0.5 * float(first['kd_loss'])


def test_rejects_bad_wiring(pair):
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
    step(state, _batch(), small_vars)
  # Two teachers, one variable tree.
  step = make_distill_step(student=student, teachers=[teacher, teacher], tx=tx,
                           objective=objective)
  with pytest.raises(ValueError, match='one tree per teacher'):
    step(state, _batch(), (teacher_vars,))
