"""Exact resume of experiments/train.py: killed (SIGKILL), stopped (SIGTERM), rerun with the
same command, it ends with the uninterrupted run's params_sha256."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fakedata import fashion_mnist_env
from jaxkd import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [f'--config={ROOT}/experiments/configs/smoke.py', '--config.num_steps=120',
        '--config.train_per_class=50', '--config.eval_batch_size=100']


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('resume')
  return fashion_mnist_env(tmp, n_train=600, n_test=100)


def _start(workdir, env):
  return subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'experiments', 'train.py'), *ARGS,
       f'--workdir={workdir}'], env=env, cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def _finish(process):
  out, err = process.communicate(timeout=120)
  assert process.returncode == 0, err[-3000:]
  return out


def _wait_for_checkpoint(process, workdir, after: int) -> int:
  """Polls until a finished checkpoint newer than `after` exists; returns its step."""
  directory = os.path.join(workdir, 'checkpoints')
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline:
    names = os.listdir(directory) if os.path.isdir(directory) else ()
    steps = [int(n) for n in names if n.isdigit() and int(n) > after]
    if steps:
      return max(steps)
    assert process.poll() is None, process.communicate()[1][-3000:]
    time.sleep(0.005)
  raise TimeoutError(f'no checkpoint after step {after} in {directory}')


def _train_steps(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r['step'] for r in map(json.loads, f) if 'loss' in r]


def _sha(workdir):
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    return json.load(f)['params_sha256']


@pytest.mark.slow
def test_killed_and_terminated_runs_resume_exactly(env, tmp_path):
  reference = str(tmp_path / 'reference')
  _finish(_start(reference, env))

  workdir = str(tmp_path / 'run')
  process = _start(workdir, env)
  first = _wait_for_checkpoint(process, workdir, after=0)
  process.send_signal(signal.SIGKILL)
  process.communicate(timeout=60)
  assert process.returncode == -signal.SIGKILL
  killed_at = checkpoint.latest_step(os.path.join(workdir, 'checkpoints'))
  assert killed_at >= first and not os.path.exists(os.path.join(workdir, 'final_metrics.json'))

  process = _start(workdir, env)
  _wait_for_checkpoint(process, workdir, after=killed_at)
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=60)
  assert f'resumed from step {killed_at}' in out
  assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
  stopped_at = checkpoint.latest_step(os.path.join(workdir, 'checkpoints'))
  assert f'SIGTERM at step {stopped_at}: checkpoint saved' in err
  assert killed_at < stopped_at < 120

  out = _finish(_start(workdir, env))
  assert f'resumed from step {stopped_at}' in out
  assert _sha(workdir) == _sha(reference)
  assert _train_steps(workdir) == _train_steps(reference)  # no step logged twice
  assert checkpoint.latest_step(os.path.join(workdir, 'checkpoints')) == 120
