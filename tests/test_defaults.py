"""Every recipe setting's default in one place (jaxkd.recipes.defaults)."""
import glob
import os
import re

import ml_collections
import pytest

from jaxkd.recipes import defaults
from jaxkd.recipes.validate import check_config

RECIPES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'jaxkd', 'recipes')


def test_a_setting_is_the_configs_or_else_its_default():
  config = ml_collections.ConfigDict(dict(log_every=7, optimizer=dict(momentum=0.5)))
  assert defaults.setting(config, 'log_every') == 7
  assert defaults.setting(config, 'optimizer.momentum') == 0.5
  assert defaults.setting(config, 'optimizer.nesterov') is False  # no base config shows it
  assert defaults.setting(config, 'eval_every') == defaults.supervised().eval_every == 1
  assert defaults.setting(config, 'ema.decay') == defaults.ema_teacher().ema.decay == 0.999
  config.parallel = None  # a missing section reads as its defaults
  assert defaults.setting(config, 'parallel.mode') == 'jit'
  with pytest.raises(KeyError):
    defaults.default('no_such_setting')


def test_every_setting_the_recipes_read_has_a_default():
  names = set()
  for path in glob.glob(os.path.join(RECIPES_DIR, '*.py')):
    with open(path) as f:
      names |= set(re.findall(r"(?:setting\(config, |default\()'([\w.]+)'\)", f.read()))
  assert len(names) > 20
  for name in sorted(names):
    defaults.default(name)  # raises KeyError for a setting without one


@pytest.mark.parametrize('base', [defaults.supervised, defaults.distillation,
                                  defaults.finetune, defaults.ema_teacher])
def test_base_configs_pass_validation(base):
  check_config(base())
