"""Tests of jaxkd.losses.objective."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from classic_refs import _logits, np_cross_entropy, np_kd, np_kd_probs, np_softmax
from jaxkd import losses
from jaxkd.losses import (check_num_classes, cross_entropy, kd_loss, kd_loss_from_probs,
                          make_objective, MULTI_TEACHER)
from objectives import on_logits


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
    jax.jit(on_logits(objective))(student, labels, [_logits(38, (4, 10)), _logits(39, (4, 5))],
                                  step=0)
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
