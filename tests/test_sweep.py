"""Table sweeps: finished runs are reused only for the config that made them."""
import json

import ml_collections
import pytest

from jaxkd.tables import sweep
from jaxkd.tables.sweep import RunSpec


def _spec(learning_rate=1e-3, classes=(5, 6)):
  config = ml_collections.ConfigDict(dict(
      seed=0, classes=classes, optimizer=dict(name='adam', learning_rate=learning_rate)))
  return RunSpec('table', 'row', 0, 'train', config)


def _finish(workdir, accuracy=0.5):
  (workdir / 'final_metrics.json').write_text(json.dumps(
      {'test_accuracy': accuracy, 'test_count': 10, 'epochs': 1.0, 'wall_seconds': 1.0}))


def test_finished_run_of_the_same_config_is_reused(tmp_path, monkeypatch):
  monkeypatch.setitem(sweep.recipes.RECIPES, 'train',
                      lambda config, workdir: pytest.fail('re-ran'))
  spec = _spec()
  workdir = tmp_path / 'table' / 'row' / 'seed0'
  sweep.check_run_config(spec, str(workdir))  # a new run stores its config
  stored = json.loads((workdir / sweep.RUN_CONFIG).read_text())
  assert stored['classes'] == [5, 6] and stored['optimizer']['learning_rate'] == 1e-3
  _finish(workdir)
  (record,) = sweep.execute([_spec()], root=str(tmp_path))
  assert record['test_accuracy'] == 0.5 and record['test_errors'] == 5


def test_finished_run_of_another_config_is_refused_untouched(tmp_path):
  workdir = tmp_path / 'table' / 'row' / 'seed0'
  sweep.check_run_config(_spec(), str(workdir))
  _finish(workdir)
  before = {p.name: p.read_bytes() for p in workdir.iterdir()}
  for collect_only in (False, True):
    with pytest.raises(ValueError, match=r'another config \(optimizer.learning_rate: 0.001 -> '
                                         r'0.01\).*Move that folder away'):
      sweep.execute([_spec(learning_rate=1e-2)], root=str(tmp_path), collect_only=collect_only)
  with pytest.raises(ValueError, match=r'classes: \[5, 6\] -> \[5, 7\]'):
    sweep.execute([_spec(classes=(5, 7))], root=str(tmp_path))
  assert {p.name: p.read_bytes() for p in workdir.iterdir()} == before


def test_runs_from_before_stored_configs_are_read_as_they_are(tmp_path):
  workdir = tmp_path / 'table' / 'row' / 'seed0'
  workdir.mkdir(parents=True)
  _finish(workdir, 0.7)
  (record,) = sweep.execute([_spec()], root=str(tmp_path))
  assert record['test_accuracy'] == 0.7
  assert not (workdir / sweep.RUN_CONFIG).exists()  # nothing certified after the fact
