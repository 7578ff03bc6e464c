"""The reproduce scripts run end to end in their tiny profile (generated data, 1 seed)."""
import json
import os
import subprocess
import sys

from fakedata import fashion_mnist_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fashion_mnist_kd_tiny_profile(tmp_path):
  env = fashion_mnist_env(tmp_path, n_train=320, n_test=64)
  command = [sys.executable, os.path.join(ROOT, 'experiments', 'reproduce_fashion_mnist_kd.py'),
             '--profile', 'tiny', '--root', str(tmp_path / 'runs'),
             '--results', str(tmp_path / 'results')]
  result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / 'results' / 'fashion_mnist_kd_tiny.json') as f:
    payload = json.load(f)
  rows = {(run['table'], run['row']) for run in payload['runs']}
  assert {('fashion_mnist_kd', r) for r in
          ('teacher', 'student', 'kd', 'mlp_teacher', 'mlp_student', 'mlp_kd')} <= rows
  assert {run['temperature'] for run in payload['runs']
          if run['table'] == 'temperature_sweep'} == {1.0, 2.0, 8.0, 20.0}
  for run in payload['runs']:
    for key in ('table', 'row', 'seed', 'test_accuracy', 'best_val_test_accuracy', 'epochs',
                'wall_seconds'):
      assert key in run, key
    assert 0.0 <= run['test_accuracy'] <= 1.0 and run['epochs'] == 1.0
    assert run['best_val_test_accuracy'] == run['test_accuracy']  # one epoch: the same model
  assert payload['command'] and payload['git_commit'] and payload['machine']['cores']
  assert (tmp_path / 'results' / 'fashion_mnist_kd_tiny.md').read_text().count('|') > 20
  # Re-running skips every finished run.
  again = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and again.stdout.count('done before') == len(payload['runs'])
