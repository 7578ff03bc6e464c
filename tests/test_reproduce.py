"""The reproduce scripts run end to end in their tiny profile (generated data, 1 seed)."""
import json
import os
import subprocess
import sys

import pytest

from fakedata import fashion_mnist_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_tiny(tmp_path, script: str, name: str, profile: str = 'tiny'):
  """Runs experiments/`script` in its tiny profile (or `profile`) on generated data; returns
  the results JSON `name`_`profile`.json."""
  env = fashion_mnist_env(tmp_path, n_train=320, n_test=64)
  command = [sys.executable, os.path.join(ROOT, 'experiments', script), '--profile', profile,
             '--root', str(tmp_path / 'runs'), '--results', str(tmp_path / 'results')]
  result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / 'results' / f'{name}_{profile}.json') as f:
    return json.load(f)


def _rerun_skips_everything(tmp_path, module: str, payload, capsys, profile='tiny') -> None:
  """Running the table's specs again (the code path of the script's rerun, in this process:
  no second interpreter start) reads every finished run and trains nothing."""
  from jaxkd.tables import reproduce, sweep
  table = reproduce.load_table(os.path.join(ROOT, 'experiments', 'configs', f'{module}.py'))
  specs = table.run_specs(table.get_config(profile), str(tmp_path / 'runs'))
  capsys.readouterr()
  records = sweep.execute(specs, root=str(tmp_path / 'runs'))
  assert capsys.readouterr().out.count('done before') == len(payload['runs']) == len(records)
  assert records == payload['runs']


@pytest.mark.slow
def test_fashion_mnist_kd_tiny_profile(tmp_path, capsys):
  payload = _run_tiny(tmp_path, 'reproduce_fashion_mnist_kd.py', 'fashion_mnist_kd')
  rows = {(run['table'], run['row']) for run in payload['runs']}
  assert {('fashion_mnist_kd', r) for r in
          ('teacher', 'student', 'kd', 'mlp_teacher', 'mlp_student', 'mlp_kd')} <= rows
  # the kd row (T = 1) is the sweep's first point; the sweep runs the other four
  assert {run['temperature'] for run in payload['runs']
          if run['table'] == 'temperature_sweep'} == {2.0, 4.0, 8.0, 20.0}
  assert [row['temperature'] for row in payload['temperature_sweep']] == [1, 2, 4, 8, 20]
  assert all('best_val_accuracy_mean' in row for row in payload['temperature_sweep'])
  for run in payload['runs']:
    for key in ('table', 'row', 'seed', 'test_accuracy', 'best_val_test_accuracy', 'epochs',
                'wall_seconds'):
      assert key in run, key
    assert 0.0 <= run['test_accuracy'] <= 1.0 and run['epochs'] == 1.0
    assert run['best_val_test_accuracy'] == run['test_accuracy']  # one epoch: the same model
  assert payload['command'] and payload['git_commit'] and payload['machine']['cores']
  assert (tmp_path / 'results' / 'fashion_mnist_kd_tiny.md').read_text().count('|') > 20
  _rerun_skips_everything(tmp_path, 'reproduce_fashion_mnist_kd', payload, capsys)


@pytest.mark.slow
def test_transfer_tiny_profile(tmp_path, capsys):
  payload = _run_tiny(tmp_path, 'reproduce_transfer.py', 'transfer')
  rows = {(run['table'], run['row']) for run in payload['runs']}
  assert rows == {('transfer_source', 'source')} | {
      ('transfer_10_per_class', r)
      for r in ('scratch', 'lp', 'ft', 'lp_ft', 'frozen_half', 'ft_convs', 'student', 'kd')}
  runs = {run['row']: run for run in payload['runs']}
  for run in payload['runs']:
    for key in ('table', 'row', 'seed', 'test_accuracy', 'best_val_test_accuracy', 'epochs',
                'wall_seconds'):
      assert key in run, key
    assert 0.0 <= run['test_accuracy'] <= 1.0
  # 10 labels per class of 5 classes in batches of 25: 4 steps are 2 epochs.
  assert runs['ft']['epochs'] == 2.0 and runs['source']['epochs'] > 0
  finals = {row: json.loads((tmp_path / 'runs' / 'transfer_10_per_class' / row / 'seed0' /
                             'final_metrics.json').read_text())
            for row in ('lp', 'ft', 'frozen_half', 'scratch', 'lp_ft')}
  # The head of LeNet-5 (84 -> 5) is all a linear probe trains; frozen_half trains the rest
  # after conv1 (6 x 5 x 5 + 6) and conv2 (16 x 6 x 5 x 5 + 16).
  assert finals['lp']['trainable_params'] == 84 * 5 + 5
  assert finals['ft']['trainable_params'] - finals['frozen_half']['trainable_params'] == (
      6 * 25 + 6 + 16 * 6 * 25 + 16)
  assert finals['ft']['init_dir'].endswith(os.path.join('transfer_source', 'source', 'seed0'))
  assert 'init_dir' not in finals['scratch']
  assert finals['lp_ft']['lp_steps'] == 2
  assert {t['treatment'] for t in payload['tests']} == {'ft', 'lp_ft', 'ft_convs', 'kd'}
  assert (tmp_path / 'results' / 'transfer_tiny.md').read_text().count('|') > 30
  _rerun_skips_everything(tmp_path, 'reproduce_transfer', payload, capsys)


@pytest.mark.slow
def test_cifar100_tiny_profile(tmp_path):
  """The CIFAR-100 table's machinery on a generated archive (12 training images): teacher,
  student, KD and DKD with the papers' recipe, the published figures beside ours."""
  from test_data import make_cifar
  make_cifar(tmp_path / 'raw', hundred=True)
  env = dict(fashion_mnist_env(tmp_path, n_train=16, n_test=8),
             JAXKD_CIFAR100_DIR=str(tmp_path / 'raw'))
  command = [sys.executable, os.path.join(ROOT, 'experiments', 'reproduce_cifar100.py'),
             '--profile', 'tiny', '--root', str(tmp_path / 'runs'),
             '--results', str(tmp_path / 'results')]
  result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  payload = json.loads((tmp_path / 'results' / 'cifar100_tiny.json').read_text())
  assert [(r['table'], r['row']) for r in payload['runs']] == [
      ('resnet56_resnet20', row) for row in ('teacher', 'student', 'kd', 'dkd')]
  config = json.loads((tmp_path / 'runs' / 'resnet56_resnet20' / 'dkd' / 'seed0' /
                       'run_config.json').read_text())
  assert config['dataset'] == 'cifar100' and config['optimizer']['name'] == 'sgd'
  assert config['optimizer']['boundaries'] == [0.625, 0.75, 0.875]
  assert config['terms']['dkd']['warmup_epochs'] == 20.0
  table = (tmp_path / 'results' / 'cifar100_tiny.md').read_text()
  assert '| resnet56_resnet20 | dkd | 1 |' in table and '| 71.97 |' in table


@pytest.mark.slow
def test_methods_smoke_profile(tmp_path, capsys):
  """The method table's machinery: its teacher, the student, plain KD, a feature method, a
  memory bank and a scheme, 2 steps each; costs, step times and provenance in the JSON."""
  payload = _run_tiny(tmp_path, 'reproduce_methods.py', 'methods', 'smoke')
  assert [r['row'] for r in payload['runs']] == ['teacher', 'student', 'kd', 'fitnet', 'crd',
                                                 'dml']
  assert all(r['provenance']['git_commit'] for r in payload['runs'])
  assert payload['costs']['crd']['state_elements'] > 0
  table = (tmp_path / 'results' / 'methods_smoke.md').read_text()
  assert '| crd | crd (paper defaults) | 1 |' in table and 'Every run made at commit' in table
  _rerun_skips_everything(tmp_path, 'reproduce_methods', payload, capsys, 'smoke')


@pytest.mark.slow
def test_mlp_fair_and_strong_teacher_smoke_profiles(tmp_path):
  """The fair MLP control (2 seeds, 2 steps: the primary test computed) and the ConvNet-BN
  source of soft targets (its teacher and one point of its selection grid)."""
  fair = _run_tiny(tmp_path / 'fair', 'reproduce_fashion_mnist_kd.py', 'fashion_mnist_kd',
                   'mlp_fair_smoke')
  assert {(r['row'], r['seed']) for r in fair['runs']} == {
      (row, seed) for row in ('mlp_teacher', 'mlp_student_30ep', 'mlp_kd') for seed in (5, 6)}
  assert [t['primary'] for t in fair['mlp_fair']] == [True, False]
  strong = _run_tiny(tmp_path / 'strong', 'reproduce_soft_targets.py', 'soft_targets',
                     'convnet_smoke')
  assert [(r['table'], r['row']) for r in strong['runs']] == [
      ('soft_targets', 'hard_full'), ('soft_targets', 'convnet_full'),
      ('soft_targets_select_convnet', 'hard'), ('soft_targets_select_convnet', 'T=1,hard=0')]
