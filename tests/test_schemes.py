"""Teacher schemes: deep mutual learning, the EMA teacher, born-again and assistant chains."""
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from fakedata import fashion_mnist_in_process
from jaxkd import checkpoint, ema, losses, models, mutual, recipes
from jaxkd.checkpoint import Checkpointer
from jaxkd.parallel import Parallel
from jaxkd.state import model_variables, tree_sha256

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       'experiments', 'configs')
SHAPE = (1, 28, 28, 1)
SMALL_MLP = models.build('mlp', num_classes=10, hidden=(16,))
# A cohort of different architectures (small MLPs: quick to compile).
COHORT = [SMALL_MLP, SMALL_MLP, models.build('mlp', num_classes=10, hidden=(8, 8))]
DML = {'ce': {'weight': 1.0}, 'kd': {'weight': 1.0, 'temperature': 1.0}}


def _batches(count, n=16, seed=0):
  rng = np.random.default_rng(seed)
  return [{'image': rng.normal(size=(n, 28, 28, 1)).astype(np.float32),
           'label': rng.integers(0, 10, n).astype(np.int32)} for _ in range(count)]


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


# ----------------------------------------------------------------------- mutual learning


@pytest.fixture(scope='module')
def cohort():
  tx = optax.sgd(0.1, momentum=0.9)
  objective = losses.build_objective(DML, num_teachers=len(COHORT) - 1)
  state = _host(mutual.create_cohort_state(COHORT, tx, seed=0, input_shape=SHAPE))
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


def test_each_member_updates_from_its_own_loss_alone(cohort):
  tx, _, state, step = cohort
  batch = _batches(1)[0]
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
def test_cohort_on_8_devices_equals_1(cohort, mode):
  tx, objective, state, step = cohort
  batches = _batches(2, n=16)
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


def _straight_and_resumed(state, step, batches, directory):
  """The state after every batch, and after half of them, a checkpoint save and restore (a
  fresh Checkpointer), and the rest."""
  straight = jax.tree.map(jnp.array, state)
  for batch in batches:
    straight, _ = step(straight, batch)
  resumed = jax.tree.map(jnp.array, state)
  half = len(batches) // 2
  for batch in batches[:half]:
    resumed, _ = step(resumed, batch)
  with Checkpointer(directory, metadata={'task': 'scheme'}) as checkpointer:
    checkpointer.save(half, resumed)
  with Checkpointer(directory, metadata={'task': 'scheme'}) as checkpointer:
    resumed = checkpointer.restore(_host(state)).state
  for batch in batches[half:]:
    resumed, _ = step(resumed, batch)
  return straight, resumed


def test_cohort_checkpoint_resumes_exactly(cohort, tmp_path):
  _, _, state, step = cohort
  straight, resumed = _straight_and_resumed(state, step, _batches(4), str(tmp_path / 'ckpt'))
  assert tree_sha256((straight.params, straight.opt_state)) == tree_sha256(
      (resumed.params, resumed.opt_state))


# --------------------------------------------------------------------------- EMA teacher


@pytest.fixture(scope='module')
def ema_setup():
  student = SMALL_MLP
  tx = optax.sgd(0.1)
  objective = losses.build_objective({'ce': {'weight': 1.0},
                                      'kd': {'weight': 1.0, 'temperature': 4.0}},
                                     num_teachers=1)
  state = _host(ema.create_ema_state(student, tx, objective, seed=0, input_shape=SHAPE))
  step = ema.make_ema_distill_step(student=student, tx=tx, objective=objective, decay=0.6,
                                   parallel=Parallel('jit', num_devices=1))
  return state, step


def test_ema_teacher_follows_the_update_rule(ema_setup):
  state, step = ema_setup
  assert tree_sha256(state.teacher_params) == tree_sha256(state.params)  # starts as the student
  current = jax.tree.map(jnp.array, state)
  for t, batch in enumerate(_batches(4)):
    before = _host(current.teacher_params)
    current, metrics = step(current, batch)
    decay = min(0.6, 1 - 1 / (t + 1))  # the mean teacher's ramp-up: 0, 0.5, 0.6, 0.6
    np.testing.assert_allclose(metrics['ema_decay'], decay, rtol=1e-6)
    student = _host(current.params)
    for old, new, s in zip(jax.tree.leaves(before), jax.tree.leaves(_host(current.teacher_params)),
                           jax.tree.leaves(student)):
      np.testing.assert_allclose(new, decay * old.astype(np.float64)
                                 + (1 - decay) * s.astype(np.float64), rtol=1e-6, atol=1e-7)
  assert tree_sha256(current.teacher_params) != tree_sha256(current.params)


def test_ema_update_matches_the_formula_bit_for_bit(ema_setup):
  """The EMA through `optax.incremental_update` is `d * teacher + (1 - d) * student`, in
  that operand order (the hand-written update it replaced): equal bits, not close values."""
  state, step = ema_setup
  formula = jax.jit(lambda teacher, student, d: jax.tree.map(
      lambda t, s: (d * t + (1 - d) * s).astype(t.dtype), teacher, student))
  current = jax.tree.map(jnp.array, state)
  for batch in _batches(4, seed=2):
    before = _host(current.teacher_params)  # the step donates the state
    current, metrics = step(current, batch)
    expected = formula(before, current.params, metrics['ema_decay'])
    assert tree_sha256(current.teacher_params) == tree_sha256(expected)


def test_ema_state_resumes_exactly(ema_setup, tmp_path):
  state, step = ema_setup
  straight, resumed = _straight_and_resumed(state, step, _batches(4, seed=1),
                                            str(tmp_path / 'ckpt'))
  assert tree_sha256(straight.teacher_params) == tree_sha256(resumed.teacher_params)
  assert tree_sha256(straight.params) == tree_sha256(resumed.params)


def test_ema_decay_is_checked():
  with pytest.raises(ValueError, match=r'ema decay must be in \[0, 1\), got 1.0'):
    ema.check_decay(1.0)


# ------------------------------------------------------------- recipes on generated data


@pytest.fixture(scope='module')
def fake_data(tmp_path_factory):
  with fashion_mnist_in_process(tmp_path_factory.mktemp('schemes'), CONFIGS, n_train=200,
                                n_test=50) as tmp:
    yield tmp


def _config(module, arg, **changes):
  __import__(module)
  config = sys.modules[module].get_config(arg)
  config.model_overrides = ml_collections.ConfigDict({'hidden': (16,)})
  config.update({**dict(num_steps=2, batch_size=16, log_every=1, checkpoint_every=2,
                        eval_batch_size=50), **changes})
  config.parallel.num_devices = 1
  return config


def _final(workdir):
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    return json.load(f)


def test_mutual_recipe_exports_each_member(fake_data):
  workdir = str(fake_data / 'dml')
  config = _config('mutual_fashion_mnist', 'mlp,mlp', num_steps=12)  # one epoch: evaluated
  final = recipes.mutual(config, workdir)
  assert [m['model'] for m in final['members']] == ['mlp', 'mlp']
  np.testing.assert_allclose(final['test_accuracy'], np.mean(
      [m['test_accuracy'] for m in final['members']]))
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert {'m0_test_accuracy', 'm1_test_accuracy', 'm1_kd_loss'} <= set().union(*records)
  for i, member in enumerate(final['members']):  # each one a finished run: it can teach
    variables, meta = checkpoint.load_variables(member['workdir'])
    assert tree_sha256(variables['params']) == member['params_sha256'] == _final(
        member['workdir'])['params_sha256']
    assert meta['model'] == 'mlp' and meta['cohort_member'] == i


def test_ema_recipe_exports_student_and_teacher(fake_data):
  workdir = str(fake_data / 'ema')
  final = recipes.ema_teacher(_config('ema_fashion_mnist', 'mlp', num_steps=12), workdir)
  teacher, meta = checkpoint.load_variables(os.path.join(workdir, 'ema'))
  assert tree_sha256(teacher['params']) == final['ema_params_sha256'] != final['params_sha256']
  assert meta['ema_of'] == workdir and _final(os.path.join(workdir, 'ema'))['test_count'] == 50
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    assert any('ema_test_accuracy' in json.loads(line) for line in f)


def _fingerprint(workdir):
  return tree_sha256(checkpoint.load_variables(workdir)[0])


def test_born_again_chain_hands_each_generation_to_the_next(fake_data):
  workdir = str(fake_data / 'ban')
  config = _config('chain_fashion_mnist', 'born_again')
  config.chain.models = 'mlp,mlp'
  final = recipes.chain(config, workdir)
  gens = final['generations']
  assert [(g['kind'], os.path.basename(g['workdir'])) for g in gens] == [
      ('train', '0-mlp'), ('distill', '1-mlp'), ('distill', 'ensemble-mlp')]
  assert _final(gens[1]['workdir'])['teacher_fingerprints'] == [_fingerprint(gens[0]['workdir'])]
  ensemble = _final(gens[2]['workdir'])
  assert ensemble['teacher_fingerprints'] == [_fingerprint(g['workdir']) for g in gens[:2]]
  assert checkpoint.read_metadata(os.path.join(gens[2]['workdir'], 'final'))[
      'kd']['multi_teacher'] == 'ensemble'
  assert final['params_sha256'] == gens[2]['params_sha256']
  assert recipes.chain(config, workdir)['generations'] == gens  # finished links are reused


def test_assistant_chain_of_three_models(fake_data):
  workdir = str(fake_data / 'takd')
  config = _config('chain_fashion_mnist', 'assistant')
  config.chain.models = 'mlp,mlp_800,mlp'
  config.model_overrides = ml_collections.ConfigDict()
  final = recipes.chain(config, workdir)
  gens = final['generations']
  assert [g['model'] for g in gens] == ['mlp', 'mlp_800', 'mlp']
  for teacher, student in zip(gens, gens[1:]):
    assert student['teachers'] == [teacher['workdir']]
    assert _final(student['workdir'])['teacher_fingerprints'] == [
        _fingerprint(teacher['workdir'])]
  assert _final(gens[0]['workdir'])['steps'] == 2


def test_chain_refuses_a_bad_model_list_before_any_run(fake_data):
  config = _config('chain_fashion_mnist', 'assistant')
  config.chain.models = 'lenet5,lenet7'
  with pytest.raises(ValueError, match=r"chain.models='lenet5,lenet7': 'lenet7' is not a model"):
    recipes.chain(config, str(fake_data / 'bad'))
  config.chain.models = 'lenet5'
  with pytest.raises(ValueError, match='at least 2'):
    recipes.chain(config, str(fake_data / 'bad'))
  assert not os.path.exists(fake_data / 'bad')


def test_distill_recipe_gives_crd_the_dataset_indices(fake_data):
  """A memory-bank term gets `batch['index']` and the training split's size from the recipe."""
  teacher = str(fake_data / 'crd_teacher')
  recipes.train(_config('fashion_mnist', 'mlp'), teacher)
  config = _config('kd_methods', 'crd', teacher_dir=teacher, model='mlp')
  config.terms.crd.update(student_tap='dense1', teacher_tap='dense1', num_negatives=16)
  final = recipes.distill(config, str(fake_data / 'crd'))
  stored = checkpoint.read_metadata(os.path.join(fake_data, 'crd', 'final'))
  assert stored['objective']['crd']['num_data'] == 200 and final['steps'] == 2
