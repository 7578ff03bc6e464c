"""The Fashion-MNIST distillation tables: profiles 'full' (5 seeds), 'demo', 'tiny' (CI).

    python experiments/reproduce_fashion_mnist_kd.py --profile full

LeNet-5 -> LeNet-5-Half (Nayak et al. 2019) and Hinton et al. 2015's MLP pair; rows teacher,
student alone (hard labels) and KD student; plus a temperature sweep for the LeNet pair.
This module is the table's whole description for `jaxkd.tables.reproduce`: runs, rows, tests,
published figures, Markdown and plots.
"""
import ml_collections

from jaxkd.tables import building, reproduce, sweep
from jaxkd.tables.sweep import RunSpec

NAME = 'fashion_mnist_kd'
# Paired tests (treatment, control), each on both metrics.
TESTS = (('kd', 'student'), ('mlp_kd', 'mlp_student'))
TEST_METRICS = ('test_accuracy', 'best_val_test_accuracy')

PROFILES = {
    # seeds, epochs, temperature-sweep seeds, steps cap (0 = none), which parts run, and the
    # validation images held out from training for model selection (never the test set)
    # (mlp_epochs 0: each MLP row's schedule as chosen on validation, see MLP_* below)
    'full': dict(seeds=(0, 1, 2, 3, 4), lenet_epochs=15, mlp_epochs=0, sweep_seeds=(1,),
                 num_steps=0, run_mlp=True, run_sweep=True, validation_size=5000),
    'demo': dict(seeds=(0,), lenet_epochs=5, mlp_epochs=0, sweep_seeds=(), num_steps=0,
                 run_mlp=False, run_sweep=False, validation_size=5000),
    'tiny': dict(seeds=(0,), lenet_epochs=1, mlp_epochs=1, sweep_seeds=(0,), num_steps=0,
                 run_mlp=True, run_sweep=True, validation_size=32),
    # Hinton's MLP pair, chosen on validation (issue 16): the teacher's recipe from
    # MLP_TEACHER_GRID, then (once MLP_TEACHER_CHOICE is committed) KD's temperature; all on
    # seed MLP_SELECT_SEED, which no row of the table uses.
    'mlp_select': dict(seeds=(), lenet_epochs=15, mlp_epochs=10, sweep_seeds=(), num_steps=0,
                       run_mlp=False, run_sweep=False, validation_size=5000, mlp_select=True),
    # Hinton's MLP pair made fair (MLP_FAIR): the student alone on the KD row's schedule,
    # both over 10 fresh seeds; 'mlp_fair_smoke' is its CI run (2 seeds, 2 steps)
    'mlp_fair': dict(seeds=tuple(range(5, 15)), lenet_epochs=15, mlp_epochs=0, sweep_seeds=(),
                     num_steps=0, run_mlp=False, run_sweep=False, validation_size=5000,
                     mlp_fair=True),
    'mlp_fair_smoke': dict(seeds=(5, 6), lenet_epochs=1, mlp_epochs=1, sweep_seeds=(),
                           num_steps=2, run_mlp=False, run_sweep=False, validation_size=32,
                           mlp_fair=True),
}
# The MLP KD row trained 30 epochs (clipped to norm 5) against a 10-epoch student alone:
# soft targets and schedule confounded. The fair control: `mlp_student_30ep`, the student
# alone with the KD row's schedule and clipping, and `mlp_kd` as in the table, each seed's
# teacher as in the table, over seeds 5-14 (no seed the table or the selection used). The
# primary test, committed before any of these seeds ran: mlp_kd > mlp_student_30ep, last
# epoch, paired one-sided t-test (reported with the sign-flip test and the best-validation-
# epoch test, which are secondary).
MLP_FAIR_TABLE = 'mlp_fair'
MLP_FAIR_PRIMARY = ('mlp_kd', 'mlp_student_30ep', 'test_accuracy')
MLP_SELECT_SEED = 10
# Candidate teacher recipes (dropout kept): jitter (pixels of random shift), SGD learning rate,
# epochs, and (hidden, input) dropout rates where not the zoo's (0.5, 0.2). The full MNIST
# teacher of the paper trained far longer than 10 epochs.
MLP_TEACHER_GRID = {
    'jitter0_lr0.05_30ep': dict(crop_padding=0, learning_rate=0.05, epochs=30),
    'jitter1_lr0.05_30ep': dict(crop_padding=1, learning_rate=0.05, epochs=30),
    'jitter2_lr0.05_30ep': dict(crop_padding=2, learning_rate=0.05, epochs=30),
    'jitter0_lr0.1_30ep': dict(crop_padding=0, learning_rate=0.1, epochs=30),
    # Added after the four above (none beat the student alone, 90.88 % val; the best was
    # still climbing at 30 epochs): longer schedules.
    'jitter0_lr0.05_100ep': dict(crop_padding=0, learning_rate=0.05, epochs=100),
    'jitter1_lr0.05_100ep': dict(crop_padding=1, learning_rate=0.05, epochs=100),
    # Third grid, added after the six above (dropout 0.5 / input 0.2 reached 90.44 % at 100
    # epochs, still below the student alone): lighter dropout (hidden / input), no jitter.
    'drop0.2_in0.1_30ep': dict(crop_padding=0, learning_rate=0.05, epochs=30,
                               dropout=(0.2, 0.1)),
    'drop0.2_in0.1_100ep': dict(crop_padding=0, learning_rate=0.05, epochs=100,
                                dropout=(0.2, 0.1)),
    'drop0.3_in0.1_60ep': dict(crop_padding=0, learning_rate=0.05, epochs=60,
                               dropout=(0.3, 0.1)),
    'drop0.1_in0_30ep': dict(crop_padding=0, learning_rate=0.05, epochs=30,
                             dropout=(0.1, 0.0)),
}
# The best validation accuracy of the grid (91.50 %; the student alone: 90.88 %), chosen
# before any KD run: a key of MLP_TEACHER_GRID.
MLP_TEACHER_CHOICE = 'drop0.2_in0.1_30ep'
MLP_SELECT_TEMPERATURES = (1.0, 2.0, 4.0, 10.0, 20.0)
# Added after the 10-epoch KD grid (every T's best validation accuracy, 90.62-90.76 %, below
# the student alone's 90.88 %; KD led the student over epochs 1-7): a longer schedule for the
# student alone and with KD, where soft targets may regularize what hard labels overfit.
MLP_SELECT_LONG = dict(epochs=30, temperatures=(2.0, 4.0, 20.0))
# The choices, committed before the table's seeds ran: the best validation accuracy of each
# row's runs above. Student alone: 10 epochs (90.88 %; 30 epochs: 90.64 %). KD: T = 4 at 30
# epochs (91.14 %; T = 2: 91.08, T = 20: 91.00 at 30 epochs; 90.62-90.76 at 10 epochs).
MLP_STUDENT_EPOCHS = 10
MLP_KD_EPOCHS = 30
MLP_KD_TEMPERATURE = 4.0

# Each row of the table and the model it trains.
ROWS = {'teacher': 'LeNet-5', 'student': 'LeNet-5-Half alone', 'kd': 'LeNet-5-Half + KD',
        'mlp_teacher': 'MLP 1200-1200 (dropout {}/{})'.format(
            *MLP_TEACHER_GRID[MLP_TEACHER_CHOICE]['dropout']),
        'mlp_student': 'MLP 800-800 alone',
        'mlp_kd': f'MLP 800-800 + KD (T={MLP_KD_TEMPERATURE:g})'}

# Published figures shown beside ours (see shared/REFERENCES.md).
REFERENCES = {
    'teacher': {'accuracy': 0.9084, 'source': 'Nayak et al. 2019, LeNet-5 on Fashion-MNIST'},
    'student': {'accuracy': 0.8943, 'source': 'Nayak et al. 2019, LeNet-5-Half alone'},
    'kd': {'accuracy': 0.8966, 'source': 'Nayak et al. 2019, LeNet-5-Half with KD'},
    'mlp_teacher': {'errors': 67, 'source': 'Hinton et al. 2015, MNIST (not Fashion-MNIST)'},
    'mlp_student': {'errors': 146, 'source': 'Hinton et al. 2015, MNIST (not Fashion-MNIST)'},
    'mlp_kd': {'errors': 74, 'source': 'Hinton et al. 2015, MNIST (not Fashion-MNIST)'},
}


def get_config(profile: str = 'full') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(PROFILES[profile or 'full'])
  config.profile = profile or 'full'
  config.lenet = ml_collections.ConfigDict(dict(
      batch_size=64, optimizer=dict(name='adam', learning_rate=2e-3, schedule='cosine',
                                    weight_decay=0.0, momentum=0.9, warmup_steps=0),
      augment=dict(crop_padding=0, flip=True),  # random crops cost LeNet-5 ~1 point here
      # T = 1: the temperature sweep's best validation accuracy (seed 1: 90.28 % at T = 1,
      # 89.58 at 2, 89.98 at 4, 89.04 at 8, 88.24 at 20). The first full run used T = 4
      # (5 seeds: 89.41 +- 0.19 % test, below the student alone).
      kd=dict(hard_weight=0.1, soft_weight=0.9, temperature=1.0)))
  config.sweep_temperatures = (1.0, 2.0, 4.0, 8.0, 20.0)
  # Hinton's pair: a 1200-1200 teacher with dropout, its recipe chosen on validation
  # (MLP_TEACHER_CHOICE); an unregularized 800-800 student; KD at MLP_KD_TEMPERATURE, its
  # gradient clipped to global norm 5 (without it, the T^2-weighted soft loss at T = 20
  # diverged to NaN within 200 steps on 3 of 4 seeds; clipping leaves normal steps, of norm
  # 0.3-3, untouched).
  config.mlp = ml_collections.ConfigDict(dict(
      batch_size=128, optimizer=dict(name='sgd', learning_rate=0.05, momentum=0.9,
                                     schedule='cosine', weight_decay=0.0, warmup_steps=0),
      kd=dict(hard_weight=0.1, soft_weight=0.9, temperature=MLP_KD_TEMPERATURE, clip_norm=5.0)))
  return config


def run_specs(config, root: str) -> list:
  """Every run of the tables, teachers before the students they teach."""
  from distill_fashion_mnist import get_config as distill_config
  from fashion_mnist import get_config as train_config

  def common(run, pair, epochs, seed):
    return building.apply_recipe(run, pair, epochs=epochs, seed=seed, config=config)

  def supervised(model, pair, epochs, seed, augment):
    run = common(train_config(model), pair, epochs, seed)
    run.augment = ml_collections.ConfigDict(dict(augment))
    return run

  def distilled(model, pair, epochs, seed, teacher_dir, augment, temperature):
    run = common(distill_config(model), pair, epochs, seed)
    run.teacher_dir = teacher_dir
    run.augment = ml_collections.ConfigDict(dict(augment))
    run.kd.hard_weight, run.kd.soft_weight = pair.kd.hard_weight, pair.kd.soft_weight
    run.kd.temperature = temperature
    if pair.kd.get('clip_norm'):
      run.optimizer.clip_norm = pair.kd.clip_norm
    return run

  table, specs = 'fashion_mnist_kd', []
  lenet, mlp = config.lenet, config.mlp
  if config.get('mlp_select'):
    return _mlp_select_specs(config, root, supervised, distilled)
  if config.get('mlp_fair'):
    return _mlp_fair_specs(config, supervised, distilled, root)
  for seed in config.seeds:
    teacher = RunSpec(table, 'teacher', seed, 'train',
                      supervised('lenet5', lenet, config.lenet_epochs, seed, lenet.augment))
    specs += [
        teacher,
        RunSpec(table, 'student', seed, 'train',
                supervised('lenet5_half', lenet, config.lenet_epochs, seed, lenet.augment)),
        RunSpec(table, 'kd', seed, 'distill',
                distilled('lenet5_half', lenet, config.lenet_epochs, seed,
                          teacher.workdir(root), lenet.augment, lenet.kd.temperature),
                info={'temperature': lenet.kd.temperature}),
    ]
  if config.run_mlp:
    no_augment = dict(crop_padding=0, flip=False)
    recipe = dict(MLP_TEACHER_GRID[MLP_TEACHER_CHOICE])
    recipe['epochs'] = config.mlp_epochs or recipe['epochs']
    student_epochs = config.mlp_epochs or MLP_STUDENT_EPOCHS
    kd_epochs = config.mlp_epochs or MLP_KD_EPOCHS
    for seed in config.seeds:
      teacher = RunSpec(table, 'mlp_teacher', seed, 'train',
                        _mlp_teacher(supervised, mlp, recipe, seed))
      specs += [
          teacher,
          RunSpec(table, 'mlp_student', seed, 'train',
                  supervised('mlp_800', mlp, student_epochs, seed, no_augment)),
          RunSpec(table, 'mlp_kd', seed, 'distill',
                  distilled('mlp_800', mlp, kd_epochs, seed, teacher.workdir(root),
                            no_augment, mlp.kd.temperature),
                  info={'temperature': mlp.kd.temperature}),
      ]
  if config.run_sweep:
    for seed in config.sweep_seeds:
      teacher_dir = RunSpec(table, 'teacher', seed, 'train', None).workdir(root)
      for temperature in config.sweep_temperatures:
        if temperature == lenet.kd.temperature:
          continue  # the kd row is this point of the sweep
        specs.append(RunSpec(
            'temperature_sweep', f'T={temperature:g}', seed, 'distill',
            distilled('lenet5_half', lenet, config.lenet_epochs, seed, teacher_dir,
                      lenet.augment, temperature), info={'temperature': temperature}))
  return specs


def _mlp_select_specs(config, root: str, supervised, distilled) -> list:
  """The MLP pair's selection runs: each candidate teacher and the student alone, then KD
  from the chosen teacher at each candidate temperature."""
  mlp, seed, specs = config.mlp, MLP_SELECT_SEED, []
  no_augment = dict(crop_padding=0, flip=False)
  teachers = {}
  for key, recipe in MLP_TEACHER_GRID.items():
    teachers[key] = RunSpec('mlp_select', f'teacher {key}', seed, 'train',
                            _mlp_teacher(supervised, mlp, recipe, seed))
  specs += [*teachers.values(), RunSpec('mlp_select', 'student', seed, 'train', supervised(
      'mlp_800', mlp, config.mlp_epochs, seed, no_augment))]
  if MLP_TEACHER_CHOICE:
    teacher_dir = teachers[MLP_TEACHER_CHOICE].workdir(root)
    specs += [RunSpec('mlp_select', f'kd T={t:g}', seed, 'distill',
                      distilled('mlp_800', mlp, config.mlp_epochs, seed, teacher_dir, no_augment,
                                t), info={'temperature': t})
              for t in MLP_SELECT_TEMPERATURES]
    epochs = MLP_SELECT_LONG['epochs']
    specs.append(RunSpec('mlp_select', f'student {epochs}ep', seed, 'train',
                         supervised('mlp_800', mlp, epochs, seed, no_augment)))
    specs += [RunSpec('mlp_select', f'kd T={t:g} {epochs}ep', seed, 'distill',
                      distilled('mlp_800', mlp, epochs, seed, teacher_dir, no_augment, t),
                      info={'temperature': t})
              for t in MLP_SELECT_LONG['temperatures']]
  return specs


def _mlp_fair_specs(config, supervised, distilled, root: str) -> list:
  """Per seed: the MLP teacher, the student alone on the KD row's schedule (epochs and
  clipping) and the KD student, all as the table's rows but for the student's schedule."""
  mlp, table, specs = config.mlp, MLP_FAIR_TABLE, []
  no_augment = dict(crop_padding=0, flip=False)
  recipe = dict(MLP_TEACHER_GRID[MLP_TEACHER_CHOICE])
  recipe['epochs'] = config.mlp_epochs or recipe['epochs']
  epochs = config.mlp_epochs or MLP_KD_EPOCHS
  for seed in config.seeds:
    teacher = RunSpec(table, 'mlp_teacher', seed, 'train',
                      _mlp_teacher(supervised, mlp, recipe, seed))
    alone = supervised('mlp_800', mlp, epochs, seed, no_augment)
    alone.optimizer.clip_norm = mlp.kd.clip_norm  # the KD row's clipping
    specs += [teacher, RunSpec(table, 'mlp_student_30ep', seed, 'train', alone),
              RunSpec(table, 'mlp_kd', seed, 'distill',
                      distilled('mlp_800', mlp, epochs, seed, teacher.workdir(root), no_augment,
                                mlp.kd.temperature), info={'temperature': mlp.kd.temperature})]
  return specs


def _mlp_teacher(supervised, pair, recipe: dict, seed: int):
  """The run config of an MLP teacher trained with one recipe of `MLP_TEACHER_GRID`."""
  run = supervised('mlp_1200', pair, recipe['epochs'], seed,
                   dict(crop_padding=recipe['crop_padding'], flip=False))
  run.optimizer.learning_rate = recipe['learning_rate']
  if 'dropout' in recipe:
    hidden, inputs = recipe['dropout']
    run.model_overrides = ml_collections.ConfigDict(
        dict(dropout_rate=hidden, input_dropout_rate=inputs))
  return run


# --- results -----------------------------------------------------------------------------------

def _sweep_rows(records, sweep_seeds) -> list[dict]:
  """Accuracy per temperature over the sweep seeds (the kd row supplies its own T)."""
  points = [dict(r, table='sweep', row=None) for r in records
            if r['table'] == 'temperature_sweep' or
            (r['row'] == 'kd' and r['seed'] in sweep_seeds)]
  rows = sweep.summarize(points, group=('temperature',))
  return sorted(rows, key=lambda r: r['temperature'])


def tabulate(records, config) -> dict:
  rows_present = {r['row'] for r in records}
  return dict(
      runs=records, references=REFERENCES, summary=sweep.summarize(records),
      tests=[sweep.compare(records, table=NAME, treatment=t, control=c, metric=m)
             for t, c in TESTS if {t, c} <= rows_present for m in TEST_METRICS],
      temperature_sweep=_sweep_rows(records, tuple(config.sweep_seeds)),
      mlp_fair=[{**sweep.compare(records, table=MLP_FAIR_TABLE, treatment=MLP_FAIR_PRIMARY[0],
                                 control=MLP_FAIR_PRIMARY[1], metric=m),
                 'primary': m == MLP_FAIR_PRIMARY[2]} for m in TEST_METRICS])


def render(payload: dict) -> str:
  cell = reproduce.cell
  lines = reproduce.header(f"Fashion-MNIST distillation ({payload['profile']} profile)", payload)
  lines += reproduce.markdown_table([
      ('row', lambda r: r['row']),
      ('model', lambda r: ROWS.get(r['row'], r['row'])),
      ('seeds', lambda r: str(r['n'])),
      ('test acc % (last epoch)', lambda r: cell(r, 'test_accuracy')),
      ('test errors / 10k', lambda r: cell(r, 'test_errors', count=True)),
      ('test acc % (best val epoch)', lambda r: cell(r, 'best_val_test_accuracy')),
      ('published', lambda r: reproduce.reference(payload['references'], r['row'])),
  ], [row for row in payload['summary'] if row['table'] == NAME])
  tests = [t for t in payload['tests'] if len(t['seeds']) > 1]
  if tests:
    lines += reproduce.tests_lines(
        tests, caption='Paired tests across seeds (one-sided, treatment > control):',
        metric=True, t_statistic=True)
  else:
    lines += ['', '(Paired tests need two seeds or more; the full profile runs five.)']
  lines += _mlp_fair_lines(payload)
  if any(r['table'] == 'mlp_select' for r in payload['summary']):
    lines += reproduce.grid_lines(
        payload['summary'], 'mlp_select', f'MLP pair, selection on validation (seed '
        f'{MLP_SELECT_SEED}; the best epoch\'s validation accuracy chooses):')
  if payload['temperature_sweep']:
    lines += ['', 'Temperature sweep, LeNet-5 -> LeNet-5-Half (the validation accuracy chooses T; '
              'std only over several seeds):', '']
    lines += reproduce.markdown_table([
        ('T', lambda r: f"{r['temperature']:g}"), ('seeds', lambda r: str(r['n'])),
        ('val acc % (best epoch)', lambda r: cell(r, 'best_val_accuracy')),
        ('test acc % (last)', lambda r: cell(r, 'test_accuracy')),
        ('test acc % (best val epoch)', lambda r: cell(r, 'best_val_test_accuracy')),
    ], payload['temperature_sweep'])
  lines += reproduce.selection_lines(
      payload, 'the validation split (training images held out, the same for every run) '
      'chooses the "best val epoch" and the MLP rows\' recipes (seed 10, no row\'s seed). The '
      'LeNet kd row\'s T = 1 was chosen on the validation accuracy of seed 1, a seed the table '
      'also judges, after a first full run at T = 4 had been seen on the TEST set (below the '
      'student alone); the test set is otherwise only reported.')
  return '\n'.join(lines + reproduce.plots_line(payload))


def _mlp_fair_lines(payload: dict) -> list[str]:
  """The fair MLP comparison: its rows, then the primary test and the secondary one."""
  rows = [r for r in payload['summary'] if r['table'] == MLP_FAIR_TABLE]
  if not rows:
    return []
  lines = ['', f'MLP pair, the fair control (seeds {min(rows[0]["seeds"])}-'
           f'{max(rows[0]["seeds"])}; the student alone on the KD row\'s {MLP_KD_EPOCHS} epochs '
           'and clipping):', '']
  lines += reproduce.markdown_table([
      ('row', lambda r: r['row']), ('seeds', lambda r: str(r['n'])),
      ('test acc % (last epoch)', lambda r: reproduce.cell(r, 'test_accuracy')),
      ('test acc % (best val epoch)', lambda r: reproduce.cell(r, 'best_val_test_accuracy')),
  ], rows)
  tests = [t for t in payload.get('mlp_fair', ()) if len(t['seeds']) > 1]
  lines += reproduce.tests_lines(
      tests, caption='Primary test, committed before these seeds ran: mlp_kd > '
      'mlp_student_30ep at the last epoch (t-test); the best-validation-epoch test is '
      'secondary:', metric=True, t_statistic=True)
  return lines


def plot_files(name: str) -> dict:
  return {'curves': f'{name}_curves.png', 'mlp_curves': f'{name}_mlp_curves.png',
          'temperature': f'{name}_temperature.png'}


def plot(records, specs, *, config, root: str, paths: dict) -> None:
  by_row = reproduce.workdirs_by_row(specs, root, NAME)
  reproduce.plot_curves(paths['curves'], by_row, ROWS, ('teacher', 'student', 'kd'),
                        'LeNet-5 -> LeNet-5-Half on Fashion-MNIST')
  if 'mlp_kd' in by_row:
    reproduce.plot_curves(paths['mlp_curves'], by_row, ROWS,
                          ('mlp_teacher', 'mlp_student', 'mlp_kd'),
                          'MLP 1200 -> 800 on Fashion-MNIST')
  sweep_rows = _sweep_rows(records, tuple(config.sweep_seeds))
  if len(sweep_rows) > 1:
    sweep.plot_lines(paths['temperature'],
                     {'KD student, test (last epoch)':
                      [(r['temperature'], 100 * r['test_accuracy_mean']) for r in sweep_rows],
                      'KD student, validation (best epoch)':
                      [(r['temperature'], 100 * r['best_val_accuracy_mean']) for r in sweep_rows
                       if 'best_val_accuracy_mean' in r]},
                     xlabel='temperature T', ylabel='test accuracy %', logx=True,
                     title='LeNet-5-Half distilled from LeNet-5: accuracy vs T')
