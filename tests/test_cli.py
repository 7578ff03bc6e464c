"""The experiment command line (`jaxkd.cli`): a bad flag, config key, config file or config
name is refused with one `error: ...` line naming it and exit status 2, before any work."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, 'experiments', 'configs')

# (script, flags, words the one line must hold)
BAD_FLAGS = [
    ('train', ['--config=CONFIGS/smoke.py', '--config.num_epoch=3'],
     "unknown setting 'num_epoch'; Did you mean \"num_epochs\""),
    ('train', ['--config=CONFIGS/smoke.py', '--config.optimizer.boundaries=3'],
     "unknown setting 'boundaries'"),
    ('train', ['--config=CONFIGS/smoke.py', '--config.num_epochs=abc'],
     '--config.num_epochs=abc: invalid literal'),
    ('train', ['--config=CONFIGS/no_such_config.py'],
     "No such file or directory: 'CONFIGS/no_such_config.py'"),
    ('train', ['--config=CONFIGS/smoke.py', '--bogus=1'], "Unknown command line flag 'bogus'"),
    ('distill', ['--config=CONFIGS/kd_methods.py:bogus'], "Unknown method(s) ['bogus']"),
    ('distill', ['--config=CONFIGS/kd_methods.py:kd', '--config.terms.kd.temprature=2'],
     "unknown setting 'temprature'; Did you mean \"temperature\""),
    ('distill', ['--config=CONFIGS/kd_methods.py:kd', '--config.terms.bogus.weight=1'],
     "unknown setting 'bogus'"),
    ('train', ['--config=CONFIGS/smoke.py', '--num_processes=-1', '--process_id=0',
               '--coordinator_address=127.0.0.1:1'], 'num_processes=-1'),
]


@pytest.mark.parametrize('script,flags,words', BAD_FLAGS)
def test_bad_flag_is_one_line_and_status_2(script, flags, words, tmp_path):
  workdir = tmp_path / 'run'
  flags = [f.replace('CONFIGS', CONFIGS) for f in flags]
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', f'{script}.py'), *flags,
       f'--workdir={workdir}'], capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr[-2000:]
  assert words.replace('CONFIGS', CONFIGS) in lines[0]
  assert not workdir.exists()
