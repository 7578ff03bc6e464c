"""`jaxkd.recipes` components: a teacher's task is compared as a task, not as a spelling."""
import jax
import ml_collections
import numpy as np
import pytest

from jaxkd import checkpoint, models
from jaxkd.recipes import components as builders


def _task():
  images = np.zeros((4, 28, 28, 1), np.uint8)
  labels = np.arange(4, dtype=np.int32)
  return builders.Task('fashion_mnist', images, labels, images, labels, 10, 0.5, 0.5)


def _teacher(tmp_path, classes):
  model = models.build('mlp', num_classes=10, hidden=(8,))
  variables = builders.fresh_variables(model, seed=0, input_shape=(1, 28, 28, 1))
  meta = {'model': 'mlp', 'model_overrides': {'hidden': [8]}, 'num_classes': 10,
          'dataset': 'fashion_mnist', 'classes': classes}
  checkpoint.save_variables(str(tmp_path / 'final'), jax.device_get(variables), metadata=meta)
  return str(tmp_path)


def test_teacher_with_explicit_classes_0_to_9_teaches_the_whole_dataset(tmp_path):
  teacher = _teacher(tmp_path, list(range(10)))
  _, _, meta = builders.load_teacher(teacher, _task(), ml_collections.ConfigDict({'classes': ()}))
  assert meta['classes'] == list(range(10))


def test_teacher_of_other_classes_is_refused(tmp_path):
  teacher = _teacher(tmp_path, [0, 1, 2, 3, 4])
  with pytest.raises(ValueError, match=r'classes \[0, 1, 2, 3, 4\], but this run is on '
                                       r'fashion_mnist classes all'):
    builders.load_teacher(teacher, _task(), ml_collections.ConfigDict({'classes': ()}))
