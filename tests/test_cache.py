"""Teacher-output cache: same loss as a live teacher, refusals, top-k bucket maths."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxkd import cache, losses, models
from jaxkd.augment import Augment
from jaxkd.data import InMemoryDataset
from jaxkd.distill import inference_apply, make_distill_step
from jaxkd.optim import SettingWarning
from jaxkd.state import create_train_state, init_variables, tree_sha256

SHAPE = (1, 28, 28, 1)
TRANSFORM = {'mean': [0.5], 'std': [0.25]}


@pytest.fixture(scope='module')
def setup():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, 64).astype(np.int32)
  teacher = models.build('lenet5_half', num_classes=10)
  teacher_vars = init_variables(teacher, key=jax.random.key(3), input_shape=SHAPE)
  normalized = ((images / 255.0 - 0.5) / 0.25).astype(np.float32)
  return images, labels, normalized, teacher, teacher_vars


def _compute(setup, **kwargs):
  images, labels, normalized, teacher, teacher_vars = setup
  return cache.compute(inference_apply(teacher), teacher_vars, normalized, dataset='fake',
                       split='train', transform=TRANSFORM,
                       teacher_fingerprint=tree_sha256(teacher_vars), batch_size=24, **kwargs)


def test_cached_and_live_teacher_give_the_same_steps(setup):
  images, labels, normalized, teacher, teacher_vars = setup
  teacher_cache = _compute(setup)
  np.testing.assert_allclose(
      teacher_cache.logits, teacher.apply(teacher_vars, normalized, train=False), rtol=1e-5,
      atol=1e-5)
  student = models.build('mlp', num_classes=10, hidden=(16,))
  tx = optax.sgd(0.1)
  objective = losses.make_objective(hard_weight=0.5, soft_weight=0.5, temperature=4.0)
  data = InMemoryDataset(images, labels, batch_size=16, mean=0.5, std=0.25, seed=1,
                         columns=teacher_cache.rows(), num_classes=10)
  runs = {}
  for name, cached in (('live', False), ('cached', True)):
    step = make_distill_step(student=student, teachers=None if cached else teacher, tx=tx,
                             objective=objective, cached=cached)
    state = create_train_state(student, tx, seed=0, input_shape=SHAPE)
    history = []
    for batch in data.epoch(0):
      state, metrics = step(state, batch, () if cached else teacher_vars)
      history.append(jax.device_get(metrics))
    runs[name] = (history, jax.device_get(state.params))
  for live, cached in zip(runs['live'][0], runs['cached'][0]):
    for key in ('loss', 'kd_loss', 'ce_loss', 'teacher_accuracy', 'agreement'):
      np.testing.assert_allclose(cached[key], live[key], rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               runs['cached'][1], runs['live'][1])


def test_float16_cache_and_round_trip(setup, tmp_path):
  full = _compute(setup)
  half = _compute(setup, dtype='float16')
  assert half.logits.dtype == np.float16
  np.testing.assert_allclose(half.logits, full.logits, rtol=2e-3, atol=2e-3)
  half.save(str(tmp_path / 'c'))
  half.save(str(tmp_path / 'c'))  # overwriting an existing cache replaces it whole
  loaded = cache.TeacherCache.load(str(tmp_path / 'c'))
  np.testing.assert_array_equal(loaded.logits, half.logits)
  assert loaded.provenance == half.provenance


def test_cache_refuses_other_uses(setup):
  _, _, _, _, teacher_vars = setup
  teacher_cache = _compute(setup)
  ok = dict(dataset='fake', split='train', transform=TRANSFORM,
            teacher_fingerprint=tree_sha256(teacher_vars), num_examples=64)
  teacher_cache.check(**ok)
  bad = {
      'dataset': dict(ok, dataset='cifar10'),
      'split': dict(ok, split='test'),
      'transform': dict(ok, transform={'mean': [0.0], 'std': [1.0]}),
      'teacher': dict(ok, teacher_fingerprint='0' * 64),
      'augmentation': dict(ok, augment=Augment(crop_padding=2)),
      'rows': dict(ok, num_examples=65),
  }
  for what, kwargs in bad.items():
    with pytest.raises(cache.CacheMismatchError, match='cannot be used') as error:
      teacher_cache.check(**kwargs)
    assert 'Recompute' in str(error.value), what
  with pytest.raises(ValueError, match='temperature'):
    _compute(setup, topk=3)
  with pytest.raises(ValueError, match='dtype'):
    _compute(setup, dtype='int8')
  topk_cache = _compute(setup, topk=3, temperature=4.0)
  with pytest.raises(cache.CacheMismatchError, match='temperature'):
    topk_cache.check(**ok, temperature=2.0)


def _np_bucket_kl(student, teacher, idx, t):
  """Independent float64 reference: T^2 KL over the k+1 buckets (top-k classes, the rest)."""
  def softmax(z):
    e = np.exp((z - z.max(-1, keepdims=True)) / t)
    return e / e.sum(-1, keepdims=True)
  p, q = softmax(teacher), softmax(student)
  rows = np.arange(len(idx))[:, None]
  p_top, q_top = p[rows, idx], q[rows, idx]
  p_b = np.concatenate([p_top, 1 - p_top.sum(-1, keepdims=True)], -1)
  q_b = np.concatenate([q_top, 1 - q_top.sum(-1, keepdims=True)], -1)
  return t * t * (p_b * np.log(p_b / q_b)).sum(-1)


def test_topk_bucket_kd_value_and_gradient():
  rng = np.random.default_rng(1)
  student = rng.normal(size=(5, 10)) * 3
  teacher = rng.normal(size=(5, 10)) * 3
  t, k = 2.0, 3
  teacher_cache = cache.compute(lambda v, x: x, None, teacher.astype(np.float32), dataset='d',
                                split='s', transform={}, teacher_fingerprint='f', topk=k,
                                temperature=t)
  idx = teacher_cache.indices
  np.testing.assert_array_equal(idx, np.argsort(-teacher, -1)[:, :k])

  def loss(s):
    full = cache.topk_logits(s, teacher_cache.logits, idx, teacher_cache.rest_log_mass,
                             temperature=t)
    return losses.kd_loss(s, full, temperature=t)

  s32 = jnp.asarray(student, jnp.float32)
  np.testing.assert_allclose(loss(s32), _np_bucket_kl(student, teacher, idx, t), rtol=1e-4)
  grad = np.asarray(jax.grad(lambda s: loss(s).sum())(s32))
  eps, numeric = 1e-5, np.zeros_like(student)
  for i in np.ndindex(student.shape):
    up, down = student.copy(), student.copy()
    up[i] += eps
    down[i] -= eps
    numeric[i] = (_np_bucket_kl(up, teacher, idx, t).sum() -
                  _np_bucket_kl(down, teacher, idx, t).sum()) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-4)


def test_distill_from_topk_cache_runs(setup):
  images, labels, _, _, _ = setup
  teacher_cache = _compute(setup, topk=4, temperature=4.0)
  student = models.build('mlp', num_classes=10, hidden=(16,))
  tx = optax.adam(1e-2)
  objective = losses.make_objective(hard_weight=0.0, soft_weight=1.0, temperature=4.0)
  step = make_distill_step(student=student, teachers=None, tx=tx, objective=objective,
                           cached=True)
  data = InMemoryDataset(images, labels, batch_size=32, mean=0.5, std=0.25,
                         columns=teacher_cache.rows(), num_classes=10)
  state = create_train_state(student, tx, seed=0, input_shape=SHAPE)
  batch = data.batch(0, 0)
  state, first = step(state, batch, ())
  for _ in range(10):
    state, metrics = step(state, batch, ())
  assert float(metrics['kd_loss']) < float(first['kd_loss'])
  np.testing.assert_allclose(float(first['teacher_accuracy']), np.mean(
      np.asarray(batch['teacher_topk_indices'])[:, 0] == np.asarray(batch['label'])))


def test_topk_cache_that_keeps_little_of_the_mass_warns():
  apply = lambda variables, x: x  # noqa: E731 - the inputs are the logits
  flat = np.zeros((6, 10), np.float32)
  peaked = np.tile(np.array([20.0] + [0.0] * 9, np.float32), (6, 1))
  kwargs = dict(dataset='d', split='s', transform={}, teacher_fingerprint='f', topk=2,
                temperature=4.0)
  with pytest.warns(SettingWarning, match=r'top-2 cache keeps 20% of the teacher'):
    cache.compute(apply, 1.0, flat, **kwargs)
  with warnings.catch_warnings():
    warnings.simplefilter('error', SettingWarning)
    cache.compute(apply, 1.0, peaked, **kwargs)  # T = 4 keeps 99% of a confident teacher
