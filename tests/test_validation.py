"""Bad configs are refused before any data is read or folder made, with one message naming the
setting; the scripts print it as one line and exit with status 2."""
import os
import subprocess
import sys

import pytest

import ml_collections

from jaxkd import recipes
from jaxkd.recipes import defaults
from jaxkd.recipes.validate import ConfigError, check_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, 'experiments', 'configs')

# (config factory, setting, bad value, words the message must hold)
BAD = [
    ('train', 'batch_size', 0, 'batch_size=0'),
    ('train', 'batch_size', -64, 'batch_size=-64'),
    ('train', 'eval_batch_size', 0, 'eval_batch_size=0'),
    ('train', 'seed', -1, 'seed=-1'),
    ('train', 'num_epochs', -1, 'num_epochs=-1'),
    ('train', 'num_steps', -5, 'num_steps=-5'),
    ('train', 'log_every', 0, 'log_every=0'),
    ('train', 'eval_every', 0, 'eval_every=0'),
    ('train', 'checkpoint_every', -1, 'checkpoint_every=-1'),
    ('train', 'keep_last', 0, 'keep_last=0'),
    ('train', 'keep_best', -1, 'keep_best=-1'),
    ('train', 'validation_size', -10, 'validation_size=-10'),
    ('train', 'train_per_class', -1, 'train_per_class=-1'),
    ('train', 'label_smoothing', 1.0, 'label_smoothing=1.0'),
    ('train', 'label_smoothing', -0.1, 'label_smoothing=-0.1'),
    ('train', 'dataset', 'mnist', "dataset='mnist'"),
    ('train', 'model', 'resnet21', "model='resnet21'"),
    ('train', 'dtype', 'float16', "dtype='float16'"),
    ('train', 'classes', (3,), 'classes=(3,)'),
    ('train', 'classes', (-1, 2), 'classes=(-1, 2)'),
    ('train', 'classes', (1, 1, 2), 'classes=(1, 1, 2)'),
    ('train', 'classes', (0, 10), 'classes=(0, 10)'),
    ('train', 'best_mode', 'largest', "best_mode='largest'"),
    ('train', 'optimizer.name', 'lion', "optimizer.name='lion'"),
    ('train', 'optimizer.schedule', 'linear', "optimizer.schedule='linear'"),
    ('train', 'optimizer.learning_rate', 0.0, 'optimizer.learning_rate=0.0'),
    ('train', 'optimizer.learning_rate', -1e-3, 'optimizer.learning_rate=-0.001'),
    ('train', 'optimizer.weight_decay', -1.0, 'optimizer.weight_decay=-1.0'),
    ('train', 'optimizer.warmup_steps', -1, 'optimizer.warmup_steps=-1'),
    ('train', 'optimizer.momentum', 1.5, 'optimizer.momentum=1.5'),
    ('train', 'optimizer.clip_norm', -1.0, 'optimizer.clip_norm=-1.0'),
    ('train', 'optimizer.decay_factor', -0.1, 'optimizer.decay_factor=-0.1'),
    ('train', 'optimizer.boundaries', (0.75, 0.5), 'optimizer.boundaries=(0.75, 0.5)'),
    ('train', 'optimizer.boundaries', (0.5, 1.5), 'optimizer.boundaries=(0.5, 1.5)'),
    ('train', 'augment.crop_padding', -2, 'augment.crop_padding=-2'),
    ('train', 'parallel.mode', 'dp', "parallel.mode='dp'"),
    ('train', 'parallel.num_devices', -1, 'parallel.num_devices=-1'),
    ('distill', 'teacher_dir', '/nonexistent/teacher', "'/nonexistent/teacher' is not a folder"),
    ('distill', 'student_init_dir', '/nonexistent/src', "'/nonexistent/src' is not a folder"),
    ('distill', 'kd.cache', 'int8', "kd.cache='int8'"),
    ('distill', 'kd.cache_topk', -3, 'kd.cache_topk=-3'),
    ('distill', 'kd.multi_teacher', 'vote', "kd.multi_teacher='vote'"),
    ('distill', 'kd.temperature', 0.0, 'kd.temperature=0.0'),
    ('distill', 'kd.temperature', -4.0, 'kd.temperature=-4.0'),
    ('distill', 'kd.soft_weight', -0.5, 'kd.soft_weight=-0.5'),
    ('distill', 'kd.hard_weight', float('nan'), 'kd.hard_weight=nan'),
    ('mutual', 'cohort', 'lenet5_half,lenet9', "'lenet9' is not a model"),
    ('chain', 'chain.models', 'lenet5,resnet7', "'resnet7' is not a model"),
    ('finetune', 'finetune.method', 'probe', "finetune.method='probe'"),
    ('ema', 'ema.decay', 1.0, 'ema.decay=1.0: must be a number in [0.0, 1.0)'),
    ('finetune', 'finetune.lp_epochs', -1, 'finetune.lp_epochs=-1'),
    ('finetune', 'finetune.lp_steps', -2, 'finetune.lp_steps=-2'),
    ('finetune', 'finetune.unfreeze_every', -1, 'finetune.unfreeze_every=-1'),
    ('finetune', 'finetune.layer_decay', 1.5, 'finetune.layer_decay=1.5'),
    ('finetune', 'finetune.layer_decay', 0.0, 'finetune.layer_decay=0.0'),
    ('terms', 'kd.temperature', 20.0, 'kd.temperature=20.0 is not read: config.terms defines'),
    ('terms', 'kd.soft_weight', 0.9, 'kd.soft_weight=0.9 is not read'),
]


def _with(config, **settings):
  config.update(settings)
  return config


FACTORIES = {'train': lambda: defaults.supervised('lenet5_half'),
             'distill': defaults.distillation,
             'mutual': lambda: _with(defaults.distillation(), cohort='lenet5_half,lenet5_half'),
             'chain': lambda: _with(defaults.distillation(), chain=ml_collections.ConfigDict(
                 dict(models='lenet5,lenet5_mid,lenet5_half', ensemble=False))),
             'finetune': defaults.finetune, 'ema': defaults.ema_teacher,
             'terms': lambda: _with(defaults.distillation(), terms=ml_collections.ConfigDict(
                 {'ce': {'weight': 1.0}, 'kd': {'weight': 1.0, 'temperature': 4.0}}))}
RECIPE = {'train': 'train', 'distill': 'distill', 'mutual': 'mutual', 'chain': 'chain',
          'finetune': 'finetune', 'ema': 'ema_teacher', 'terms': 'distill'}


def _set(config, dotted, value):
  *parents, leaf = dotted.split('.')
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


@pytest.mark.parametrize('kind, setting, value, words', BAD,
                         ids=[f'{k}-{s}={v!r}' for k, s, v, _ in BAD])
def test_bad_setting_is_refused_before_any_work(kind, setting, value, words, tmp_path):
  config = FACTORIES[kind]()
  config.data_dir = str(tmp_path / 'data')  # nothing may be read or written there
  if kind in ('distill', 'terms') and setting != 'teacher_dir':
    config.teacher_dir = str(tmp_path)  # a folder that exists: the setting under test fails
  _set(config, setting, value)
  with pytest.raises(ConfigError) as error:
    recipes.RECIPES[RECIPE[kind]](config, str(tmp_path / 'run'))
  assert words in str(error.value)
  assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_both_lengths_zero_and_topk_without_cache_are_refused():
  config = defaults.supervised('lenet5_half')
  config.num_epochs, config.num_steps = 0, 0
  with pytest.raises(ConfigError, match='num_epochs=0 and num_steps=0'):
    check_config(config)
  config = defaults.distillation()
  config.kd.cache_topk = 5
  with pytest.raises(ConfigError, match=r"kd.cache_topk=5: needs kd.cache"):
    check_config(config)
  check_config(defaults.distillation())  # the defaults pass


def test_script_prints_one_line_and_exits_2(tmp_path):
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'train.py'),
       f'--config={CONFIGS}/fashion_mnist.py:lenet5_half', f'--workdir={tmp_path / "run"}',
       '--config.batch_size=-4'],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      'error: batch_size=-4: must be an integer >= 1.')
  assert 'Traceback' not in result.stderr and not os.path.exists(tmp_path / 'run')


def test_script_refuses_an_unknown_layers_setting_first(tmp_path):
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'train.py'),
       f'--config={CONFIGS}/fashion_mnist.py:lenet5_half', f'--workdir={tmp_path / "run"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS='cpu', JAXKD_CPU_CONV_KERNELS='eigen'))
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: Unknown CPU convolution kernels 'eigen'; choose one of ['xla', 'ynnpack'] "
      "(JAXKD_CPU_CONV_KERNELS).")
  assert 'Traceback' not in result.stderr and not os.path.exists(tmp_path / 'run')
