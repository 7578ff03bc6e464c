"""experiments/distill.py as 2 processes x 2 CPU devices (jax.distributed over 127.0.0.1, gloo
collectives) against 1 process x 4 devices on the same global batch; and a 2-process run
killed mid-way (one process SIGKILLed) and restarted resumes exactly."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from fakedata import fashion_mnist_env, fashion_mnist_in_process
from jaxkd import checkpoint, recipes
from jaxkd.recipes import defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, 'experiments', 'configs')
DISTILL = os.path.join(ROOT, 'experiments', 'distill.py')


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """Generated data and a small MLP teacher trained in this process."""
  tmp = tmp_path_factory.mktemp('multiprocess')
  env = fashion_mnist_env(tmp, n_train=400, n_test=100)  # for the subprocesses
  with fashion_mnist_in_process(tmp, n_train=400, n_test=100):
    config = defaults.supervised('mlp')
    config.model_overrides.hidden = (128,)
    config.update(dict(classes=tuple(range(10)), train_per_class=40, batch_size=32,
                       num_steps=30, log_every=20, checkpoint_every=20))
    config.parallel.num_devices = 1
    recipes.train(config, str(tmp / 'teacher'))
  return tmp, env


def _port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(setup, workdir, *, processes: int, devices: int, port: int | None = None):
  tmp, env = setup
  args = [sys.executable, DISTILL, f'--config={CONFIGS}/smoke_distill.py',
          f'--config.teacher_dir={tmp / "teacher"}', '--config.train_per_class=40',
          '--config.num_steps=60', '--config.checkpoint_every=20', '--config.log_every=20',
          '--config.eval_batch_size=100', f'--workdir={workdir}']
  env = dict(env, JAX_NUM_CPU_DEVICES=str(devices))
  if processes == 1:
    return [subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)]
  port = port or _port()
  return [subprocess.Popen(
      args + [f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={processes}',
              f'--process_id={i}'], env=env, cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(processes)]


def _wait(procs, timeout=240):
  outs = [p.communicate(timeout=timeout) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs


def _final(workdir):
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    return json.load(f)


def _params(workdir):
  variables, _ = checkpoint.load_variables(str(workdir))
  return variables['params']


@pytest.fixture(scope='module')
def two_runs(setup):
  tmp, _ = setup
  one, two = tmp / 'one_process', tmp / 'two_processes'
  _wait(_launch(setup, one, processes=1, devices=4))
  outs = _wait(_launch(setup, two, processes=2, devices=2))
  return one, two, outs


@pytest.mark.slow
def test_two_processes_match_one(two_runs):
  one, two, outs = two_runs
  a, b = _final(one), _final(two)
  assert a['machine']['device_count'] == b['machine']['device_count'] == 4
  for key in ('test_accuracy', 'test_loss'):
    assert b[key] == pytest.approx(a[key], rel=1e-3), key
  leaves_a, leaves_b = (dict(_flat(_params(w))) for w in (one, two))
  for path, leaf in leaves_a.items():  # all-reduce order may differ across processes
    np.testing.assert_allclose(leaves_b[path], leaf, rtol=1e-4, atol=1e-6, err_msg=path)
  # Only process 0 writes: each logged step once; only it prints the result line.
  with open(os.path.join(two, 'metrics.jsonl')) as f:
    steps = [r['step'] for r in map(json.loads, f) if 'loss' in r]
  assert steps == sorted(set(steps)) and steps[-1] == 60
  assert 'test accuracy' in outs[0][0] and 'test accuracy' not in outs[1][0]


def _flat(tree, prefix=''):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flat(value, f'{prefix}{key}/')
    else:
      yield f'{prefix}{key}', np.asarray(value)


@pytest.mark.slow
def test_killed_process_resumes_exactly(setup, two_runs):
  tmp, _ = setup
  _, two, _ = two_runs
  workdir = tmp / 'killed'
  port = _port()
  procs = _launch(setup, workdir, processes=2, devices=2, port=port)
  folder = workdir / 'checkpoints'
  deadline = time.monotonic() + 240
  while not any(n.isdigit() for n in (os.listdir(folder) if folder.is_dir() else ())):
    if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
      for p in procs:
        p.kill()
      errors = [p.communicate()[1][-2000:] for p in procs]
      raise AssertionError(f'the run ended before its first checkpoint: {errors}')
    time.sleep(0.005)
  for p in procs:  # frozen at once, then killed: mid-run, as a node failure would
    p.send_signal(signal.SIGSTOP)
  for p in procs:
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
  assert 0 < checkpoint.latest_step(str(folder)) < 60
  outs = _wait(_launch(setup, workdir, processes=2, devices=2, port=_port()))
  assert 'resumed from step' in outs[0][0]
  assert _final(workdir)['params_sha256'] == _final(two)['params_sha256']
