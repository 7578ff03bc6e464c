"""Model selection never sees the test set unless a config says so, and then it is recorded."""
import json
import os

import ml_collections
import numpy as np
import pytest

from jaxkd import recipes
from jaxkd.checkpoint import Checkpointer
from jaxkd.recipes import defaults
from jaxkd.recipes.provenance import best_epoch
from jaxkd.recipes.run import selection_policy
from jaxkd.tables import sweep


def _config(**overrides):
  config = defaults.supervised('lenet5_half')
  config.update(overrides)
  return config


def test_default_ranking_is_on_the_validation_split():
  policy = selection_policy(_config(keep_best=2, validation_size=500))
  assert policy == {'keep_best': 2, 'metric': 'val_accuracy', 'split': 'val', 'mode': 'max',
                    'test_selection': False}
  assert selection_policy(_config())['split'] is None  # keep_best = 0: nothing is chosen


@pytest.mark.parametrize('overrides, setting', [
    (dict(keep_best=1), 'validation_size'),  # no validation split to rank on
    (dict(keep_best=1, validation_size=500, best_metric='test_accuracy'),
     'allow_test_selection'),
    (dict(keep_best=1, validation_size=500, best_metric='accuracy'), 'best_metric'),
])
def test_refused_selection_names_the_setting(overrides, setting):
  with pytest.raises(ValueError, match=setting):
    selection_policy(_config(**overrides))


def test_refused_before_any_data_is_read(tmp_path):
  config = _config(keep_best=1, data_dir=str(tmp_path / 'no_data'))
  with pytest.raises(ValueError, match='validation_size'):
    recipes.train(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run') and not os.path.exists(tmp_path / 'no_data')


def test_test_selection_when_allowed_is_recorded():
  policy = selection_policy(_config(keep_best=1, best_metric='test_accuracy',
                                    allow_test_selection=True))
  assert policy['split'] == 'test' and policy['test_selection'] is True
  spec = sweep.RunSpec('t', 'row', 0, 'train', ml_collections.ConfigDict())
  final = {'test_accuracy': 0.5, 'test_count': 10, 'selection': policy}
  assert sweep.run_record(spec, final)['test_selection'] is True
  assert sweep.run_record(spec, {'test_accuracy': 0.5})['test_selection'] is False


def test_checkpointer_refuses_a_test_metric(tmp_path):
  with pytest.raises(ValueError, match='allow_test_selection'):
    Checkpointer(tmp_path / 'ckpt', metadata={}, keep_best=1, best_metric='test_accuracy')
  assert not os.path.exists(tmp_path / 'ckpt')
  Checkpointer(tmp_path / 'ok', metadata={}, keep_best=1, best_metric='test_accuracy',
               allow_test_selection=True).close()


def test_best_epoch_is_chosen_by_validation_accuracy(tmp_path):
  # Test accuracy peaks at epoch 1, validation accuracy at epoch 2: epoch 2 is reported.
  records = [{'epoch': 1, 'val_accuracy': 0.80, 'test_accuracy': 0.95},
             {'epoch': 2, 'val_accuracy': 0.90, 'test_accuracy': 0.70},
             {'epoch': 3, 'val_accuracy': 0.85, 'test_accuracy': 0.90}]
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  result = best_epoch(str(tmp_path))
  assert (result['best_epoch'], result['best_val_test_accuracy']) == (2, 0.70)
  assert np.isclose(result['best_val_accuracy'], 0.90)


def test_validation_first_holds_out_before_the_class_subset(tmp_path):
  """With `validation_first`, a small-data run's validation images come from the whole
  training split (the same for every seed) and never from, nor into, its training draw;
  without it they would come out of the run's own 60 images."""
  from fakedata import fashion_mnist_in_process
  from jaxkd.recipes.components import load_task
  small = dict(classes=tuple(range(10)), train_per_class=6, validation_size=100)
  with fashion_mnist_in_process(tmp_path, n_train=300, n_test=20):
    with pytest.raises(ValueError, match=r'validation_size=100 must be in 1..59'):
      load_task(_config(**small))
    first, other_seed = (load_task(_config(**small, validation_first=True, seed=seed))
                         for seed in (0, 1))
  assert len(first.val_labels) == 100 and len(first.train_labels) == 60  # 6 per class kept
  np.testing.assert_array_equal(first.val_images, other_seed.val_images)  # one split
  assert not np.array_equal(first.train_images, other_seed.train_images)  # a draw per seed
  rows = lambda images: {image.tobytes() for image in images}  # noqa: E731
  assert not rows(first.val_images) & rows(first.train_images)
  # Without `classes`, `train_per_class` draws from every class and keeps the labels: the
  # same examples as naming all ten classes in order.
  with fashion_mnist_in_process(tmp_path, n_train=300, n_test=20):
    every = load_task(_config(train_per_class=6, validation_size=100, validation_first=True))
  np.testing.assert_array_equal(every.train_images, first.train_images)
  np.testing.assert_array_equal(every.train_labels, first.train_labels)
  assert every.num_classes == 10 and np.bincount(every.train_labels).tolist() == [6] * 10
