"""The EMA teacher (jaxkd.ema): the mean teacher's update rule, bit for bit, exact resume."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxkd import ema, losses, models
from jaxkd.parallel import Parallel
from jaxkd.state import tree_sha256

SHAPE = (1, 28, 28, 1)


@pytest.fixture(scope='module')
def ema_setup():
  student = models.build('mlp', num_classes=10, hidden=(16,))
  tx = optax.sgd(0.1)
  objective = losses.build_objective({'ce': {'weight': 1.0},
                                      'kd': {'weight': 1.0, 'temperature': 4.0}},
                                     num_teachers=1)
  state = jax.device_get(ema.create_ema_state(student, tx, objective, seed=0, input_shape=SHAPE))
  step = ema.make_ema_distill_step(student=student, tx=tx, objective=objective, decay=0.6,
                                   parallel=Parallel('jit', num_devices=1))
  return state, step


def test_ema_teacher_follows_the_update_rule(ema_setup, make_batches):
  state, step = ema_setup
  assert tree_sha256(state.teacher_params) == tree_sha256(state.params)  # starts as the student
  current = jax.tree.map(jnp.array, state)
  for t, batch in enumerate(make_batches(4)):
    before = jax.device_get(current.teacher_params)
    current, metrics = step(current, batch)
    decay = min(0.6, 1 - 1 / (t + 1))  # the mean teacher's ramp-up: 0, 0.5, 0.6, 0.6
    np.testing.assert_allclose(metrics['ema_decay'], decay, rtol=1e-6)
    student = jax.device_get(current.params)
    teacher = jax.device_get(current.teacher_params)
    for old, new, s in zip(jax.tree.leaves(before), jax.tree.leaves(teacher),
                           jax.tree.leaves(student)):
      np.testing.assert_allclose(new, decay * old.astype(np.float64)
                                 + (1 - decay) * s.astype(np.float64), rtol=1e-6, atol=1e-7)
  assert tree_sha256(current.teacher_params) != tree_sha256(current.params)


def test_ema_update_matches_the_formula_bit_for_bit(ema_setup, make_batches):
  """The EMA through `optax.incremental_update` is `d * teacher + (1 - d) * student`, in
  that operand order (the hand-written update it replaced): equal bits, not close values."""
  state, step = ema_setup
  formula = jax.jit(lambda teacher, student, d: jax.tree.map(
      lambda t, s: (d * t + (1 - d) * s).astype(t.dtype), teacher, student))
  current = jax.tree.map(jnp.array, state)
  for batch in make_batches(4, seed=2):
    before = jax.device_get(current.teacher_params)  # the step donates the state
    current, metrics = step(current, batch)
    expected = formula(before, current.params, metrics['ema_decay'])
    assert tree_sha256(current.teacher_params) == tree_sha256(expected)


def test_ema_state_resumes_exactly(ema_setup, tmp_path, make_batches, straight_and_resumed):
  state, step = ema_setup
  straight, resumed = straight_and_resumed(state, step, make_batches(4, seed=1),
                                            str(tmp_path / 'ckpt'))
  assert tree_sha256(straight.teacher_params) == tree_sha256(resumed.teacher_params)
  assert tree_sha256(straight.params) == tree_sha256(resumed.params)


def test_ema_decay_is_checked():
  with pytest.raises(ValueError, match=r'ema decay must be in \[0, 1\), got 1.0'):
    ema.check_decay(1.0)
