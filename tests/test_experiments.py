"""The experiment CLIs end to end on generated Fashion-MNIST files (no network)."""
import json
import os
import subprocess
import sys

import pytest

from fakedata import fashion_mnist_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, 'experiments', 'configs')


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('cli')
  return fashion_mnist_env(tmp, n_train=256, n_test=64)


def _run(script, env, *args):
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'experiments', script), *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _read(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    return records, json.load(f)


def _train_lenet5_half(env, workdir, *flags) -> str:
  """Trains LeNet-5-Half into `workdir` with train.py and `flags`; returns `workdir`."""
  _run('train.py', env, f'--config={CONFIGS}/fashion_mnist.py:lenet5_half',
       f'--workdir={workdir}', *flags)
  return str(workdir)


@pytest.mark.slow
def test_train_then_distill_cli(env, tmp_path):
  teacher = _train_lenet5_half(env, tmp_path / 'teacher', '--config.num_steps=2',
                               '--config.batch_size=32', '--config.log_every=1')
  records, final = _read(teacher)
  train_records = [r for r in records if 'loss' in r]
  assert [r['step'] for r in train_records] == [1, 2]
  assert all(r['loss'] > 0 for r in train_records)
  assert len(final['params_sha256']) == 64 and int(final['params_sha256'], 16) >= 0
  assert final['test_count'] == 64 and 0 <= final['test_accuracy'] <= 1
  assert final['steps'] == 2

  shas = []  # one distilled student per teacher source: live, float16 cache
  for extra in ([], ['--config.kd.cache=float16']):
    student = str(tmp_path / f'student{len(shas)}')
    _run('distill.py', env, f'--config={CONFIGS}/distill_fashion_mnist.py:mlp_800',
         f'--config.teacher_dir={teacher}', f'--workdir={student}', '--config.num_steps=2',
         '--config.batch_size=32', '--config.log_every=1', *extra)
    records, final = _read(student)
    assert [r['step'] for r in records if 'loss' in r] == [1, 2]
    assert {'kd_loss', 'ce_loss', 'teacher_accuracy', 'agreement'} <= set(records[0])
    assert final['teacher_fingerprints'][0] and final['test_count'] == 64
    shas.append(final['params_sha256'])


@pytest.mark.slow
def test_distill_refuses_teacher_of_another_task(env, tmp_path):
  teacher = _train_lenet5_half(env, tmp_path / 'teacher5', '--config.num_steps=1',
                               '--config.batch_size=16', '--config.classes=(0,1,2,3,4)')
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'distill.py'),
       f'--config={CONFIGS}/distill_fashion_mnist.py', f'--config.teacher_dir={teacher}',
       f'--workdir={tmp_path / "kd"}', '--config.num_steps=1'],
      env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert 'classes' in result.stderr and 'fine-tune the teacher' in result.stderr
