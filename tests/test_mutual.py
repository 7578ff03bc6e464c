"""Deep mutual learning (jaxkd.mutual): each member's update from its own loss alone, one
device against eight, exact resume of the cohort."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxkd import losses, models, mutual
from jaxkd.parallel import Parallel
from jaxkd.state import model_variables, tree_sha256

SHAPE = (1, 28, 28, 1)
SMALL_MLP = models.build('mlp', num_classes=10, hidden=(16,))
# A cohort of different architectures (small MLPs: quick to compile).
COHORT = [SMALL_MLP, SMALL_MLP, models.build('mlp', num_classes=10, hidden=(8, 8))]
DML = {'ce': {'weight': 1.0}, 'kd': {'weight': 1.0, 'temperature': 1.0}}


@pytest.fixture(scope='module')
def cohort():
  tx = optax.sgd(0.1, momentum=0.9)
  objective = losses.build_objective(DML, num_teachers=len(COHORT) - 1)
  state = jax.device_get(mutual.create_cohort_state(COHORT, tx, seed=0, input_shape=SHAPE))
  step = mutual.make_mutual_step(models=COHORT, tx=tx, objective=objective,
                                 parallel=Parallel('jit', num_devices=1))
  return tx, objective, state, step


def _reference_member_update(i, state, batch, tx):
  """Member i's SGD-momentum step from its own loss alone: CE + mean over peers of
  KL(p_peer || p_i) at T = 1, the peers' logits fixed at their current parameters."""
  images, labels = jnp.asarray(batch['image']), jnp.asarray(batch['label'])
  logits = [m.apply(model_variables(p, b), images, train=True)
            for m, p, b in zip(COHORT, state.params, state.batch_stats)]

  def own_loss(params):
    z = COHORT[i].apply(model_variables(params, state.batch_stats[i]), images, train=True)
    log_p = jax.nn.log_softmax(z)
    ce = -jnp.take_along_axis(log_p, labels[:, None], axis=1)[:, 0]
    kls = []
    for j, peer in enumerate(logits):
      if j != i:
        q = jax.nn.softmax(peer)
        kls.append(jnp.sum(q * (jnp.log(q) - log_p), axis=-1))
    return jnp.mean(ce + sum(kls) / len(kls))

  grads = jax.jit(jax.grad(own_loss))(state.params[i])
  updates, _ = tx.update(grads, state.opt_state[i], state.params[i])
  return optax.apply_updates(state.params[i], updates)


def test_each_member_updates_from_its_own_loss_alone(cohort, make_batches):
  tx, _, state, step = cohort
  batch = make_batches(1)[0]
  expected = [_reference_member_update(i, state, batch, tx) for i in range(len(COHORT))]
  new_state, metrics = step(jax.tree.map(jnp.array, state), batch)
  for i, params in enumerate(new_state.params):
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected[i])):
      np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
  assert int(new_state.step) == 1
  assert {'m0_loss', 'm2_accuracy', 'm1_kd_loss', 'm2_teacher1_kd_loss'} <= set(metrics)
  np.testing.assert_allclose(metrics['loss'], np.mean([metrics[f'm{i}_loss'] for i in range(3)]),
                             rtol=1e-6)
  # Member 0 starts as a supervised run of the same seed does (pairs with the student alone).
  from jaxkd.state import fresh_variables
  assert tree_sha256(state.params[0]) == tree_sha256(
      fresh_variables(COHORT[0], seed=0, input_shape=SHAPE)['params'])
  assert tree_sha256(state.params[0]) != tree_sha256(state.params[1])


@pytest.mark.parametrize('mode', ['jit', 'pmap', 'shard_map'])
def test_cohort_on_8_devices_equals_1(cohort, mode, make_batches):
  tx, objective, state, step = cohort
  batches = make_batches(2, n=16)
  one = jax.tree.map(jnp.array, state)
  for batch in batches:
    one, _ = step(one, batch)
  parallel = Parallel(mode, num_devices=8)
  eight_step = mutual.make_mutual_step(models=COHORT, tx=tx, objective=objective,
                                       parallel=parallel)
  eight = parallel.replicate(state)
  for batch in batches:
    eight, metrics = eight_step(eight, parallel.shard_batch(batch))
  eight = parallel.unreplicate(eight)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(eight.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_cohort_refuses_terms_it_cannot_share():
  tx = optax.sgd(0.1)
  with pytest.raises(ValueError, match=r"\['ctkd'\] do"):
    mutual.make_mutual_step(models=COHORT, tx=tx, objective=losses.build_objective(
        {'ce': {'weight': 1.0}, 'ctkd': {'weight': 1.0}}, num_teachers=2))
  with pytest.raises(ValueError, match='2 peers as teachers'):
    mutual.make_mutual_step(models=COHORT, tx=tx,
                            objective=losses.build_objective(DML, num_teachers=1))
  with pytest.raises(ValueError, match='at least 2'):
    mutual.create_cohort_state(COHORT[:1], tx, seed=0, input_shape=SHAPE)


def test_cohort_checkpoint_resumes_exactly(cohort, tmp_path, make_batches, straight_and_resumed):
  _, _, state, step = cohort
  straight, resumed = straight_and_resumed(state, step, make_batches(4), str(tmp_path / 'ckpt'))
  assert tree_sha256((straight.params, straight.opt_state)) == tree_sha256(
      (resumed.params, resumed.opt_state))
