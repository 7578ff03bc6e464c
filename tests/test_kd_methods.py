"""Every named method config builds its objective with the paper's defaults, and a config of
two methods trains end to end through the distill recipe's objective builder."""
import pytest

from jaxkd.recipes import defaults
from jaxkd.recipes.distillation import build_objective
from jaxkd.recipes.method_configs import METHODS, method_config


@pytest.mark.parametrize('name', sorted(METHODS))
def test_named_config_builds_its_objective(name):
  config = method_config(name)
  objective = build_objective(config, num_teachers=1, steps_per_epoch=50)
  described = objective.describe()
  ce_weight, terms = METHODS[name]
  assert described['ce']['weight'] == ce_weight and described['ce']['loss'] == 'ce'
  for term, settings in terms.items():
    assert described[term]['loss'] == term
    for key, value in settings.items():
      if key.endswith('_epochs'):  # counted in steps by the recipe: 50 per epoch here
        assert described[term][key.removesuffix('_epochs') + '_steps'] == value * 50
      elif key != 'weight':
        got = described[term][key]
        assert (list(got) if isinstance(got, (list, tuple)) else got) == (
            list(value) if isinstance(value, tuple) else value)


def test_methods_combine_and_unknown_ones_are_listed():
  config = method_config('dkd+fitnet')
  assert set(config.terms) == {'ce', 'dkd', 'fitnet'} and config.terms.ce.weight == 1.0
  with pytest.raises(ValueError, match=r"Unknown method\(s\) \['nope'\]; valid: \['at'"):
    method_config('kd+nope')


def test_label_smoothing_reaches_the_cross_entropy_terms():
  config = method_config('dkd')
  config.label_smoothing = 0.1
  assert build_objective(config, num_teachers=1, steps_per_epoch=1).term('ce').label_smoothing == 0.1
  shorthand = defaults.distillation('lenet5_half')
  shorthand.label_smoothing = 0.2
  objective = build_objective(shorthand, num_teachers=1, steps_per_epoch=1)
  assert objective.term('ce').label_smoothing == 0.2


def test_unknown_term_is_refused_before_any_data_or_teacher_is_read(tmp_path):
  from jaxkd import recipes
  config = method_config('dkd')
  config.terms.dkd.alpha = 1.0  # not a setting of dkd
  config.teacher_dir = str(tmp_path)  # a folder: the unknown setting is what fails
  config.data_dir = str(tmp_path / 'no_data')
  with pytest.raises(ValueError, match=r"Unknown setting\(s\) \['alpha'\] for loss 'dkd'"):
    recipes.distill(config, str(tmp_path / 'run'))
  assert sorted(p.name for p in tmp_path.iterdir()) == []
