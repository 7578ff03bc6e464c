"""Every config value checked before any data is read, folder made or program compiled: one
`ConfigError` naming the setting, the value and what is valid."""
from __future__ import annotations

import numbers
import os

from jaxkd import cache, data, models, optim, transfer
from jaxkd.losses import MULTI_TEACHER
from jaxkd.parallel import MODES

class ConfigError(ValueError):
  """A config setting that cannot run; the message names it, its value and what is valid."""


def _get(config, dotted: str):
  node = config
  for part in dotted.split('.'):
    if node is None or not hasattr(node, 'get'):
      return None
    node = node.get(part)
  return node


def _int(config, name: str, *, minimum: int, hint: str = '') -> None:
  value = _get(config, name)
  if value is None:
    return
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ConfigError(f'{name}={value!r}: must be an integer >= {minimum}{hint}.')


def _number(config, name: str, *, low: float, high: float | None = None,
            low_open: bool = False, high_open: bool = True) -> None:
  value = _get(config, name)
  if value is None:
    return
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value
  if ok:
    ok = (value > low if low_open else value >= low) and (
        high is None or (value < high if high_open else value <= high))
  if not ok:
    left = '(' if low_open else '['
    right = 'inf)' if high is None else (f'{high})' if high_open else f'{high}]')
    raise ConfigError(f'{name}={value!r}: must be a number in {left}{low}, {right}.')


def _choice(config, name: str, valid) -> None:
  value = _get(config, name)
  if value is not None and value not in valid:
    raise ConfigError(f'{name}={value!r}: valid values are {sorted(valid)}.')


def _folders(config, name: str) -> None:
  """Comma-separated workdirs that must exist (a teacher, a source model)."""
  value = _get(config, name) or ''
  for folder in [d for d in str(value).split(',') if d]:
    if not os.path.isdir(folder):
      raise ConfigError(f'{name}={value!r}: {folder!r} is not a folder; give the WORKDIR of a '
                        'finished run (experiments/train.py or distill.py).')


# The `kd` shorthand's objective settings: read only when `config.terms` is empty.
KD_SHORTHAND = ('hard_weight', 'soft_weight', 'temperature', 'teacher_weights', 'multi_teacher')


def _kd_shorthand_unused(config) -> None:
  """Refuses a `kd.<objective setting>` changed from its default beside `config.terms`,
  which then define the objective alone (the change would be ignored)."""
  if not _get(config, 'terms'):
    return
  from jaxkd.recipes import defaults  # pylint: disable=g-import-not-at-top
  default = defaults.distillation().kd
  for key in KD_SHORTHAND:
    value = _get(config, f'kd.{key}')
    if value is not None and _plain(value) != _plain(default[key]):
      raise ConfigError(
          f'kd.{key}={_plain(value)!r} is not read: config.terms defines the objective. Set it '
          f'on a term instead, e.g. --config.terms.kd.{key}=..., or drop config.terms.')


def _plain(value):
  return list(value) if isinstance(value, (list, tuple)) else value


def check_config(config) -> None:
  """Raises `ConfigError` for the first setting of `config` that cannot run.

  Checked: dataset, model (and a cohort's and a chain's models), dtype, parallel mode,
  optimizer and schedule names; batch, step, epoch, logging and checkpoint counts; the
  learning rate, label smoothing and validation split; classes (distinct, in range, at least
  two); teacher and initialization folders; teacher-cache options; the fine-tuning method;
  the EMA teacher's decay and ramp-up.
  """
  dataset = _get(config, 'dataset')
  if dataset not in data.DATASETS:
    raise ConfigError(f'dataset={dataset!r}: valid values are {sorted(data.DATASETS)}.')
  _choice(config, 'model', models.MODELS)
  for list_setting in ('cohort', 'chain.models'):
    for name in [n.strip() for n in str(_get(config, list_setting) or '').split(',') if n.strip()]:
      if name not in models.MODELS:
        raise ConfigError(f'{list_setting}={_get(config, list_setting)!r}: {name!r} is not a '
                          f'model; valid: {sorted(models.MODELS)}.')
  _choice(config, 'dtype', models.DTYPES)
  _choice(config, 'parallel.mode', MODES)
  _choice(config, 'optimizer.name', optim.OPTIMIZERS)
  _choice(config, 'optimizer.schedule', optim.SCHEDULES)
  _int(config, 'batch_size', minimum=1)
  _int(config, 'eval_batch_size', minimum=1)
  _int(config, 'seed', minimum=0)
  _int(config, 'num_epochs', minimum=0)
  _int(config, 'num_steps', minimum=0, hint=' (0: num_epochs decides)')
  if not _get(config, 'num_steps') and not _get(config, 'num_epochs'):
    raise ConfigError('num_epochs=0 and num_steps=0: set one of them > 0.')
  _int(config, 'log_every', minimum=1)
  _int(config, 'eval_every', minimum=1)
  _int(config, 'checkpoint_every', minimum=0, hint=' (0: no checkpoints)')
  _int(config, 'keep_last', minimum=1)
  _int(config, 'keep_best', minimum=0)
  _int(config, 'validation_size', minimum=0)
  _int(config, 'train_per_class', minimum=0, hint=' (0: every image)')
  _int(config, 'optimizer.warmup_steps', minimum=0)
  _int(config, 'augment.crop_padding', minimum=0)
  _int(config, 'parallel.num_devices', minimum=0, hint=' (0: every device)')
  _number(config, 'optimizer.learning_rate', low=0.0, low_open=True)
  _number(config, 'optimizer.weight_decay', low=0.0)
  _number(config, 'optimizer.momentum', low=0.0, high=1.0)
  _number(config, 'optimizer.clip_norm', low=0.0)
  _number(config, 'optimizer.decay_factor', low=0.0, low_open=True)  # piecewise: rate stays > 0
  boundaries = _get(config, 'optimizer.boundaries')
  if boundaries and (list(boundaries) != sorted(boundaries)
                     or not all(isinstance(b, numbers.Real) and 0 < b < 1 for b in boundaries)):
    raise ConfigError(f'optimizer.boundaries={tuple(boundaries)!r}: give increasing fractions '
                      'of the run in (0, 1), e.g. (0.5, 0.75).')
  _number(config, 'label_smoothing', low=0.0, high=1.0)
  _choice(config, 'best_mode', ('max', 'min'))
  _choice(config, 'validation_first', (False, True))
  classes = tuple(_get(config, 'classes') or ())
  if classes:
    count = data.DATASETS[dataset].num_classes
    if (len(set(classes)) != len(classes) or len(classes) < 2
        or any(isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 <= c < count
               for c in classes)):
      raise ConfigError(f'classes={classes!r}: give at least two distinct class indices in '
                        f'0..{count - 1} ({dataset} has {count} classes), or () for all.')
  kd = _get(config, 'kd')
  if kd is not None:
    _choice(config, 'kd.cache', ('', *cache.DTYPES))  # '': a live teacher
    _int(config, 'kd.cache_topk', minimum=0)
    _choice(config, 'kd.multi_teacher', MULTI_TEACHER)
    _number(config, 'kd.temperature', low=0.0, low_open=True)
    _number(config, 'kd.hard_weight', low=0.0)
    _number(config, 'kd.soft_weight', low=0.0)
    if _get(config, 'kd.cache_topk') and not _get(config, 'kd.cache'):
      raise ConfigError(f'kd.cache_topk={_get(config, "kd.cache_topk")}: needs kd.cache '
                        "('float32' or 'float16'); a live teacher keeps every logit.")
    _kd_shorthand_unused(config)
  _choice(config, 'finetune.method', (*transfer.METHODS, 'lp_ft'))
  _int(config, 'finetune.lp_epochs', minimum=0)
  _int(config, 'finetune.lp_steps', minimum=0)
  _int(config, 'finetune.unfreeze_every', minimum=0, hint=' (0: no gradual unfreezing)')
  _number(config, 'finetune.layer_decay', low=0.0, low_open=True, high=1.0, high_open=False)
  _number(config, 'ema.decay', low=0.0, high=1.0)  # the mean teacher uses 0.99-0.999
  _choice(config, 'ema.ramp_up', (False, True))
  _folders(config, 'teacher_dir')
  _folders(config, 'student_init_dir')
  _folders(config, 'init_dir')
