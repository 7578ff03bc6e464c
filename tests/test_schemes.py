"""The teacher-scheme recipes on generated data: mutual learning, the EMA teacher, born-again
and assistant chains, and a memory-bank term through the distillation recipe."""
import json
import os
import shutil

import ml_collections
import numpy as np
import pytest

from fakedata import fashion_mnist_in_process
from jaxkd import checkpoint, recipes
from jaxkd.recipes import defaults
from jaxkd.state import tree_sha256

DML = {'ce': {'weight': 1.0}, 'kd': {'weight': 1.0, 'temperature': 1.0}}
EMA_TERMS = {'ce': {'weight': 1.0}, 'kd': {'weight': 1.0, 'temperature': 4.0}}
# CRD (Tian et al. 2020) as experiments/configs/kd_methods.py sets it, on a small bank.
CRD = {'ce': {'weight': 1.0},
       'crd': dict(weight=0.8, embed_dim=128, num_negatives=16, temperature=0.07, momentum=0.5,
                   student_tap='dense1', teacher_tap='dense1')}


@pytest.fixture(scope='module')
def fake_data(tmp_path_factory):
  with fashion_mnist_in_process(tmp_path_factory.mktemp('schemes'), n_train=200,
                                n_test=50) as tmp:
    yield tmp


def _config(config, **changes):
  """`config` (built from `jaxkd.recipes.defaults`) as a 2-step run of a small MLP."""
  config.model_overrides = ml_collections.ConfigDict({'hidden': (16,)})
  config.update({**dict(num_steps=2, batch_size=16, log_every=1, checkpoint_every=2,
                        eval_batch_size=50), **changes})
  config.parallel.num_devices = 1
  return config


def _terms(config, terms):
  config.terms = ml_collections.ConfigDict(terms)
  return config


def _chain(models, *, ensemble, terms):
  config = defaults.distillation()  # each link sets its own model
  config.chain = ml_collections.ConfigDict(dict(models=models, ensemble=ensemble))
  return _terms(config, terms)


# Born-again networks (pure KD at T = 1, then a student of the generations' ensemble) and a
# teacher-assistant chain (the kd shorthand), as experiments/configs/chain_fashion_mnist.py.
BORN_AGAIN = dict(ensemble=True, terms={'kd': {'weight': 1.0, 'temperature': 1.0}})
ASSISTANT = dict(ensemble=False, terms={})


def _final(workdir):
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    return json.load(f)


def test_mutual_recipe_exports_each_member(fake_data):
  workdir = str(fake_data / 'dml')
  # 12 steps: one epoch, so evaluated.
  config = _config(_terms(defaults.distillation('mlp'), DML), cohort='mlp,mlp', num_steps=12)
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
  _rerun_with_another_seed_is_refused_first(recipes.mutual, config, workdir, 'members/0/final')


def _rerun_with_another_seed_is_refused_first(recipe, config, workdir, kept_final):
  """With its summary, checkpoints and WORKDIR/final gone, a rerun with another seed is
  refused by the final model it would overwrite, before any step: nothing changes."""
  for name in ('final_metrics.json', 'checkpoints', 'final'):
    path = os.path.join(workdir, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.path.exists(path) and os.remove(path)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    before = f.read()
  other = config.copy_and_resolve_references()
  other.seed = config.seed + 1
  with pytest.raises(checkpoint.IncompatibleCheckpointError,
                     match=rf'{kept_final} \(step \d+\): it belongs to another run \(seed: '):
    recipe(other, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    assert f.read() == before


def test_ema_recipe_exports_student_and_teacher(fake_data):
  workdir = str(fake_data / 'ema')
  config = _config(_terms(defaults.ema_teacher('mlp'), EMA_TERMS), num_steps=12)
  final = recipes.ema_teacher(config, workdir)
  teacher, meta = checkpoint.load_variables(os.path.join(workdir, 'ema'))
  assert tree_sha256(teacher['params']) == final['ema_params_sha256'] != final['params_sha256']
  assert meta['ema_of'] == workdir and _final(os.path.join(workdir, 'ema'))['test_count'] == 50
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    assert any('ema_test_accuracy' in json.loads(line) for line in f)
  _rerun_with_another_seed_is_refused_first(recipes.ema_teacher, config, workdir, 'ema/final')


def _fingerprint(workdir):
  return tree_sha256(checkpoint.load_variables(workdir)[0])


def test_born_again_chain_hands_each_generation_to_the_next(fake_data):
  workdir = str(fake_data / 'ban')
  config = _config(_chain('mlp,mlp', **BORN_AGAIN))
  final = recipes.chain(config, workdir)
  gens = final['generations']
  assert [(g['kind'], os.path.basename(g['workdir'])) for g in gens] == [
      ('train', '0-mlp'), ('distill', '1-mlp'), ('distill', 'ensemble-mlp')]
  assert _final(gens[1]['workdir'])['teacher_fingerprints'] == [_fingerprint(gens[0]['workdir'])]
  ensemble = _final(gens[2]['workdir'])
  assert ensemble['teacher_fingerprints'] == [_fingerprint(g['workdir']) for g in gens[:2]]
  assert checkpoint.read_metadata(os.path.join(gens[2]['workdir'], 'final'))[
      'objective']['kd']['multi_teacher'] == 'ensemble'
  assert final['params_sha256'] == gens[2]['params_sha256']
  assert recipes.chain(config, workdir)['generations'] == gens  # finished links are reused
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    before = f.read()
  for key, value in (('models', 'mlp,mlp,mlp'), ('temperature', 20.0), ('seed', 7)):
    other = config.copy_and_resolve_references()
    if key == 'models':
      other.chain.models = value
    elif key == 'temperature':
      other.terms.kd.temperature = value
    else:
      other.seed = value
    with pytest.raises(FileExistsError, match=r'holds a chain of other settings \(.*' + key):
      recipes.chain(other, workdir)
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    assert f.read() == before  # a refused rerun changes nothing


def test_assistant_chain_of_three_models(fake_data):
  workdir = str(fake_data / 'takd')
  config = _config(_chain('mlp,mlp_800,mlp', **ASSISTANT))
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
  config = _config(_chain('lenet5,lenet7', **ASSISTANT))
  with pytest.raises(ValueError, match=r"chain.models='lenet5,lenet7': 'lenet7' is not a model"):
    recipes.chain(config, str(fake_data / 'bad'))
  config.chain.models = 'lenet5'
  with pytest.raises(ValueError, match='at least 2'):
    recipes.chain(config, str(fake_data / 'bad'))
  config.chain.models = 'lenet5,,lenet5_half'
  with pytest.raises(ValueError, match='has an empty entry'):
    recipes.chain(config, str(fake_data / 'bad'))
  assert not os.path.exists(fake_data / 'bad')


def test_distill_recipe_gives_crd_the_dataset_indices(fake_data):
  """A memory-bank term gets `batch['index']`, the training split's size and its labels from
  the recipe."""
  teacher = str(fake_data / 'crd_teacher')
  recipes.train(_config(defaults.supervised('mlp')), teacher)
  config = _config(_terms(defaults.distillation('mlp'), CRD), teacher_dir=teacher)
  final = recipes.distill(config, str(fake_data / 'crd'))
  stored = checkpoint.read_metadata(os.path.join(fake_data, 'crd', 'final'))
  assert stored['objective']['crd']['num_data'] == 200 and final['steps'] == 2
  # ...and the training labels, for the authors' other-class negatives (by count and hash).
  assert stored['objective']['crd']['sampling'] == 'other_class'
  assert stored['objective']['crd']['train_labels']['count'] == 200
