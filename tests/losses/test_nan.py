"""NaN in, NaN out, for every registered term (Hardening II).

A NaN anywhere in an example's inputs (the teacher's or the student's logits, or one entry of
a feature map it taps) gives NaN for that example, and for the batch's value of a term that
relates the examples of a batch; the other examples keep finite values. The guard that stops
a run lives in the step: a loss imported into a loop of one's own must not hide a NaN behind
the `where`s that give ``0 log 0 = 0``. Teacher logits of ``-inf`` (a class of probability 0)
keep their finite values and gradients.

Inputs are built generically: each term's named config
(`jaxkd.recipes.method_configs.paper_settings`: its paper's defaults and the LeNet-5 taps), on
the outputs of the tiny LeNet-5 pair (ResNet-8 for terms that need a global-average-pool
classifier). A new method needs no edit here unless it
reads a new kind of input.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd import models
from jaxkd.losses import LOSSES, Context, Outputs, build_objective
from jaxkd.losses.terms import LogitTerm
from jaxkd.models.features import features
from jaxkd.recipes import method_configs
from jaxkd.state import init_variables

BATCH = 6
NUM_DATA = 64
# Sizes the LeNet-5 pair can hold (a bank of NUM_DATA rows): only what is too big for it.
SMALL = {'crd': {'num_negatives': 16}}
PAIRS = {'lenet': ('lenet5_half', 'lenet5', (28, 28, 1)),
         'gap': ('resnet8', 'resnet8', (16, 16, 3)),
         'language': ('lm_student', 'lm_teacher', (12,))}  # token sequences


def _settings(name):
  settings = method_configs.paper_settings(name)
  settings = {k: v for k, v in settings.items() if not k.endswith('_epochs')}
  return {**settings, **SMALL.get(name, {})}


@functools.lru_cache(maxsize=None)
def _outputs(model_name, shape, taps, seed):
  model = models.build(model_name, num_classes=10)
  variables = init_variables(model, key=jax.random.key(seed), input_shape=(1, *shape))
  rng = np.random.default_rng(seed)
  images = (rng.integers(0, 10, (BATCH, *shape)).astype(np.int32) if model_name.startswith('lm_')
            else rng.normal(size=(BATCH, *shape)).astype(np.float32))
  if not taps:
    return Outputs(model.apply(variables, images, train=False))
  logits, feats = features(model, variables, images, taps)
  return Outputs(logits.astype(jnp.float32), feats, variables=variables)


def _case(name):
  """The objective of term `name` alone, and its student's and teacher's outputs."""
  objective = build_objective({name: {**_settings(name), 'weight': 1.0}}, num_teachers=1,
                              run={'num_data': NUM_DATA, 'label_smoothing': 0.0,
                                   'train_labels': np.arange(NUM_DATA) % 10})
  pair = PAIRS['gap' if name in method_configs.GAP_ONLY else
               'language' if name in method_configs.LANGUAGE_ONLY else 'lenet']
  student = _outputs(pair[0], pair[2], tuple(objective.student_taps), 0)
  teacher = _outputs(pair[1], pair[2], tuple(objective.teacher_taps), 1)
  return objective, student, teacher


def _with_nan_in_row(outputs, row, value=jnp.nan, at=0):
  """`outputs` with one NaN (or `value`) in example `row` of its logits and of each tapped
  feature, at index `at` of its other axes (1 for sequences: a first position that relates
  to nothing before it is not read by relation terms)."""
  poison = lambda x: x.at[(row,) + (at,) * (x.ndim - 1)].set(value)  # noqa: E731
  return outputs.replace(logits=poison(outputs.logits),
                         features={k: poison(v) for k, v in outputs.features.items()})


def _apply(objective, student, teacher, key=0):
  params, state = objective.init(jax.random.key(key), student, [teacher])
  rows = student.logits.shape[:-1]  # [B], or [B, L] for a language model's positions
  batch = {'label': (jnp.arange(np.prod(rows)) % 10).reshape(rows),
           'index': jnp.arange(BATCH) * 7 % NUM_DATA,
           # a sampled teacher cache's draws (sampled_kd): 4 token ids per example
           'teacher_sample_ids': (jnp.arange(np.prod(rows) * 4) % 10).reshape(rows + (4,))}
  _, components, _ = objective.apply(Context(student, [teacher], batch, step=0,
                                             key=jax.random.key(key), params=params,
                                             state=state))
  return components


SIDES = ['teacher', 'student']


@pytest.mark.parametrize('poison', [np.nan, np.inf], ids=['nan', 'inf'])
@pytest.mark.parametrize('side', SIDES)
@pytest.mark.parametrize('name', list(LOSSES))
def test_nan_in_an_example_gives_nan_for_it(name, side, poison):
  """A NaN gives NaN; a +inf gives a non-finite value (NaN or inf)."""
  if side == 'teacher' and not LOSSES[name].needs_teacher:
    pytest.skip(f'{name} reads no teacher')
  objective, student, teacher = _case(name)
  clean = np.asarray(_apply(objective, student, teacher)[name])
  assert np.all(np.isfinite(clean)), (name, clean)
  at = 1 if name in method_configs.LANGUAGE_ONLY else 0
  if side == 'teacher':
    teacher = _with_nan_in_row(teacher, 2, poison, at)
  else:
    student = _with_nan_in_row(student, 2, poison, at)
  value = np.asarray(_apply(objective, student, teacher)[name])
  shows = np.isnan if np.isnan(poison) else lambda v: ~np.isfinite(v)
  if LOSSES[name].batch_statistics:  # the example's NaN reaches the batch's statistics
    assert np.any(shows(value[2])) and (side == 'teacher' or np.all(shows(value))), (name, value)
  elif LOSSES[name].per_example:  # value [B] (or [B, L]: the poisoned example's positions)
    assert np.any(shows(value[2])), (name, value)
    others = np.delete(value, 2, axis=0)
    np.testing.assert_allclose(others, np.delete(clean, 2, axis=0), rtol=1e-5, atol=1e-6)
  else:
    assert np.all(shows(value)), (name, value)


LOGIT_TERMS = [name for name, term in LOSSES.items()
               if issubclass(term, LogitTerm) and term.needs_teacher]
# Where the formula itself is infinite at a teacher probability of 0: KL(p_s || p_t) with
# p_s > 0, and the squared distance to a logit of -inf.
INFINITE = {'reverse_kl', 'logit_mse'}


@pytest.mark.parametrize('name', LOGIT_TERMS)
def test_teacher_minus_inf_logits_stay_finite(name):
  """A teacher logit of -inf is a class of probability 0: finite values and gradients."""
  if name in INFINITE:
    objective, student, teacher = _case(name)
    teacher = teacher.replace(logits=teacher.logits.at[:, 3].set(-jnp.inf))
    assert np.all(np.asarray(_apply(objective, student, teacher)[name]) == np.inf)
    return
  objective, student, teacher = _case(name)
  teacher = teacher.replace(logits=teacher.logits.at[:, 3].set(-jnp.inf))
  params, state = objective.init(jax.random.key(0), student, [teacher])
  batch = {'label': jnp.arange(BATCH) % 10}

  def loss(student_logits):
    total, _, _ = objective.apply(Context(student.replace(logits=student_logits), [teacher],
                                          batch, step=0, params=params, state=state))
    return jnp.mean(total)

  value, grad = jax.value_and_grad(loss)(student.logits)
  assert np.isfinite(value), name
  assert np.all(np.isfinite(grad)), name


def test_kd_loss_of_a_nan_teacher_row_is_nan():
  """The issue's case: a NaN in a teacher row gave a finite value (0 for a NaN-only row)."""
  from jaxkd.losses import kd_loss
  student = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
  teacher = student[::-1].copy()
  teacher[0, 2] = np.nan
  teacher[1] = np.nan
  value = np.asarray(jax.jit(lambda s, t: kd_loss(s, t, temperature=4.0))(student, teacher))
  assert np.isnan(value[0]) and np.isnan(value[1]) and np.isfinite(value[2])


def test_all_zero_rows_of_cc_and_pkt_get_a_zero_gradient():
  """As documented: an all-zero feature row is normalised to 0 with a zero gradient (the
  formula's derivative there is ~1/eps in no particular direction)."""
  from jaxkd.losses import cc_loss, pkt_loss
  rng = np.random.default_rng(1)
  student, teacher = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
  student[1] = 0.0
  for loss in (lambda s, t: cc_loss(s, t, gamma=0.4, order=2), pkt_loss):
    value, grad = jax.value_and_grad(loss)(student.astype(np.float32),
                                           teacher.astype(np.float32))
    assert np.isfinite(value)
    np.testing.assert_array_equal(np.asarray(grad)[1], 0.0)
    assert np.any(np.asarray(grad)[[0, 2, 3]] != 0)
