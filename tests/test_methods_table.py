"""The method table (ConvNet-BN -> LeNet-5-Half), the fair MLP control and the soft targets
of a stronger teacher: their runs, tests and costs, on hand-made records (no training but
the smoke profiles, in tests/test_reproduce.py)."""
import json
import os

import pytest

from jaxkd.recipes import method_configs
from jaxkd.tables import methods, reproduce, stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, 'experiments', 'configs')


@pytest.fixture(scope='module')
def tables():
  return {name: reproduce.load_table(os.path.join(CONFIGS, f'reproduce_{name}.py'))
          for name in ('methods', 'fashion_mnist_kd', 'soft_targets', 'headroom_kd')}


def _record(table, row, seed, accuracy):
  return {'table': table, 'row': row, 'seed': seed, 'test_accuracy': accuracy,
          'best_val_test_accuracy': accuracy, 'best_val_accuracy': accuracy}


def test_method_table_runs(tables):
  t, headroom = tables['methods'], tables['headroom_kd']
  full = t.run_specs(t.get_config('full'), '/r')
  seeds = {}
  for spec in full:
    seeds.setdefault(spec.row, set()).add(spec.seed)
  judged = {row: s for row, s in seeds.items() if row != 'teacher'}
  assert len([r for r, s in judged.items() if len(s) >= 3]) >= 20
  assert seeds['student'] == seeds['kd'] == seeds['teacher'] == {0, 1, 2, 3, 4}
  assert all(len(s) == (5 if row in t.TOP_ROWS else 3) for row, s in judged.items()
             if row not in ('student', 'kd'))
  # every registered method that applies (sdd needs a GAP classifier), and the four schemes
  assert set(judged) == {'student', 'kd', *t.SCHEMES,
                         *(m for m in method_configs.METHODS
                           if m not in ('kd', 'sdd', *method_configs.LANGUAGE_ONLY))}
  by = {(s.row, s.seed): s for s in full}
  student, kd = by['student', 1].config, by['kd', 1].config
  assert (kd.kd.temperature, kd.kd.hard_weight) == (headroom.KD['temperature'],
                                                    headroom.KD['hard_weight'])
  headroom_student = [s for s in headroom.run_specs(headroom.get_config('full'), '/h')
                      if (s.row, s.seed) == ('student', 1)][0].config
  for key in ('batch_size', 'num_epochs', 'optimizer', 'augment', 'validation_size'):
    assert student[key] == headroom_student[key] == by['dkd', 1].config[key], key
  assert by['teacher', 2].config.model == 'convnet_bn'
  for (row, seed), spec in by.items():
    if spec.recipe == 'distill':
      assert spec.config.teacher_dir == f'/r/methods/teacher/seed{seed}', row
  assert by['assistant', 0].config.teacher_dir == '/r/methods/teacher/seed0'
  assert by['fitnet', 0].config.terms.fitnet.teacher_tap == 'block2'
  select = t.run_specs(t.get_config('select'), '/r')
  assert select[0].workdir('/r') == '/r/methods/teacher/seed0'
  assert {s.seed for s in select[1:]} == {t.SELECT_SEED} and t.SELECT_SEED not in range(5)
  assert {s.row for s in select[1:]} == set(judged)


def test_method_table_tests_use_holm_across_methods():
  values = {'student': [0.90, 0.91, 0.92], 'kd': [0.91, 0.92, 0.925],
            'a': [0.92, 0.915, 0.93], 'b': [0.905, 0.90, 0.93]}
  records = [_record('methods', row, seed, a) for row, acc in values.items()
             for seed, a in enumerate(acc)]
  found = methods.tests(records, table='methods')
  family = [t for t in found if t['control'] == 'student' and t['metric'] == 'test_accuracy']
  assert [t['treatment'] for t in family] == ['kd', 'a', 'b']
  assert [t['p_holm'] for t in family] == pytest.approx(stats.holm([t['p_value']
                                                                     for t in family]))
  versus_kd = [t for t in found if t['control'] == 'kd' and t['metric'] == 'test_accuracy']
  assert [t['treatment'] for t in versus_kd] == ['a', 'b'] and versus_kd[0]['family_size'] == 2


def test_step_times_read_the_newest_benchmark(tmp_path):
  for name, date, kd_ms in (('methods-old.json', '2026-01-01', 10.0),
                            ('methods-new.json', '2026-02-01', 20.0)):
    rows = [{'pair': 'lenet', 'mode': 'online_kd', 'step_ms': kd_ms},
            {'pair': 'lenet', 'mode': 'crd', 'step_ms': 3 * kd_ms, 'step_ms_interleaved': 30.0},
            {'pair': 'resnet', 'mode': 'online_kd', 'step_ms': 1.0}]
    (tmp_path / name).write_text(json.dumps({'date': date, 'cpu_model': 'X', 'rows': rows}))
  times = methods.step_times(str(tmp_path / 'methods-*.json'))
  assert times['file'] == 'methods-new.json' and times['ratios'] == {'kd': 1.0, 'crd': 1.5}
  assert methods.step_times(str(tmp_path / 'none-*.json')) == {}


@pytest.mark.slow
def test_every_method_row_builds_on_the_pair(tables):
  """Each row's objective initializes on the pair's shapes (taps that exist and fit), and
  the costs are those of its terms."""
  t = tables['methods']
  costs = methods.row_costs(t.run_specs(t.get_config('full'), '/r'), teacher=t.TEACHER)
  assert set(costs) == {s.row for s in t.run_specs(t.get_config('full'), '/r')} - {'teacher'}
  assert costs['kd'] == {'extra_params': 0, 'state_elements': 0, 'recipe': 'distill'}
  assert costs['crd']['state_elements'] > 55000 * 128  # two banks of 55,000 embeddings
  assert costs['fitnet']['extra_params'] == 3 * 64 + 64  # a 1x1 conv, 3 -> 64 channels
  assert costs['dml']['extra_params'] == 35820 == costs['ema']['state_elements']


def test_mlp_fair_control(tables):
  t = tables['fashion_mnist_kd']
  specs = t.run_specs(t.get_config('mlp_fair'), '/r')
  assert {s.seed for s in specs} == set(range(5, 15))
  by = {(s.row, s.seed): s.config for s in specs}
  alone, kd = by['mlp_student_30ep', 7], by['mlp_kd', 7]
  table_kd = {(s.row, s.seed): s.config for s in t.run_specs(t.get_config('full'), '/r')}[
      'mlp_kd', 0]
  for key in ('num_epochs', 'optimizer', 'batch_size', 'augment', 'validation_size'):
    assert alone[key] == kd[key], key
  assert kd.num_epochs == table_kd.num_epochs == t.MLP_KD_EPOCHS
  assert alone.optimizer.clip_norm == table_kd.optimizer.clip_norm == 5.0
  assert kd.teacher_dir == '/r/mlp_fair/mlp_teacher/seed7'
  assert t.MLP_FAIR_PRIMARY == ('mlp_kd', 'mlp_student_30ep', 'test_accuracy')
  records = [_record('mlp_fair', row, seed, 0.9 + 0.001 * seed + (0.002 if row == 'mlp_kd'
                                                                   else 0))
             for seed in range(5, 15) for row in ('mlp_student_30ep', 'mlp_kd')]
  payload = t.tabulate(records, t.get_config('mlp_fair'))
  primary = [x for x in payload['mlp_fair'] if x['primary']]
  assert len(primary) == 1 and primary[0]['mean_difference'] == pytest.approx(0.002)
  assert 'Primary test, committed before these seeds ran' in t.render(
      {**payload, 'profile': 'mlp_fair', 'name': 'x', 'command': 'c', 'git_commit': 'g' * 40,
       'date': 'd', 'machine': {'cpu_model': 'm', 'cores': 2, 'device_kind': 'cpu'},
       'plots': []})


def test_soft_targets_from_a_stronger_teacher(tables, monkeypatch):
  t = tables['soft_targets']
  select = t.run_specs(t.get_config('select_convnet'), '/r')
  assert select[0].row == 'convnet_full' and select[0].config.model == 'convnet_bn'
  assert select[0].config.validation_first and select[0].config.validation_size == 5000
  assert {s.seed for s in select[1:]} == {t.SELECT_SEED}
  assert {s.config.teacher_dir for s in select[2:]} == {select[0].workdir('/r')}
  if t.KD_CONVNET is None:
    with pytest.raises(ValueError, match='KD_CONVNET is not committed'):
      t.run_specs(t.get_config('convnet'), '/r')
  monkeypatch.setattr(t, 'KD_CONVNET', {'temperature': 2.0, 'hard_weight': 0.1})
  specs = {(s.row, s.seed): s for s in t.run_specs(t.get_config('convnet'), '/r')}
  strong = specs['soft_3pct_convnet', 3].config
  assert strong.teacher_dir == '/r/soft_targets/convnet_full/seed0'
  assert (strong.kd.temperature, strong.kd.hard_weight) == (2.0, 0.1)
  assert specs['soft_3pct', 3].config.teacher_dir == '/r/soft_targets/hard_full/seed0'
  records = [_record('soft_targets', row, seed, a)
             for row, values in {'hard_3pct': (0.80, 0.82), 'hard_full': (0.90, 0.92),
                                 'soft_3pct_convnet': (0.86, 0.87)}.items()
             for seed, a in enumerate(values)]
  recovered = t._recovered(records, 'test_accuracy', 'soft_3pct_convnet')
  assert recovered['fractions'] == pytest.approx([0.6, 0.5])
