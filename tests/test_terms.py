"""The term API: objectives by name, hyper-parameter logging, DKD's warm-up, CTKD's learnable
temperature behind a gradient reversal, and DIST as a batch-level term."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd import losses
from jaxkd.losses import LOSSES, Context, Outputs, build_objective
from objectives import on_logits


def _logits(seed, shape=(6, 5)):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * 2, jnp.float32)


def _np_softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _np_kd(s, t, temp):
  p_t, p_s = _np_softmax(np.asarray(t) / temp), _np_softmax(np.asarray(s) / temp)
  return temp**2 * np.sum(p_t * (np.log(p_t) - np.log(p_s)), -1)


STUDENT, TEACHER = _logits(0), _logits(1)
LABELS = jnp.array([0, 1, 2, 3, 4, 0])


def test_registry_errors_list_the_valid_names():
  with pytest.raises(ValueError, match=r"Unknown loss 'nope'; valid: 'ce', 'kd'"):
    build_objective({'nope': {'weight': 1.0}})
  with pytest.raises(ValueError, match=r"Unknown setting\(s\) \['alpha'\] for loss 'dkd'"):
    build_objective({'dkd': {'weight': 1.0, 'alpha': 1.0}})
  with pytest.raises(ValueError, match='has no weight'):
    build_objective({'kd': {'temperature': 4.0}})
  with pytest.raises(ValueError, match='mixing_weight must be in'):
    build_objective({'jsd': {'weight': 1.0, 'mixing_weight': 1.0}})


def test_objective_by_name_adds_weighted_terms():
  objective = build_objective({'ce': {'weight': 0.1}, 'dkd': {'weight': 1.0, 'temperature': 4.0},
                               'kd': {'weight': 0.5, 'temperature': 2.0}})
  total, components = on_logits(objective)(STUDENT, LABELS, TEACHER, step=0)
  np.testing.assert_allclose(components['kd'], _np_kd(STUDENT, TEACHER, 2.0), rtol=1e-4)
  dkd = losses.dkd_loss(STUDENT, TEACHER, LABELS, temperature=4.0, target_weight=1.0,
                        non_target_weight=8.0)
  np.testing.assert_allclose(components['dkd'], dkd, rtol=1e-6)
  want = 0.1 * components['ce'] + 1.0 * components['dkd'] + 0.5 * components['kd']
  np.testing.assert_allclose(total, want, rtol=1e-6)
  hp = {k: float(v) for k, v in objective.hyperparams(0).items()}
  # Two terms report a temperature: each under its term's name.
  assert hp == pytest.approx({'ce_weight': 0.1, 'dkd_weight': 1.0, 'kd_weight': 0.5,
                              'dkd_temperature': 4.0, 'kd_temperature': 2.0, 'warmup': 1.0})


def test_dkd_warmup_ramps_the_term_in():
  objective = build_objective({'dkd': {'weight': 1.0, 'warmup_steps': 10}})
  full = losses.dkd_loss(STUDENT, TEACHER, LABELS, temperature=4.0, target_weight=1.0,
                         non_target_weight=8.0)
  for step, factor in [(0, 0.1), (4, 0.5), (9, 1.0), (50, 1.0)]:
    total, _ = jax.jit(on_logits(objective))(STUDENT, LABELS, TEACHER, step=jnp.int32(step))
    np.testing.assert_allclose(total, factor * full, rtol=1e-5)


def test_standardize_option_of_logit_terms():
  objective = build_objective({'kd': {'weight': 1.0, 'temperature': 2.0, 'standardize': True}})
  _, components = on_logits(objective)(STUDENT, None, TEACHER, step=0)
  z = lambda x: (x - x.mean(-1, keepdims=True)) / (1e-7 + x.std(-1, ddof=1, keepdims=True))
  want = _np_kd(z(np.asarray(STUDENT, np.float64)), z(np.asarray(TEACHER, np.float64)), 2.0)
  np.testing.assert_allclose(components['kd'], want, rtol=1e-4)
  # Standardised logits make KD blind to a per-example shift and scale of the student.
  _, scaled = on_logits(objective)(3.0 * STUDENT + 1.0, None, TEACHER, step=0)
  np.testing.assert_allclose(scaled['kd'], components['kd'], rtol=1e-4)


def test_ctkd_temperature_learns_against_the_student():
  term = LOSSES['ctkd'](curriculum_steps=100)
  objective = losses.Objective.of(ctkd=(1.0, term))
  params, _ = objective.init(jax.random.key(0), Outputs(STUDENT), [Outputs(TEACHER)])
  theta = float(params['ctkd']['temperature_logit'])
  temperature = 1.0 + 20.0 / (1.0 + np.exp(-theta))  # the paper's start: 15.6

  def loss(params, step):
    total, _, _ = objective.apply(Context(Outputs(STUDENT), [Outputs(TEACHER)], step=step,
                                          params=params))
    return jnp.mean(total)

  np.testing.assert_allclose(loss(params, 0), np.mean(_np_kd(STUDENT, TEACHER, temperature)),
                             rtol=1e-4)
  # d loss / d theta without the reversal, by central differences in float64 NumPy.
  eps = 1e-4
  numeric = [np.mean(_np_kd(STUDENT, TEACHER, 1.0 + 20.0 / (1.0 + np.exp(-(theta + d)))))
             for d in (eps, -eps)]
  plain = (numeric[0] - numeric[1]) / (2 * eps)
  for step, reversal in [(0, 0.0), (50, 0.5), (100, 1.0), (400, 1.0)]:
    grad = jax.grad(loss)(params, step)['ctkd']['temperature_logit']
    np.testing.assert_allclose(grad, -reversal * plain, rtol=2e-3, atol=1e-7)
  hp = objective.hyperparams(50, params)
  assert float(hp['reversal']) == pytest.approx(0.5)
  assert float(hp['temperature']) == pytest.approx(temperature, rel=1e-5)


def test_dist_is_one_value_per_batch():
  objective = build_objective({'dist': {'weight': 2.0}})
  total, components = on_logits(objective)(STUDENT, None, TEACHER, step=0)
  want = losses.dist_loss(STUDENT, TEACHER, temperature=1.0, inter_weight=1.0,
                          intra_weight=1.0)
  np.testing.assert_allclose(components['dist'], np.full(6, want), rtol=1e-6)
  np.testing.assert_allclose(jnp.mean(total), 2.0 * want, rtol=1e-6)  # added once


def test_terms_that_read_features_read_them_from_the_context():
  objective = build_objective({'at': {'weight': 1.0, 'student_taps': ['pool1'],
                                      'teacher_taps': ['pool1']}})
  assert objective.student_taps == ('pool1',) and objective.teacher_taps == ('pool1',)
  with pytest.raises(KeyError, match='pool1'):
    on_logits(objective)(STUDENT, None, TEACHER, step=0)
  features = jnp.ones((6, 4, 4, 3))
  total, _, _ = objective.apply(Context(Outputs(STUDENT, {'pool1': features}),
                                        [Outputs(TEACHER, {'pool1': 2.0 * features})], step=0))
  np.testing.assert_allclose(total, 0.0, atol=1e-7)  # attention maps are scale-free


def test_describe_is_json_and_tells_schedules_apart():
  import json
  import optax
  one = build_objective({'kd': {'weight': optax.linear_schedule(0.0, 1.0, 10),
                                'temperature': 4.0}})
  two = build_objective({'kd': {'weight': optax.linear_schedule(0.0, 1.0, 20),
                                'temperature': 4.0}})
  assert json.loads(json.dumps(one.describe())) == one.describe()
  assert one.describe() != two.describe()
  assert one.describe()['kd']['loss'] == 'kd' and one.describe()['kd']['temperature'] == 4.0


@pytest.mark.parametrize('name', sorted(LOSSES))
def test_every_method_is_one_module_with_its_paper_and_defaults(name):
  term = LOSSES[name]
  assert term.name == name and term.__module__ == f'jaxkd.losses.methods.{name}'
  assert term.family and term.paper.citation and term.paper.url.startswith('https://')
  assert term.paper.weight >= 0 and term.paper.ce_weight >= 0
  built = losses.make_term(name)  # the paper's defaults are valid settings
  assert built.describe()['loss'] == name
