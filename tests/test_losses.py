"""Losses against independent NumPy float64 references, gradients, and objective validation."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from jaxkd import losses
from objectives import on_logits
from jaxkd.losses import (MULTI_TEACHER, check_num_classes,
                          cross_entropy, kd_loss, kd_loss_from_probs, make_objective)

# ---------------------------------------------------------------- NumPy float64 references


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  shifted = x - np.max(x, axis=-1, keepdims=True)
  return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def np_softmax(x):
  return np.exp(np_log_softmax(x))


def np_kl(p, log_q):
  """sum_c p_c (log p_c - log q_c), with 0 log 0 = 0."""
  p = np.asarray(p, np.float64)
  with np.errstate(divide='ignore', invalid='ignore'):
    terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - log_q), 0.0)
  return terms.sum(-1)


def np_kd(student, teacher, temperature, squared=True):
  p_t = np_softmax(np.asarray(teacher, np.float64) / temperature)
  log_p_s = np_log_softmax(np.asarray(student, np.float64) / temperature)
  return (temperature**2 if squared else 1.0) * np_kl(p_t, log_p_s)


def np_kd_probs(student, probs, temperature):
  return temperature**2 * np_kl(probs, np_log_softmax(np.asarray(student, np.float64) /
                                                      temperature))


def np_cross_entropy(logits, labels, eps=0.0):
  logits = np.asarray(logits, np.float64)
  num_classes = logits.shape[-1]
  targets = (1 - eps) * np.eye(num_classes)[labels] + eps / num_classes
  return -(targets * np_log_softmax(logits)).sum(-1)


def _logits(seed, shape, scale=3.0):
  return scale * np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------------------- kd_loss


@pytest.mark.parametrize('temperature', [1.0, 4.0, 20.0])
@pytest.mark.parametrize('shape', [(8, 10), (10,), (3, 4, 10)], ids=['BC', 'C', 'ABC'])
def test_kd_loss_matches_numpy(temperature, shape):
  student, teacher = _logits(0, shape), _logits(1, shape)
  got = jax.jit(functools.partial(kd_loss, temperature=temperature))(student, teacher)
  assert got.shape == shape[:-1] and got.dtype == jnp.float32
  want = np_kd(student, teacher, temperature)
  assert np.all(want > 0)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


def test_kd_loss_traced_temperature():
  student, teacher = _logits(0, (4, 6)), _logits(1, (4, 6))
  got = jax.jit(lambda s, t, temp: kd_loss(s, t, temperature=temp))(student, teacher, 3.0)
  np.testing.assert_allclose(got, np_kd(student, teacher, 3.0), rtol=2e-4)


@pytest.mark.parametrize('temperature', [0.5, 1.0, 4.0, 20.0])
def test_kd_loss_of_identical_logits_is_zero(temperature):
  x = _logits(2, (5, 7), scale=10.0)
  np.testing.assert_allclose(kd_loss(x, x, temperature=temperature), 0.0, atol=1e-6)
  probs = jax.nn.softmax(x / temperature)
  np.testing.assert_allclose(kd_loss_from_probs(x, probs, temperature=temperature), 0.0,
                             atol=1e-4 * temperature**2)


def test_kd_loss_extreme_logits_finite_values_and_gradients():
  rng = np.random.default_rng(3)
  student = (1e4 * rng.choice([-1.0, 1.0], size=(4, 6))).astype(np.float32)
  teacher = (1e4 * rng.choice([-1.0, 1.0], size=(4, 6))).astype(np.float32)
  teacher[0] = student[0]
  fn = jax.jit(lambda s, t: kd_loss(s, t, temperature=0.1))
  value = fn(student, teacher)
  assert np.all(np.isfinite(value))
  np.testing.assert_allclose(value, np_kd(student, teacher, 0.1), rtol=1e-5, atol=1e-6)
  grads = jax.grad(lambda s, t: fn(s, t).sum(), argnums=(0, 1))(student, teacher)
  for g in grads:
    assert np.all(np.isfinite(g))


def test_kd_loss_teacher_with_zero_probability_classes():
  student = _logits(4, (3, 5))
  teacher = _logits(5, (3, 5))
  teacher[:, 1] = -np.inf
  teacher[2, 3] = -np.inf
  fn = lambda s, t: kd_loss(s, t, temperature=2.0)
  value = jax.jit(fn)(student, teacher)
  np.testing.assert_allclose(value, np_kd(student, teacher, 2.0), rtol=2e-4)
  grads = jax.grad(lambda s, t: fn(s, t).sum(), argnums=(0, 1))(student, teacher)
  for g in grads:
    assert np.all(np.isfinite(g))
  # The student's gradient still pulls its mass off the classes the teacher rules out.
  assert np.all(np.asarray(grads[0])[:, 1] > 0)


def test_kd_loss_from_probs_with_zeros_matches_numpy():
  student = _logits(6, (4, 5))
  probs = np.array([[0.0, 1.0, 0.0, 0.0, 0.0],
                    [0.5, 0.0, 0.5, 0.0, 0.0],
                    [0.1, 0.2, 0.3, 0.4, 0.0],
                    [0.2, 0.2, 0.2, 0.2, 0.2]], np.float32)
  fn = jax.jit(lambda s, p: kd_loss_from_probs(s, p, temperature=4.0))
  np.testing.assert_allclose(fn(student, probs), np_kd_probs(student, probs, 4.0), rtol=2e-4)
  grads = jax.grad(lambda s, p: fn(s, p).sum(), argnums=(0, 1))(student, probs)
  for g in grads:
    assert np.all(np.isfinite(g))


def test_kd_loss_from_probs_equals_kd_loss_on_softened_teacher():
  student, teacher = _logits(7, (6, 9)), _logits(8, (6, 9))
  probs = jax.nn.softmax(teacher / 4.0)
  np.testing.assert_allclose(kd_loss_from_probs(student, probs, temperature=4.0),
                             kd_loss(student, teacher, temperature=4.0), rtol=1e-4)


@pytest.mark.parametrize('temperature', [1.0, 4.0, 20.0])
def test_kd_gradient_is_temperature_times_probability_gap(temperature):
  student, teacher = _logits(9, (4, 8)), _logits(10, (4, 8))
  grad = jax.jit(jax.grad(lambda s: kd_loss(s, teacher, temperature=temperature).sum()))(
      student)
  want = temperature * (np_softmax(student / temperature) - np_softmax(teacher / temperature))
  np.testing.assert_allclose(grad, want, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize('temperature', [1.0, 4.0, 20.0])
def test_kd_without_temperature_squared_is_divided_by_t_squared(temperature):
  student, teacher = _logits(11, (4, 8)), _logits(12, (4, 8))
  scaled = kd_loss(student, teacher, temperature=temperature)
  plain = kd_loss(student, teacher, temperature=temperature, scale_by_temperature_squared=False)
  np.testing.assert_allclose(plain, scaled / temperature**2, rtol=1e-6)
  np.testing.assert_allclose(plain, np_kd(student, teacher, temperature, squared=False),
                             rtol=2e-4, atol=1e-8)


def test_check_grads_float64():
  with jax.enable_x64(True):
    rng = np.random.default_rng(13)
    student = jnp.asarray(rng.standard_normal((3, 5)))
    teacher = jnp.asarray(rng.standard_normal((3, 5)))
    probs = jax.nn.softmax(jnp.asarray(rng.standard_normal((3, 5))))
    labels = jnp.asarray([0, 4, 2])
    assert kd_loss(student, teacher, temperature=2.0).dtype == jnp.float64
    kw = dict(modes=('fwd', 'rev'), atol=1e-5, rtol=1e-5)
    # Second order on the main loss only; first order on the rest keeps this test fast.
    check_grads(lambda s, t: kd_loss(s, t, temperature=2.0), (student, teacher), order=2, **kw)
    check_grads(lambda s, t: kd_loss(s, t, temperature=0.5, scale_by_temperature_squared=False),
                (student, teacher), order=1, **kw)
    check_grads(lambda s, p: kd_loss_from_probs(s, p, temperature=3.0), (student, probs),
                order=1, **kw)
    check_grads(lambda x: cross_entropy(x, labels, label_smoothing=0.2), (student,), order=1,
                **kw)


def test_kd_rejects_bad_inputs():
  x = _logits(14, (2, 4))
  with pytest.raises(ValueError, match='temperature'):
    kd_loss(x, x, temperature=0.0)
  with pytest.raises(ValueError, match='temperature'):
    kd_loss_from_probs(x, jax.nn.softmax(x), temperature=-1.0)
  with pytest.raises(ValueError, match='teacher_logits'):
    kd_loss(x, _logits(15, (2, 5)), temperature=1.0)
  with pytest.raises(ValueError, match='teacher_probs'):
    kd_loss_from_probs(x, np.full((2, 5), 0.2, np.float32), temperature=1.0)


# ------------------------------------------------------------------------- cross_entropy


@pytest.mark.parametrize('label_smoothing', [0.0, 0.1, 0.4])
@pytest.mark.parametrize('shape', [(8, 10), (3, 4, 10)], ids=['BC', 'ABC'])
def test_cross_entropy_matches_numpy(label_smoothing, shape):
  logits = _logits(16, shape)
  labels = np.random.default_rng(17).integers(0, shape[-1], shape[:-1])
  got = jax.jit(functools.partial(cross_entropy, label_smoothing=label_smoothing))(
      logits, labels)
  assert got.shape == shape[:-1] and got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_cross_entropy(logits, labels, label_smoothing),
                             rtol=1e-5)


def test_cross_entropy_smoothing_matches_optax_convention():
  logits = _logits(18, (5, 6))
  labels = np.array([0, 1, 2, 3, 5])
  targets = optax.smooth_labels(jax.nn.one_hot(labels, 6), 0.3)
  np.testing.assert_allclose(cross_entropy(logits, labels, label_smoothing=0.3),
                             optax.losses.softmax_cross_entropy(logits, targets), rtol=1e-5)


def test_cross_entropy_out_of_range_labels_are_nan():
  logits = _logits(19, (4, 3))
  got = np.asarray(jax.jit(cross_entropy)(logits, np.array([0, 3, -1, 2])))
  assert np.isnan(got[1]) and np.isnan(got[2])
  np.testing.assert_allclose(got[[0, 3]], np_cross_entropy(logits[[0, 3]], [0, 2]), rtol=1e-5)
  # Masking with `where` keeps the batch finite.
  assert np.isfinite(jnp.sum(got, where=np.array([True, False, False, True])))


def test_cross_entropy_rejects_bad_inputs():
  logits = _logits(20, (2, 3))
  with pytest.raises(TypeError, match='labels'):
    cross_entropy(logits, np.array([0.0, 1.0]))
  with pytest.raises(ValueError, match='labels'):
    cross_entropy(logits, np.array([0, 1, 2]))
  with pytest.raises(ValueError, match='label_smoothing'):
    cross_entropy(logits, np.array([0, 1]), label_smoothing=1.5)


# ------------------------------------------------------------------------------ bfloat16


def test_bfloat16_inputs_give_float32_outputs():
  student, teacher = _logits(21, (6, 10)), _logits(22, (6, 10))
  labels = np.arange(6)
  s16, t16 = jnp.asarray(student, jnp.bfloat16), jnp.asarray(teacher, jnp.bfloat16)
  for got, want in [
      (kd_loss(s16, t16, temperature=4.0), kd_loss(student, teacher, temperature=4.0)),
      (kd_loss_from_probs(s16, jax.nn.softmax(t16 / 4.0), temperature=4.0),
       kd_loss(student, teacher, temperature=4.0)),
      (cross_entropy(s16, labels, label_smoothing=0.1),
       cross_entropy(student, labels, label_smoothing=0.1)),
  ]:
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=5e-2, atol=5e-3)
  # On the same (rounded) values the float32 computation is exact: the upcast comes first.
  np.testing.assert_array_equal(
      kd_loss(s16, t16, temperature=4.0),
      kd_loss(s16.astype(jnp.float32), t16.astype(jnp.float32), temperature=4.0))
  total, _ = on_logits(make_objective(hard_weight=0.5, soft_weight=0.5, temperature=2.0))(
      s16, labels, t16, step=0)
  assert total.dtype == jnp.float32


# ----------------------------------------------------------------------------- objective


def test_registries():
  assert losses.LOSSES['kd'] is losses.KD and losses.LOSSES['ce'] is losses.CrossEntropy
  assert MULTI_TEACHER == ('sum', 'ensemble')
  assert losses.make_objective is make_objective


def test_objective_total_is_weighted_sum_of_components():
  student, teacher = _logits(23, (8, 10)), _logits(24, (8, 10))
  labels = np.random.default_rng(25).integers(0, 10, 8)
  objective = make_objective(hard_weight=0.1, soft_weight=0.9, temperature=4.0,
                             label_smoothing=0.1)
  total, components = on_logits(objective)(student, labels, teacher, step=0)
  assert set(components) == {'ce', 'kd'}
  assert total.shape == (8,) and total.dtype == jnp.float32
  np.testing.assert_array_equal(
      total, np.float32(0.1) * components['ce'] + np.float32(0.9) * components['kd'])
  np.testing.assert_allclose(components['ce'], np_cross_entropy(student, labels, 0.1),
                             rtol=1e-5)
  np.testing.assert_allclose(components['kd'], np_kd(student, teacher, 4.0), rtol=2e-4)
  jitted, _ = jax.jit(on_logits(objective))(student, labels, teacher, step=0)
  np.testing.assert_allclose(jitted, total, rtol=1e-6)
  hp = objective.hyperparams(0)
  assert {k: float(v) for k, v in hp.items()} == pytest.approx(
      {'ce_weight': 0.1, 'kd_weight': 0.9, 'temperature': 4.0})


def test_objective_schedules_are_evaluated_at_step():
  student, teacher = _logits(26, (4, 6)), _logits(27, (4, 6))
  labels = np.array([0, 1, 2, 3])
  hard_weight = optax.linear_schedule(1.0, 0.0, 10)
  soft_weight = optax.linear_schedule(0.0, 2.0, 10)
  temperature = optax.piecewise_constant_schedule(8.0, {5: 0.25})  # 8 -> 2 at step 5
  objective = make_objective(hard_weight=hard_weight, soft_weight=soft_weight,
                             temperature=temperature)
  run = jax.jit(lambda s, y, t, step: (on_logits(objective)(s, y, t, step=step),
                                       objective.hyperparams(step)))
  for step, (want_hard_w, want_soft_w, want_t) in [(0, (1.0, 0.0, 8.0)), (3, (0.7, 0.6, 8.0)),
                                                   (7, (0.3, 1.4, 2.0))]:
    (total, components), hp = run(student, labels, teacher, jnp.asarray(step, jnp.int32))
    np.testing.assert_allclose([hp['ce_weight'], hp['kd_weight'], hp['temperature']],
                               [want_hard_w, want_soft_w, want_t], rtol=1e-6)
    np.testing.assert_allclose(components['kd'], np_kd(student, teacher, want_t), rtol=2e-4)
    want = want_hard_w * np_cross_entropy(student, labels) + want_soft_w * np_kd(
        student, teacher, want_t)
    np.testing.assert_allclose(total, want, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize('teacher_weights', [None, (1.0, 3.0)])
def test_objective_multi_teacher_sum_and_ensemble(teacher_weights):
  student = _logits(28, (5, 7))
  teachers = [_logits(29, (5, 7)), _logits(30, (5, 7))]
  labels = np.arange(5)
  w = np.array([0.5, 0.5] if teacher_weights is None else [0.25, 0.75])
  temp = 3.0

  summed = make_objective(hard_weight=0.2, soft_weight=0.8, temperature=temp,
                          teacher_weights=teacher_weights, multi_teacher='sum')
  total, components = jax.jit(on_logits(summed))(student, labels, teachers, step=0)
  per_teacher = [np_kd(student, t, temp) for t in teachers]
  np.testing.assert_allclose(components['kd'], w[0] * per_teacher[0] + w[1] * per_teacher[1],
                             rtol=2e-4)
  np.testing.assert_allclose(components['teacher0_kd'], per_teacher[0], rtol=2e-4)
  np.testing.assert_allclose(components['teacher1_kd'], per_teacher[1], rtol=2e-4)

  ensemble = make_objective(hard_weight=0.2, soft_weight=0.8, temperature=temp,
                            teacher_weights=teacher_weights, multi_teacher='ensemble')
  total, components = jax.jit(on_logits(ensemble))(student, labels, tuple(teachers), step=0)
  assert set(components) == {'ce', 'kd'}
  probs = w[0] * np_softmax(teachers[0] / temp) + w[1] * np_softmax(teachers[1] / temp)
  want_soft = np_kd_probs(student, probs, temp)
  np.testing.assert_allclose(components['kd'], want_soft, rtol=2e-4)
  np.testing.assert_allclose(total, 0.2 * np_cross_entropy(student, labels) + 0.8 * want_soft,
                             rtol=2e-4)
  # Averaging distributions first loses disagreement between teachers: by convexity of KL,
  # the ensemble loss is at most the weighted sum of per-teacher losses.
  assert np.all(want_soft <= w[0] * per_teacher[0] + w[1] * per_teacher[1] + 1e-9)


def test_objective_single_teacher_as_list_or_array():
  student, teacher = _logits(31, (3, 4)), _logits(32, (3, 4))
  labels = np.array([0, 1, 2])
  for mode in MULTI_TEACHER:
    objective = make_objective(hard_weight=0.5, soft_weight=0.5, temperature=2.0,
                               multi_teacher=mode)
    a, _ = on_logits(objective)(student, labels, teacher, step=0)
    b, components = on_logits(objective)(student, labels, [teacher], step=0)
    np.testing.assert_array_equal(a, b)
    assert set(components) == {'ce', 'kd'}


def test_hard_only_and_soft_only_objectives():
  student, teacher = _logits(33, (4, 5)), _logits(34, (4, 5))
  labels = np.array([4, 3, 2, 1])
  supervised = make_objective(hard_weight=1.0, soft_weight=0.0, label_smoothing=0.1)
  assert not supervised.needs_teacher and supervised.needs_labels
  assert set(supervised.hyperparams(0)) == {'ce_weight', 'kd_weight'}
  total, components = jax.jit(on_logits(supervised))(student, labels, None, step=0)
  np.testing.assert_allclose(total, np_cross_entropy(student, labels, 0.1), rtol=1e-5)
  np.testing.assert_array_equal(components['kd'], np.zeros(4))

  distill_only = make_objective(hard_weight=0.0, soft_weight=1.0, temperature=4.0)
  assert distill_only.needs_teacher and not distill_only.needs_labels
  total, components = jax.jit(on_logits(distill_only))(student, None, teacher, step=0)
  np.testing.assert_allclose(total, np_kd(student, teacher, 4.0), rtol=2e-4)
  np.testing.assert_array_equal(components['ce'], np.zeros(4))
  # Given labels anyway, the hard component is reported but not added.
  total2, components = on_logits(distill_only)(student, labels, teacher, step=0)
  np.testing.assert_array_equal(total2, components['kd'])
  np.testing.assert_allclose(components['ce'], np_cross_entropy(student, labels), rtol=1e-5)


def test_objective_gradient_reaches_student_only_through_weights():
  student, teacher = _logits(35, (3, 6)), _logits(36, (3, 6))
  labels = np.array([1, 2, 3])
  objective = make_objective(hard_weight=0.25, soft_weight=0.75, temperature=5.0)
  grad = jax.grad(lambda s: on_logits(objective)(s, labels, teacher, step=0)[0].sum())(student)
  want = 0.25 * (np_softmax(student) - np.eye(6)[labels]) + 0.75 * 5.0 * (
      np_softmax(student / 5.0) - np_softmax(teacher / 5.0))
  np.testing.assert_allclose(grad, want, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize('kwargs, words', [
    (dict(hard_weight=0.1, soft_weight=0.9, temperature=0.0), ['temperature']),
    (dict(hard_weight=0.1, soft_weight=0.9, temperature=-2.0), ['temperature']),
    (dict(hard_weight=0.1, soft_weight=0.9, temperature=float('nan')), ['temperature']),
    (dict(hard_weight=0.1, soft_weight=0.9, temperature=lambda step: 0.0 * step),
     ['temperature', 'step 0']),
    (dict(hard_weight=0.1, soft_weight=0.9), ['temperature']),
    (dict(hard_weight=-0.1, soft_weight=0.9, temperature=4.0), ['hard_weight']),
    (dict(hard_weight=0.1, soft_weight=-0.9, temperature=4.0), ['soft_weight']),
    (dict(hard_weight=0.1, soft_weight=lambda step: step - 1.0, temperature=4.0),
     ['soft_weight', 'step 0']),
    (dict(hard_weight='0.1', soft_weight=0.9, temperature=4.0), ['hard_weight']),
    (dict(hard_weight=0.0, soft_weight=0.0, temperature=4.0), ['hard_weight', 'soft_weight']),
    (dict(hard_weight=0.0, soft_weight=0.0), ['hard_weight', 'soft_weight']),
    (dict(hard_weight=0.1, soft_weight=0.9, temperature=4.0, multi_teacher='mean'),
     ['multi_teacher', 'sum', 'ensemble']),
    (dict(hard_weight=0.1, soft_weight=0.9, temperature=4.0, label_smoothing=1.5),
     ['label_smoothing']),
    (dict(hard_weight=0.1, soft_weight=0.9, temperature=4.0, teacher_weights=(1.0, -1.0)),
     ['teacher_weights']),
    (dict(hard_weight=0.1, soft_weight=0.9, temperature=4.0, teacher_weights=(0.0, 0.0)),
     ['teacher_weights']),
    (dict(hard_weight=0.1, soft_weight=0.9, temperature=4.0, teacher_weights=()),
     ['teacher_weights']),
    (dict(hard_weight=0.1, soft_weight=0.9, temperature=4.0, teacher_weights=(1.0, 2.0),
          num_teachers=3), ['teacher_weights', 'num_teachers']),
    (dict(hard_weight=0.1, soft_weight=0.9, temperature=4.0, num_teachers=0),
     ['num_teachers']),
])
def test_make_objective_rejects(kwargs, words):
  with pytest.raises(ValueError) as info:
    make_objective(**kwargs)
  for word in words:
    assert word in str(info.value)


def test_objective_rejects_mismatched_inputs_at_trace_time():
  student = _logits(37, (4, 10))
  labels = np.arange(4)
  objective = make_objective(hard_weight=0.1, soft_weight=0.9, temperature=4.0,
                             teacher_weights=(1.0, 1.0))
  with pytest.raises(ValueError, match=r'teacher_logits\[1\] has 5 classes.*student_logits has 10'):
    jax.jit(on_logits(objective))(student, labels, [_logits(38, (4, 10)), _logits(39, (4, 5))], step=0)
  with pytest.raises(ValueError, match='teacher_weights has 2 entries but 3'):
    jax.jit(on_logits(objective))(student, labels, [student] * 3, step=0)
  with pytest.raises(ValueError, match='teacher_logits'):
    on_logits(objective)(student, labels, None, step=0)
  with pytest.raises(ValueError, match='labels'):
    on_logits(objective)(student, None, [student, student], step=0)
  with pytest.raises(ValueError, match='labels shape'):
    on_logits(objective)(student, np.arange(3), [student, student], step=0)
  with pytest.raises(ValueError, match='outside the class axis'):
    on_logits(objective)(student, labels, [student, _logits(40, (3, 10))], step=0)
  counted = make_objective(hard_weight=1.0, soft_weight=1.0, temperature=1.0, num_teachers=2)
  with pytest.raises(ValueError, match='num_teachers'):
    on_logits(counted)(student, labels, student, step=0)


def test_check_num_classes():
  check_num_classes((8, 10), (8, 10))
  check_num_classes((8, 10), [(8, 10), (8, 10)])
  with pytest.raises(ValueError, match='teacher_logits has 100 classes.*student_logits has 10'):
    check_num_classes((8, 10), (8, 100))
  with pytest.raises(ValueError, match=r'teacher_logits\[1\]'):
    check_num_classes((8, 10), [(8, 10), (8, 9)])
