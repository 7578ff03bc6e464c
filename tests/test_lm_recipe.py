"""The language-model recipe end to end on a small generated corpus: a teacher trains, a
student distils from it (live, chunked vocabulary), a resumed run equals an uninterrupted one."""
import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_text import _write_corpus  # noqa: E402

from jaxkd.data import text  # noqa: E402
from jaxkd.recipes import language_model  # noqa: E402


@pytest.fixture
def corpus(tmp_path, monkeypatch):
  _write_corpus(tmp_path / 'source')
  monkeypatch.setenv('JAXKD_PYDOC_DIR', str(tmp_path / 'source'))
  monkeypatch.setenv('JAXKD_DATA_DIR', str(tmp_path / 'data'))


def _config(**changes):
  config = language_model.default_config()
  config.update(tokenizer='byte', seq_len=32, batch_size=8, num_steps=6, warmup_steps=2,
                learning_rate=1e-2, log_every=3, checkpoint_every=3, eval_every=3,
                eval_batch_size=8, model='transformer', model_overrides={'width': 16, 'depth': 1, 'heads': 2})
  config.update(**changes)
  return config


def test_teacher_then_student_then_exact_resume(corpus, tmp_path):
  teacher = language_model.run(_config(model_overrides={'width': 32, 'depth': 2, 'heads': 2}),
                               str(tmp_path / 'teacher'))
  for split in ('valid', 'test'):
    metrics = teacher[split]
    assert metrics['tokens'] > 0 and np.isfinite(metrics['loss'])
    np.testing.assert_allclose(metrics['perplexity'], np.exp(metrics['loss']), rtol=1e-6)
    bytes_per_token = text.stats('pydoc', split, tokenizer='byte')['bytes_per_token']
    assert metrics['bits_per_byte'] == pytest.approx(
        metrics['loss'] / np.log(2) / bytes_per_token, rel=1e-6)
  spec = {'ce': {'weight': 0.5}, 'kd': {'weight': 0.5, 'temperature': 1.0}}
  distil = lambda workdir, **kw: language_model.run(  # noqa: E731
      _config(teacher_dir=str(tmp_path / 'teacher'), terms=spec, vocab_chunk=8, **kw),
      str(tmp_path / workdir))
  student = distil('student')
  assert 0.0 <= student['valid']['agreement'] <= 1.0
  assert student['valid']['teacher_loss'] == pytest.approx(teacher['valid']['loss'], rel=1e-5)
  records = [json.loads(line) for line in open(tmp_path / 'student' / 'metrics.jsonl')]
  assert {'kd_loss', 'ce_loss', 'agreement', 'valid_bits_per_byte'} <= set().union(*records)
  # Stopped at step 3 and resumed: the same parameters as the uninterrupted run.
  distil('resumed', stop_at=3)
  resumed = distil('resumed')
  assert resumed['params_sha256'] == student['params_sha256']


KILLED_RUN = '''
import json, os, signal, sys
import jax
jax.config.update('jax_num_cpu_devices', 8)  # as the tests' own process (conftest.py)
from jaxkd.recipes import language_model
fit = language_model.fit

def killed_fit(**kwargs):
  kill = lambda state, step: step == 5 and os.kill(os.getpid(), signal.SIGKILL)
  return fit(**kwargs, on_step=kill)

language_model.fit = killed_fit
config = language_model.default_config()
config.update(json.loads(sys.argv[1]))
language_model.run(config, sys.argv[2])
'''


# The kill may land in an asynchronous save: its half-written folder is set aside (warned).
@pytest.mark.filterwarnings('ignore::jaxkd.checkpoint.IncompleteCheckpointWarning')
def test_kill_9_then_resume_gives_the_uninterrupted_parameters(corpus, tmp_path):
  import os
  import subprocess
  settings = dict(tokenizer='byte', seq_len=32, batch_size=8, num_steps=8, warmup_steps=2,
                  learning_rate=1e-2, log_every=2, checkpoint_every=2, eval_every=4,
                  eval_batch_size=8, model='transformer',
                  model_overrides={'width': 16, 'depth': 1, 'heads': 2})
  config = language_model.default_config()
  config.update(settings)
  whole = language_model.run(config, str(tmp_path / 'whole'))
  env = {**os.environ, 'PYTHONPATH': str(pathlib.Path(__file__).parents[1])}
  killed = subprocess.run([sys.executable, '-c', KILLED_RUN, json.dumps(settings),
                           str(tmp_path / 'killed')], env=env, capture_output=True, text=True)
  assert killed.returncode == -9, killed.stderr[-2000:]
  assert not (tmp_path / 'killed' / 'final_metrics.json').exists()
  resumed = language_model.run(config, str(tmp_path / 'killed'))
  assert resumed['params_sha256'] == whole['params_sha256']


PROCESS_RUN = '''
import json, sys
from jaxkd import distributed
address, count, index = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if count > 1:
  distributed.initialize(address, count, index)
from jaxkd.recipes import language_model
config = language_model.default_config()
config.update(json.loads(sys.argv[1]))
language_model.run(config, sys.argv[2])
'''


@pytest.mark.slow
def test_two_processes_match_one(corpus, tmp_path):
  import os
  import socket
  import subprocess
  settings = dict(tokenizer='byte', seq_len=32, batch_size=8, num_steps=6, warmup_steps=2,
                  learning_rate=1e-2, log_every=3, checkpoint_every=3, eval_every=3,
                  eval_batch_size=8, model='transformer',
                  model_overrides={'width': 16, 'depth': 1, 'heads': 2})
  text.prepare('pydoc', tokenizer='byte')  # once, before the processes read it
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]

  def launch(workdir, processes, devices):
    env = {**os.environ, 'PYTHONPATH': str(pathlib.Path(__file__).parents[1]),
           'JAX_NUM_CPU_DEVICES': str(devices)}
    procs = [subprocess.Popen([sys.executable, '-c', PROCESS_RUN, json.dumps(settings),
                               str(tmp_path / workdir), f'127.0.0.1:{port}', str(processes),
                               str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(processes)]
    for p in procs:
      _, err = p.communicate(timeout=300)
      assert p.returncode == 0, err[-3000:]
    with open(tmp_path / workdir / 'final_metrics.json') as f:
      return json.load(f)

  one, two = launch('one', 1, 4), launch('two', 2, 2)
  for split in ('valid', 'test'):
    for key in ('loss', 'accuracy', 'tokens'):
      assert two[split][key] == pytest.approx(one[split][key], rel=1e-4), (split, key)


@pytest.mark.slow
def test_student_learns_from_a_stored_teacher_cache(corpus, tmp_path):
  from jaxkd import cache, cache_lm
  language_model.run(_config(model_overrides={'width': 32, 'depth': 2, 'heads': 2},
                             num_steps=4, checkpoint_every=0), str(tmp_path / 'teacher'))
  sampled = {'kind': 'sampled', 'k': 4, 'dir': str(tmp_path / 'sampled_cache')}
  distil = lambda workdir, teacher, teacher_cache, terms, **kw: language_model.run(  # noqa: E731
      _config(teacher_dir=str(tmp_path / teacher), teacher_cache=teacher_cache, terms=terms,
              checkpoint_every=0, **kw), str(tmp_path / workdir))
  terms = {'sampled_kd': {'weight': 1.0, 'temperature': 1.0}}
  result = distil('sampled', 'teacher', sampled, terms, num_steps=12, log_every=1,
                  vocab_chunk=8)
  records = [json.loads(line) for line in open(tmp_path / 'sampled' / 'metrics.jsonl')]
  losses = [r['sampled_kd_loss'] for r in records if 'sampled_kd_loss' in r]
  assert len(losses) == 12 and losses[-1] < losses[0], losses
  assert 0.0 <= result['valid']['agreement'] <= 1.0  # evaluated against the live teacher
  found = cache_lm.read_provenance(sampled['dir'])
  assert (found['kind'], found['k'], found['bytes_per_token']) == ('sampled', 4, 8)
  # Another teacher (this student's own final model) is refused by the cache, by name.
  with pytest.raises(cache.CacheMismatchError, match='teacher_fingerprint: cache'):
    distil('refused', 'sampled', sampled, terms)
  # A top-k + rest-of-mass cache teaches kd at its temperature.
  topk = {'kind': 'topk', 'k': 4, 'dir': str(tmp_path / 'topk_cache')}
  result = distil('topk', 'teacher', topk, {'kd': {'weight': 1.0, 'temperature': 2.0}},
                  num_steps=3)
  assert np.isfinite(result['valid']['loss'])
  assert cache_lm.read_provenance(topk['dir'])['temperature'] == 2.0
  with pytest.raises(ValueError, match="set config.teacher_cache"):
    distil('no_cache', 'teacher', {}, terms)


def test_teacher_cache_settings_are_checked_before_any_run():
  from jaxkd import losses
  sampled = losses.build_objective({'sampled_kd': {'weight': 1.0, 'temperature': 2.0}})
  kd = losses.build_objective({'kd': {'weight': 1.0, 'temperature': 3.0}})
  check = lambda objective, **kw: language_model._cache_settings(  # noqa: E731
      _config(teacher_dir='/t', **kw), objective)
  settings = check(sampled, teacher_cache={'kind': 'sampled', 'k': 8, 'dir': '/c'})
  assert (settings['temperature'], settings['value_dtype']) == (2.0, 'float32')
  assert check(kd, teacher_cache={'kind': 'topk', 'k': 8, 'dir': '/c'})['temperature'] == 3.0
  assert check(kd) == {}  # a live teacher
  refused = {
      'set config.teacher_cache': dict(),
      r"unknown \['size'\], missing \['k'\]": dict(teacher_cache={'kind': 'sampled',
                                                                   'dir': '/c', 'size': 2}),
      "kind='full'": dict(teacher_cache={'kind': 'full', 'k': 8, 'dir': '/c'}),
      'unset vocab_chunk': dict(teacher_cache={'kind': 'topk', 'k': 8, 'dir': '/c'},
                                vocab_chunk=8),
  }
  for message, kwargs in refused.items():
    with pytest.raises(ValueError, match=message):
      check(kd if 'vocab_chunk' in kwargs else sampled, **kwargs)
  with pytest.raises(ValueError, match='one sampled_kd term and no live-teacher term'):
    check(kd, teacher_cache={'kind': 'sampled', 'k': 8, 'dir': '/c'})
  with pytest.raises(ValueError, match='needs config.teacher_dir'):
    language_model._cache_settings(
        _config(teacher_cache={'kind': 'sampled', 'k': 8, 'dir': '/c'}), sampled)
