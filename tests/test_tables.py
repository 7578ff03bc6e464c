"""The issue-16 tables: their runs (rows, seeds, the settings fixed in advance), their
summaries on hand-made records (reference numbers worked out here, not by the code), and the
Fashion-MNIST -> digits transfer end to end on the real digits."""
import json
import os
import sys

import numpy as np
import pytest

from jaxkd.recipes.components import build_model
from jaxkd.tables import reproduce, stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, 'experiments', 'configs')


@pytest.fixture(scope='module')
def tables():
  """The table descriptions, loaded as the experiments/reproduce_*.py scripts load them."""
  return {name: reproduce.load_table(os.path.join(CONFIGS, f'reproduce_{name}.py'))
          for name in ('soft_targets', 'headroom_kd', 'layer_transfer', 'digits_transfer',
                       'fashion_mnist_kd')}


def _record(table, row, seed, accuracy, **info):
  return {'table': table, 'row': row, 'seed': seed, 'test_accuracy': accuracy,
          'test_errors': round((1 - accuracy) * 10000), 'best_val_test_accuracy': accuracy,
          'best_val_accuracy': accuracy, **info}


def test_soft_targets_runs(tables):
  t = tables['soft_targets']
  full = t.run_specs(t.get_config('full'), '/r')
  rows = {(s.row, s.seed) for s in full}
  assert rows == {(row, seed) for row in t.ROWS for seed in range(5)}
  by = {(s.row, s.seed): s for s in full}
  teacher = by['hard_full', 0].workdir('/r')
  for seed in range(5):
    small, soft = by['hard_3pct', seed].config, by['soft_3pct', seed].config
    assert small.train_per_class == soft.train_per_class == 180  # 3 % of 60,000
    assert small.validation_first and small.validation_size == 5000 and not small.classes
    assert soft.teacher_dir == teacher  # one teacher: the full-data model of seed 0
    assert (soft.kd.temperature, soft.kd.hard_weight) == (t.KD['temperature'],
                                                          t.KD['hard_weight'])
    assert soft.kd.hard_weight + soft.kd.soft_weight == pytest.approx(1.0)
  select = t.run_specs(t.get_config('select'), '/r')
  assert {s.seed for s in select[1:]} == {t.SELECT_SEED} and t.SELECT_SEED not in range(5)
  assert select[0].workdir('/r') == teacher  # the select and full profiles share it
  assert len(select) == 2 + len(t.SELECT_TEMPERATURES) * len(t.SELECT_HARD_WEIGHTS)


def test_soft_targets_gap_closed(tables):
  t = tables['soft_targets']
  accuracies = {'hard_3pct': (0.80, 0.82, 0.81), 'soft_3pct': (0.86, 0.87, 0.85),
                'hard_full': (0.90, 0.91, 0.91)}
  records = [_record('soft_targets', row, seed, a) for row, values in accuracies.items()
             for seed, a in enumerate(values)]
  recovered = t._recovered(records, 'test_accuracy')
  np.testing.assert_allclose(recovered['fractions'], [0.6, 5 / 9, 0.4])
  assert recovered['fraction_of_mean_gap'] == pytest.approx((0.15 / 3) / (0.29 / 3))
  midpoint = stats.paired_test([0.86, 0.87, 0.85], [0.85, 0.865, 0.86])
  assert recovered['over_midpoint']['p_value'] == pytest.approx(midpoint['p_value'])
  assert recovered['over_midpoint']['mean_difference'] == pytest.approx(0.005 / 3)


def test_headroom_runs(tables):
  t = tables['headroom_kd']
  full = t.run_specs(t.get_config('full'), '/r')
  assert [(s.row, s.seed) for s in full] == [
      (row, seed) for seed in range(5) for row in ('teacher', 'student', 'kd')]
  for spec in full:
    if spec.row == 'kd':
      assert spec.config.teacher_dir == f'/r/headroom_kd/teacher/seed{spec.seed}'
      assert spec.config.kd.cache == 'float32' and not spec.config.augment.flip
    assert spec.config.model == t.MODELS[spec.row]
  student, kd = full[1].config, full[2].config
  for key in ('batch_size', 'num_epochs', 'optimizer', 'augment', 'validation_size'):
    assert student[key] == kd[key], key  # one recipe: only the loss differs
  teachers = t.run_specs(t.get_config('teachers'), '/r')
  assert [s.workdir('/r') for s in teachers] == [s.workdir('/r') for s in full[::3]]
  assert [s.config for s in teachers] == [s.config for s in full[::3]]
  select = t.run_specs(t.get_config('select'), '/r')
  assert select[0].workdir('/r') == full[0].workdir('/r')  # the seed-0 teacher is shared
  assert {s.seed for s in select[1:]} == {t.SELECT_SEED}


@pytest.mark.parametrize('name', ['layer_transfer', 'digits_transfer'])
def test_transfer_rows_copy_and_freeze_what_they_say(tables, name):
  t = tables[name]
  specs = t.run_specs(t.get_config('full'), '/r')
  target = [s for s in specs if not s.table.endswith('_source')]
  assert len(target) == 5 * 2 * (9 if name == 'layer_transfer' else 5)
  by = {(s.table, s.row, s.seed): s.config for s in target}
  if name == 'layer_transfer':
    frozen_2 = by['layer_transfer_10_per_class', 'frozen_2', 0]
    assert frozen_2.finetune.frozen == ('conv1/.*', 'conv2/.*')
    assert frozen_2.dont_load == ('params/head/.*', 'params/dense1/.*', 'params/dense2/.*')
    ft_4 = by['layer_transfer_100_per_class', 'ft_4', 3]
    assert ft_4.dont_load == ('params/head/.*',) and not ft_4.finetune.frozen
    assert not by['layer_transfer_10_per_class', 'scratch', 0].init_dir
  else:
    convs = by['digits_transfer_10_per_class', 'ft_convs', 0]
    assert convs.dataset == 'digits' and convs.train_per_class == 10
    assert convs.dont_load == ('params/head/.*', 'params/dense1/.*', 'params/dense2/.*')
    assert by['digits_transfer_all', 'frozen_convs', 4].finetune.frozen == ('conv1/.*',
                                                                            'conv2/.*')
    assert by['digits_transfer_all', 'lp', 2].train_per_class == 0
  # The primary test is the one fixed in the module, flagged once.
  treatment, control, per_class = t.PRIMARY
  records = [_record(s.table, s.row, s.seed, 0.8 + 0.01 * s.seed + 0.001 * len(s.row),
                     labels_per_class=s.info['labels_per_class']) for s in target]
  payload = t.tabulate(records, t.get_config('full'))
  primary = [x for x in payload['tests'] if x['primary']]
  assert len(primary) == 1 and (primary[0]['treatment'], primary[0]['control'],
                                primary[0]['labels_per_class']) == (treatment, control, per_class)
  assert primary[0]['mean_difference'] == pytest.approx(0.001 * (len(treatment) - len(control)))


@pytest.mark.slow
def test_digits_transfer_end_to_end(tmp_path, tables):
  """Fashion-MNIST source (generated) -> the real digits: scratch and conv1-conv2 carried
  over, the source's convolutions loaded and its dense layers not."""
  pytest.importorskip('sklearn')
  from fakedata import fashion_mnist_in_process
  from jaxkd import checkpoint
  t = tables['digits_transfer']
  config = t.get_config('tiny')
  specs = [s for s in t.run_specs(config, str(tmp_path / 'runs'))
           if s.row in ('source', 'scratch', 'ft_convs')]
  for spec in specs:
    spec.config.parallel.num_devices = 1  # the suite's 8 fake devices would split a batch of 5
  with fashion_mnist_in_process(tmp_path, n_train=200, n_test=20):
    payload = reproduce.run_table(t, specs, config=config, profile='tiny',
                                  root=str(tmp_path / 'runs'),
                                  results_dir=str(tmp_path / 'results'))
  assert [(r['table'], r['row']) for r in payload['runs']] == [
      ('digits_transfer_source', 'source'), ('digits_transfer_2_per_class', 'scratch'),
      ('digits_transfer_2_per_class', 'ft_convs')]
  assert all(0 <= r['test_accuracy'] <= 1 for r in payload['runs'])
  final = json.loads((tmp_path / 'runs' / 'digits_transfer_2_per_class' / 'ft_convs' / 'seed0' /
                      'final_metrics.json').read_text())
  assert final['init_dir'] == specs[0].workdir(str(tmp_path / 'runs'))
  assert final['init_model'] == 'lenet5' and final['init_dataset'] == 'fashion_mnist'
  assert final['dataset'] == 'digits'
  # the digits' fixed test split; the validation images held out of its training split
  assert (final['test_count'], final['val_count']) == (596, config.validation_size)
  assert final['trainable_params'] == 61706  # LeNet-5 with a 10-class head, all trained
  assert '| ft_convs |' in (tmp_path / 'results' / 'digits_transfer_tiny.md').read_text()


def test_mlp_selection_runs(tables):
  """The MLP pair's selection: every candidate teacher and the student alone on a seed no
  row uses; KD at each candidate temperature only from the committed choice of teacher."""
  t = tables['fashion_mnist_kd']
  specs = t.run_specs(t.get_config('mlp_select'), '/r')
  assert {s.seed for s in specs} == {t.MLP_SELECT_SEED} and t.MLP_SELECT_SEED not in range(5)
  teachers = [s for s in specs if s.row.startswith('teacher')]
  assert len(teachers) == len(t.MLP_TEACHER_GRID)
  for spec, recipe in zip(teachers, t.MLP_TEACHER_GRID.values()):
    assert spec.config.model == 'mlp_1200' and spec.config.validation_size == 5000
    assert spec.config.augment.crop_padding == recipe['crop_padding']
    assert spec.config.optimizer.learning_rate == recipe['learning_rate']
    assert spec.config.num_epochs == recipe['epochs']
    hidden, inputs = recipe.get('dropout', (0.5, 0.2))  # the zoo's mlp_1200 where not given
    model = build_model(spec.config, num_classes=10)
    assert (model.dropout_rate, model.input_dropout_rate) == (hidden, inputs)
  kd = [s for s in specs if s.recipe == 'distill']
  if t.MLP_TEACHER_CHOICE is None:
    assert not kd
  else:
    chosen = teachers[list(t.MLP_TEACHER_GRID).index(t.MLP_TEACHER_CHOICE)].workdir('/r')
    long = t.MLP_SELECT_LONG
    assert [(s.config.kd.temperature, s.config.num_epochs) for s in kd] == [
        *((temperature, 10) for temperature in t.MLP_SELECT_TEMPERATURES),
        *((temperature, long['epochs']) for temperature in long['temperatures'])]
    assert {s.config.teacher_dir for s in kd} == {chosen}
    students = [s.config.num_epochs for s in specs if s.row.startswith('student')]
    assert students == [10, long['epochs']]


def test_mlp_rows_use_the_chosen_recipes(tables):
  """The full table's MLP teacher is the committed choice of the selection grid (its
  dropout, jitter, learning rate and epochs), and its KD row the committed temperature."""
  t = tables['fashion_mnist_kd']
  recipe = t.MLP_TEACHER_GRID[t.MLP_TEACHER_CHOICE]
  specs = {(s.row, s.seed): s for s in t.run_specs(t.get_config('full'), '/r')}
  teacher, kd = specs['mlp_teacher', 0].config, specs['mlp_kd', 0].config
  model = build_model(teacher, num_classes=10)
  assert (model.dropout_rate, model.input_dropout_rate) == recipe['dropout']
  assert teacher.augment.crop_padding == recipe['crop_padding']
  assert teacher.optimizer.learning_rate == recipe['learning_rate']
  assert teacher.num_epochs == recipe['epochs']
  assert kd.teacher_dir == specs['mlp_teacher', 0].workdir('/r')
  assert kd.kd.temperature == t.MLP_KD_TEMPERATURE in t.MLP_SELECT_TEMPERATURES
  assert (kd.num_epochs, kd.optimizer.clip_norm) == (t.MLP_KD_EPOCHS, 5.0)
  assert specs['mlp_student', 0].config.num_epochs == t.MLP_STUDENT_EPOCHS
  tiny = [s for s in t.run_specs(t.get_config('tiny'), '/r') if s.row == 'mlp_teacher']
  assert tiny[0].config.num_epochs == 1


def _command_line(table, monkeypatch, tmp_path, *args):
  """`reproduce.command_line` with `args`; the specs it would run (nothing runs)."""
  ran = []
  monkeypatch.setattr(reproduce.recipes, 'enable_compilation_cache', lambda: None)
  monkeypatch.setattr(reproduce, 'run_table', lambda table, specs, **kw: ran.extend(specs))
  monkeypatch.setattr(sys, 'argv', ['reproduce', '--root', str(tmp_path / 'runs'), *args])
  reproduce.command_line('doc', table, default_root=str(tmp_path / 'r'),
                         full_results=str(tmp_path / 'results'))
  return ran


def test_rows_select_runs_by_pattern(tables, monkeypatch, tmp_path):
  t = tables['fashion_mnist_kd']
  specs = _command_line(t, monkeypatch, tmp_path, '--profile', 'full', '--rows', 'mlp_*,T=2',
                        '--seeds', '1,2')
  assert sorted((s.row, s.seed) for s in specs) == sorted(
      [(row, seed) for row in ('mlp_teacher', 'mlp_student', 'mlp_kd') for seed in (1, 2)] +
      [('T=2', 1)])


def test_rows_matching_nothing_is_refused_before_anything_runs(tables, monkeypatch, tmp_path,
                                                               capsys):
  with pytest.raises(SystemExit) as exit_info:
    _command_line(tables['fashion_mnist_kd'], monkeypatch, tmp_path, '--profile', 'tiny',
                  '--rows', 'nope*')
  assert exit_info.value.code == 2
  assert "--rows='nope*' matches no run of profile 'tiny'" in capsys.readouterr().err
  assert not list(tmp_path.iterdir())


def test_tests_lines_adjust_the_secondary_tests_with_holm():
  tests = [{'treatment': f'r{i}', 'control': 'c', 'seeds': [0, 1, 2], 'mean_difference': 0.01,
            'p_value': p, 'p_value_sign_flip': 0.125, 'primary': i == 0}
           for i, p in enumerate([0.001, 0.01, 0.04, 0.03, 0.005])]
  lines = reproduce.tests_lines(tests, caption='Tests:')
  assert '4 secondary tests, so the last column is the t-test p Holm-adjusted over all 4' in (
      lines[1])
  rows = [line for line in lines if line.startswith('| r')]
  # secondary p 0.01, 0.04, 0.03, 0.005 -> Holm 0.03, 0.06, 0.06, 0.02; the primary alone
  assert [row.split(' | ')[-1] for row in rows] == ['primary |', '0.03 |', '0.06 |', '0.06 |',
                                                   '0.02 |']
  single = reproduce.tests_lines(tests[1:2], caption='Tests:')
  assert single[1] == 'Tests:' and 'Holm' not in ''.join(single)


def test_selection_grids_show_validation_accuracy_only():
  summary = [{'table': 't_select', 'row': 'T=1', 'n': 1, 'best_val_accuracy_mean': 0.9,
              'test_accuracy_mean': 0.8, 'best_val_test_accuracy_mean': 0.8}]
  lines = reproduce.grid_lines(summary, 't_select', 'Grid:')
  assert lines[-2:] == ['|---|---|', '| T=1 | 90.00 |'] and 'test' not in ''.join(lines)
  for name in ('headroom_kd_select', 'soft_targets_select', 'fashion_mnist_kd_mlp_select'):
    with open(os.path.join(ROOT, 'experiments', 'results', f'{name}.md')) as f:
      assert 'test acc' not in f.read().split('selection', 1)[1].lower()
