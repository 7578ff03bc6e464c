"""Properties shared by several logit losses (one test over many methods)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxkd.losses import (dist_inter_loss, dist_intra_loss, dist_loss, dkd_loss, dkd_parts,
                          gradient_reversal, jsd_loss, kd_loss, nkd_loss, reverse_kl_loss,
                          standardize_logits, ttm_loss, wttm_loss)
from logit_refs import (_extreme, _random, CASES, HAND_STUDENT, HAND_TEACHER, LOSS_IDS, LOSSES,
                        ref_dist_inter, ref_dkd_parts, ref_jsd, ref_reverse_kl, ref_ttm, softmax64)


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('name, fn, ref', LOSSES, ids=LOSS_IDS)
def test_matches_reference(name, fn, ref, case):
  student, teacher, labels = CASES[case]
  got = jax.jit(fn)(student, teacher, labels)
  want = ref(student, teacher, labels)
  assert got.dtype == jnp.float32 and got.shape == np.shape(want)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_losses_accept_leading_axes():
  student, teacher = _random(4, (2, 3, 5)), _random(5, (2, 3, 5))
  labels = np.array([[0, 1, 2], [3, 4, 0]])
  for got, want in [
      (reverse_kl_loss(student, teacher, temperature=2.0), ref_reverse_kl(student, teacher, 2.0)),
      (jsd_loss(student, teacher, temperature=1.0, mixing_weight=0.5),
       ref_jsd(student, teacher, 1.0, 0.5)),
      (dkd_parts(student, teacher, labels, temperature=2.0)[1],
       ref_dkd_parts(student.reshape(6, 5), teacher.reshape(6, 5), labels.ravel(),
                     2.0)[1].reshape(2, 3)),
      (ttm_loss(student, teacher, temperature=2.0), ref_ttm(student, teacher, 2.0)),
      (dist_inter_loss(student, teacher, temperature=1.0), ref_dist_inter(student, teacher, 1.0)),
  ]:
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_traced_hyperparameters():
  student, teacher, labels = CASES['random']
  fn = jax.jit(lambda s, t, temp, w: (jsd_loss(s, t, temperature=temp, mixing_weight=w),
                                      dkd_loss(s, t, labels, temperature=temp, target_weight=w,
                                               non_target_weight=2 * w)))
  jsd, dkd = fn(student, teacher, 3.0, 0.25)
  np.testing.assert_allclose(jsd, ref_jsd(student, teacher, 3.0, 0.25), rtol=1e-5)
  np.testing.assert_allclose(dkd, np.dot([0.25, 0.5], ref_dkd_parts(student, teacher, labels, 3.0)),
                             rtol=1e-5)


@pytest.mark.parametrize('temperature', [1.0, 4.0])
def test_jsd_limits_are_forward_and_reverse_kl(temperature):
  student, teacher, _ = CASES['random']
  small = 1e-4
  jsd = functools.partial(jsd_loss, temperature=temperature)
  # The limits hold up to an O(w) (or O(1 - w)) term: about 2e-3 relative here.
  np.testing.assert_allclose(
      jsd(student, teacher, mixing_weight=small) / small,
      kd_loss(student, teacher, temperature=temperature, scale_by_temperature_squared=False),
      rtol=1e-2)
  np.testing.assert_allclose(
      jsd(student, teacher, mixing_weight=1 - small) / small,
      reverse_kl_loss(student, teacher, temperature=temperature) / temperature**2, rtol=1e-2)


@pytest.mark.parametrize('temperature', [0.5, 1.0, 4.0])
@pytest.mark.parametrize('case', CASES)
def test_kd_is_tckd_plus_weighted_nckd(case, temperature):
  student, teacher, labels = CASES[case]
  tckd, nckd = dkd_parts(student, teacher, labels, temperature=temperature)
  teacher_target = softmax64(teacher, temperature)[np.arange(4), labels]
  kd = kd_loss(student, teacher, temperature=temperature)
  np.testing.assert_allclose(tckd + (1 - teacher_target) * nckd, kd, rtol=1e-5, atol=1e-6)
  # The same identity through dkd_loss, with a per-example NCKD weight.
  np.testing.assert_allclose(
      dkd_loss(student, teacher, labels, temperature=temperature, target_weight=1.0,
               non_target_weight=(1 - teacher_target).astype(np.float32)), kd, rtol=1e-5,
      atol=1e-6)


def test_ttm_at_temperature_one_is_kd_and_wttm_weight_is_one():
  student, teacher, _ = CASES['random']
  np.testing.assert_allclose(ttm_loss(student, teacher, temperature=1.0),
                             kd_loss(student, teacher, temperature=1.0), rtol=1e-5)
  np.testing.assert_allclose(wttm_loss(student, teacher, temperature=1.0),
                             ttm_loss(student, teacher, temperature=1.0), rtol=1e-5)
  # For T > 1 the weight sum_c p_c^(1/T) is at least 1, so WTTM >= TTM.
  assert np.all(np.asarray(wttm_loss(student, teacher, temperature=4.0)) >=
                np.asarray(ttm_loss(student, teacher, temperature=4.0)))


@pytest.mark.parametrize('temperature', [0.5, 1.0, 4.0])
def test_zero_where_student_matches_teacher(temperature):
  logits = _random(6, scale=5.0)
  logits[2, 1] = -50.0
  for got in [
      reverse_kl_loss(logits, logits, temperature=temperature),
      jsd_loss(logits, logits, temperature=temperature, mixing_weight=0.5),
      dkd_loss(logits, logits, np.array([0, 1, 2, 3]), temperature=temperature,
               target_weight=1.0, non_target_weight=8.0),
      dist_inter_loss(logits, logits, temperature=temperature),
      dist_intra_loss(logits, logits, temperature=temperature),
      # TTM is 0 when the student's plain softmax is the teacher's at temperature T.
      ttm_loss(logits / temperature, logits, temperature=temperature),
      wttm_loss(logits / temperature, logits, temperature=temperature),
  ]:
    np.testing.assert_allclose(got, 0.0, atol=1e-5 * max(1.0, temperature**2))


def test_gradient_reversal_values_and_gradients():
  x = _random(8, (3, 4))
  upstream = _random(9, (3, 4))

  def objective(x, scale):
    return jnp.sum(upstream * gradient_reversal(x, scale))

  np.testing.assert_array_equal(jax.jit(gradient_reversal)(x, 0.7), x)
  for scale in [0.0, 0.3, 1.0]:
    grad_x, grad_scale = jax.jit(jax.grad(objective, argnums=(0, 1)))(x, jnp.float32(scale))
    np.testing.assert_allclose(grad_x, -scale * upstream, rtol=1e-6)
    assert grad_scale == 0.0
  # Gradient descent on the loss is ascent for a quantity behind the reversal.
  temperature = jnp.float32(2.0)
  loss = lambda t: kd_loss(HAND_STUDENT, HAND_TEACHER, temperature=t).mean()
  reversed_loss = lambda t: kd_loss(HAND_STUDENT, HAND_TEACHER,
                                    temperature=gradient_reversal(t, 1.0)).mean()
  np.testing.assert_allclose(jax.grad(reversed_loss)(temperature), -jax.grad(loss)(temperature),
                             rtol=1e-6)
  # The dtype of x is kept, in the value and the gradient.
  x16 = jnp.asarray(x, jnp.bfloat16)
  assert gradient_reversal(x16, 0.5).dtype == jnp.bfloat16
  assert jax.grad(lambda v: gradient_reversal(v, 0.5).astype(jnp.float32).sum())(
      x16).dtype == jnp.bfloat16


@pytest.mark.parametrize('name, fn, ref', LOSSES, ids=LOSS_IDS)
def test_extreme_logits_finite_values_and_gradients(name, fn, ref):
  student, teacher, labels = _extreme()
  value = jax.jit(fn)(student, teacher, labels)
  assert np.all(np.isfinite(value))
  grads = jax.jit(jax.grad(lambda s, t: jnp.mean(fn(s, t, labels)), argnums=(0, 1)))(
      student, teacher)
  for g in grads:
    assert np.all(np.isfinite(g))


def test_teacher_zero_probability_classes_give_finite_jsd_and_dkd():
  student, teacher, labels = CASES['random']
  teacher = teacher.copy()
  teacher[:, 2] = -np.inf
  student = student.copy()
  student[0, 2] = -np.inf  # zero in both distributions
  for fn, want in [
      (lambda s, t: jsd_loss(s, t, temperature=2.0, mixing_weight=0.5),
       ref_jsd(student, teacher, 2.0, 0.5)),
      (lambda s, t: dkd_loss(s, t, labels, temperature=2.0, target_weight=1.0,
                             non_target_weight=1.0),
       np.sum(ref_dkd_parts(student, teacher, labels, 2.0), axis=0)),
  ]:
    np.testing.assert_allclose(fn(student, teacher), want, rtol=1e-5, atol=1e-7)
    for g in jax.grad(lambda s, t: fn(s, t).sum(), argnums=(0, 1))(student, teacher):
      assert np.all(np.isfinite(g))


def test_out_of_range_labels_are_nan():
  student, teacher, _ = CASES['random']
  labels = np.array([0, 5, -1, 2])
  for got in [dkd_loss(student, teacher, labels, temperature=2.0, target_weight=1.0,
                       non_target_weight=1.0),
              nkd_loss(student, teacher, labels, temperature=2.0, non_target_weight=1.0)]:
    got = np.asarray(got)
    assert np.isnan(got[1]) and np.isnan(got[2]) and np.all(np.isfinite(got[[0, 3]]))


@pytest.mark.parametrize('name, fn, ref', LOSSES, ids=LOSS_IDS)
def test_bfloat16_inputs_give_float32_outputs(name, fn, ref):
  student, teacher, labels = CASES['random']
  s16, t16 = jnp.asarray(student, jnp.bfloat16), jnp.asarray(teacher, jnp.bfloat16)
  got = fn(s16, t16, labels)
  assert got.dtype == jnp.float32
  # The upcast comes first: the same as float32 on the rounded values.
  np.testing.assert_allclose(got, fn(s16.astype(jnp.float32), t16.astype(jnp.float32), labels),
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got, ref(student, teacher, labels), rtol=5e-2, atol=5e-2)


def test_float64_outputs_and_check_grads():
  with jax.enable_x64(True):
    rng = np.random.default_rng(10)
    student = jnp.asarray(rng.standard_normal((3, 5)))
    teacher = jnp.asarray(rng.standard_normal((3, 5)))
    labels = jnp.asarray([0, 4, 2])
    functions = [
        lambda s, t: reverse_kl_loss(s, t, temperature=2.0),
        lambda s, t: jsd_loss(s, t, temperature=2.0, mixing_weight=0.3),
        lambda s, t: dkd_loss(s, t, labels, temperature=2.0, target_weight=1.0,
                              non_target_weight=2.0),
        lambda s, t: nkd_loss(s, t, labels, temperature=2.0, non_target_weight=1.5),
        lambda s, t: dist_inter_loss(s, t, temperature=2.0),
        lambda s, t: dist_intra_loss(s, t, temperature=2.0),
        lambda s, t: wttm_loss(s, t, temperature=2.0),
        lambda s, t: standardize_logits(s) * t,
    ]
    for fn in functions:
      assert jax.eval_shape(fn, student, teacher).dtype == jnp.float64
    # One function of all the outputs: one compilation instead of eight.
    everything = jax.jit(lambda s, t: jnp.concatenate([jnp.ravel(fn(s, t)) for fn in functions]))
    check_grads(everything, (student, teacher), order=1, modes=('rev',), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('fn', [
    lambda s, t, temp: reverse_kl_loss(s, t, temperature=temp),
    lambda s, t, temp: jsd_loss(s, t, temperature=temp, mixing_weight=0.5),
    lambda s, t, temp: dkd_parts(s, t, np.zeros(2, int), temperature=temp),
    lambda s, t, temp: nkd_loss(s, t, np.zeros(2, int), temperature=temp, non_target_weight=1.0),
    lambda s, t, temp: dist_inter_loss(s, t, temperature=temp),
    lambda s, t, temp: dist_loss(s, t, temperature=temp, inter_weight=1.0, intra_weight=1.0),
    lambda s, t, temp: ttm_loss(s, t, temperature=temp),
    lambda s, t, temp: wttm_loss(s, t, temperature=temp),
])
def test_rejects_bad_temperature_and_shapes(fn):
  x = _random(11, (2, 4))
  for temperature in [0.0, -1.0]:
    with pytest.raises(ValueError, match='temperature'):
      fn(x, x, temperature)
  with pytest.raises(ValueError, match='teacher_logits'):
    fn(x, _random(12, (2, 5)), 1.0)


def test_rejects_bad_hyperparameters_and_labels():
  x = _random(13, (2, 4))
  labels = np.array([0, 1])
  for weight in [0.0, 1.0, -0.5]:
    with pytest.raises(ValueError, match='mixing_weight'):
      jsd_loss(x, x, temperature=1.0, mixing_weight=weight)
  with pytest.raises(ValueError, match='non_target_weight'):
    dkd_loss(x, x, labels, temperature=1.0, target_weight=1.0, non_target_weight=-1.0)
  with pytest.raises(ValueError, match='target_weight'):
    dkd_loss(x, x, labels, temperature=1.0, target_weight=-1.0, non_target_weight=1.0)
  with pytest.raises(ValueError, match='non_target_weight'):
    nkd_loss(x, x, labels, temperature=1.0, non_target_weight=-1.0)
  with pytest.raises(ValueError, match='labels shape'):
    dkd_parts(x, x, np.array([0, 1, 2]), temperature=1.0)
  with pytest.raises(TypeError, match='labels'):
    nkd_loss(x, x, np.array([0.0, 1.0]), temperature=1.0, non_target_weight=1.0)
  with pytest.raises(ValueError, match='>= 2'):
    dkd_parts(x[:, :1], x[:, :1], labels * 0, temperature=1.0)
  with pytest.raises(ValueError, match='inter_weight'):
    dist_loss(x, x, temperature=1.0, inter_weight=-1.0, intra_weight=1.0)
  with pytest.raises(ValueError, match='intra_weight'):
    dist_loss(x, x, temperature=1.0, inter_weight=1.0, intra_weight=-1.0)
  with pytest.raises(ValueError, match='student_logits'):
    dist_intra_loss(_random(14, (2, 3, 4)), _random(15, (2, 3, 4)), temperature=1.0)
  with pytest.raises(ValueError, match='student_logits'):
    dist_intra_loss(x[:1], x[:1], temperature=1.0)
  with pytest.raises(ValueError, match='logits'):
    standardize_logits(x[:, :1])
  with pytest.raises(ValueError, match='eps'):
    standardize_logits(x, eps=-1.0)
  with pytest.raises(ValueError, match='scale'):
    gradient_reversal(x, np.ones(2))
