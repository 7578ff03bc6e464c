"""What made a run: the dataset's SHA-256, each run's provenance in its final metrics and in
the results JSON, the Markdown line on the runs' commits, and `--verify ROW --seeds S`."""
import json
import os
import sys

import pytest

from fakedata import fashion_mnist_in_process, make_fashion_mnist
from jaxkd import data
from jaxkd.recipes import environment
from jaxkd.tables import reproduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dataset_sha256_follows_the_bytes(tmp_path):
  make_fashion_mnist(tmp_path / 'a', seed=0)
  make_fashion_mnist(tmp_path / 'b', seed=0)
  make_fashion_mnist(tmp_path / 'c', seed=1)
  sha = {name: data.dataset_sha256('fashion_mnist', raw_dir=tmp_path / name,
                                   data_dir=tmp_path / f'tfds_{name}') for name in 'abc'}
  assert sha['a'] == sha['b'] != sha['c'] and len(sha['a']) == 64
  with pytest.raises(data.DataNotFoundError):
    data.dataset_sha256('fashion_mnist', raw_dir=tmp_path / 'none', data_dir=tmp_path / 't')


def test_package_versions_name_the_numerics_stack():
  versions = environment.package_versions()
  import jax
  import numpy
  assert versions['jax'] == jax.__version__ and versions['numpy'] == numpy.__version__
  assert {'jaxlib', 'flax', 'optax', 'orbax-checkpoint'} <= set(versions)


def _runs(*commits, clean=True):
  return [{'provenance': {'git_commit': c, 'git_clean': clean}} if c else {} for c in commits]


def test_commits_line_says_when_runs_come_from_several_commits():
  assert reproduce.commits_line(_runs('a' * 40, 'a' * 40)) == (
      'Every run made at commit aaaaaaaaaa.')
  several = reproduce.commits_line(_runs('a' * 40, 'b' * 40, 'b' * 40, None))
  assert several == ('Runs made at SEVERAL commits: aaaaaaaaaa (1 run), bbbbbbbbbb (2 runs), '
                     'not recorded (1 run).')
  assert 'no commit of their own' in reproduce.commits_line(_runs(None, None))
  assert '2 with uncommitted changes' in reproduce.commits_line(_runs('a', 'a', clean=False))


@pytest.mark.slow
def test_runs_record_provenance_and_verify_reruns_a_row(tmp_path, monkeypatch, capsys):
  """The headroom table's tiny profile, student row: its final metrics and results JSON hold
  the run's provenance; `--verify student --seeds 0` reruns it and finds the same accuracy
  and parameters; a changed record is reported, with exit status 1."""
  table = reproduce.load_table(os.path.join(ROOT, 'experiments', 'configs',
                                            'reproduce_headroom_kd.py'))
  run_specs = table.run_specs

  def one_device(config, root):  # the suite's 8 fake devices would split the batches
    specs = run_specs(config, root)
    for spec in specs:
      spec.config.parallel.num_devices = 1
    return specs

  monkeypatch.setattr(table, 'run_specs', one_device)
  monkeypatch.setattr(reproduce.recipes, 'enable_compilation_cache', lambda: None)
  runs, results = tmp_path / 'runs', tmp_path / 'results'

  def command(*args):
    monkeypatch.setattr(sys, 'argv', ['reproduce', '--profile', 'tiny', '--root', str(runs),
                                      '--results', str(results), *args])
    reproduce.command_line('doc', table, default_root=str(tmp_path / 'r'),
                           full_results=str(tmp_path / 'unused'))

  with fashion_mnist_in_process(tmp_path, n_train=200, n_test=20):
    command('--rows', 'student', '--seeds', '0')
    payload = json.loads((results / 'headroom_kd_tiny.json').read_text())
    (run,) = payload['runs']
    made = run['provenance']
    assert made['git_commit'] == environment.git_commit() and made['git_clean'] in (True, False)
    assert made['dataset_sha256'] == data.dataset_sha256('fashion_mnist')
    assert made['packages']['jax'] and made['cpu_isa'] and made['conv_impl'] in ('xla', 'fast')
    assert made['started'] <= made['ended']
    final = json.loads((runs / 'headroom_kd' / 'student' / 'seed0' /
                        'final_metrics.json').read_text())
    assert final['provenance'] == made
    assert 'Every run made at commit' in (results / 'headroom_kd_tiny.md').read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
      command('--verify', 'student', '--seeds', '0')
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert 'headroom_kd/student seed 0: test accuracy recorded' in out
    assert 'DIFFERS' not in out and out.count('(same)') == 2
    payload['runs'][0]['test_accuracy'] += 0.01
    (results / 'headroom_kd_tiny.json').write_text(json.dumps(payload))
    with pytest.raises(SystemExit) as exit_info:
      command('--verify', 'student', '--seeds', '0')
    assert exit_info.value.code == 1 and 'DIFFERS' in capsys.readouterr().out
