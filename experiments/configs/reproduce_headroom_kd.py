"""A distillation pair with headroom on Fashion-MNIST: a BatchNorm CNN teaches LeNet-5-Half.

    python experiments/reproduce_headroom_kd.py --profile select  # KD settings (validation)
    python experiments/reproduce_headroom_kd.py --profile full    # 5 seeds, the table
    python experiments/reproduce_headroom_kd.py --profile teachers  # the 5 teachers alone

The LeNet-5 -> LeNet-5-Half pair has a teacher only ~1.2 points above its student, too little
for KD to show. Here the teacher is `convnet_bn` (3 conv-BN-ReLU-pool blocks of 32/64/128,
dense 256, dropout 0.3; 0.39 M parameters, 45x LeNet-5-Half's FLOPs), one per seed, trained
with SGD (momentum 0.9, weight decay 5e-4, cosine from 0.05), batch 128, random flips, 15
epochs: a recipe fixed before any run. The student and the KD student share one recipe
(the LeNet table's, without augmentation, so the teacher's logits are computed once per run
and cached); only the KD loss differs.

The KD temperature and hard-label weight were chosen by the 'select' profile (validation
accuracy of the best epoch, student seed 10, which no row of the table uses, taught by the
seed-0 teacher) and written into `KD` below in a commit before any student seed ran.

This module is the table's whole description for `jaxkd.tables.reproduce`.
"""
import ml_collections

from jaxkd.tables import building, reproduce, sweep
from jaxkd.tables.sweep import RunSpec

NAME = 'headroom_kd'
ROWS = {'teacher': 'ConvNet-BN (32-64-128, dense 256)', 'student': 'LeNet-5-Half alone',
        'kd': 'LeNet-5-Half + KD'}
MODELS = {'teacher': 'convnet_bn', 'student': 'lenet5_half', 'kd': 'lenet5_half'}
TESTS = (('kd', 'student'),)
TEST_METRICS = ('test_accuracy', 'best_val_test_accuracy')
SELECT_SEED = 10
VALIDATION_SIZE = 5000

PROFILES = {
    'select': dict(seeds=(), select=True, teacher_epochs=15, student_epochs=15,
                   validation_size=VALIDATION_SIZE, num_steps=0),
    'full': dict(seeds=(0, 1, 2, 3, 4), select=False, teacher_epochs=15, student_epochs=15,
                 validation_size=VALIDATION_SIZE, num_steps=0),
    # the five teachers alone (they do not depend on the KD settings: trained while the
    # select profile runs, then found done by the full profile)
    'teachers': dict(seeds=(0, 1, 2, 3, 4), select=False, teachers_only=True, teacher_epochs=15,
                     student_epochs=15, validation_size=VALIDATION_SIZE, num_steps=0),
    'tiny': dict(seeds=(0,), select=True, teacher_epochs=1, student_epochs=1,
                 validation_size=100, num_steps=3),
}
SELECT_GRID = ((1.0, 0.1), (2.0, 0.1), (4.0, 0.1), (8.0, 0.1), (4.0, 0.5))  # (T, hard weight)
# Chosen by the 'select' profile (2026-12-02; validation accuracy of the best epoch, student
# seed 10): alone 90.18 %; hard weight 0.1 at T = 1: 90.80, T = 2: 90.32, T = 4: 90.50,
# T = 8: 89.94; hard weight 0.5 at T = 4: 90.26. T = 1, hard-label weight 0.1.
KD = dict(temperature=1.0, hard_weight=0.1)


def get_config(profile: str = 'full') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(PROFILES[profile or 'full'])
  config.profile = profile or 'full'
  config.teacher = ml_collections.ConfigDict(dict(
      batch_size=128, augment=dict(crop_padding=0, flip=True),
      optimizer=dict(name='sgd', learning_rate=0.05, momentum=0.9, weight_decay=5e-4,
                     schedule='cosine', warmup_steps=0)))
  config.student = ml_collections.ConfigDict(dict(
      batch_size=64, augment=dict(crop_padding=0, flip=False),
      optimizer=dict(name='adam', learning_rate=2e-3, momentum=0.9, weight_decay=0.0,
                     schedule='cosine', warmup_steps=0)))
  config.kd = ml_collections.ConfigDict(KD)
  return config


def run_specs(config, root: str) -> list:
  """Each seed's teacher before the students it teaches; the selection grid first."""
  from distill_fashion_mnist import get_config as distill_config
  from fashion_mnist import get_config as train_config

  def common(run, recipe, epochs, seed):
    return building.apply_recipe(run, recipe, epochs=epochs, seed=seed, config=config,
                                 augment=True)

  def teacher(seed):
    return RunSpec(NAME, 'teacher', seed, 'train',
                   common(train_config(MODELS['teacher']), config.teacher,
                          config.teacher_epochs, seed))

  def kd(seed, teacher_dir, temperature, hard_weight, table, row):
    run = common(distill_config(MODELS['kd']), config.student, config.student_epochs, seed)
    run.teacher_dir = teacher_dir
    run.kd.cache = 'float32'  # no augmentation: the teacher's logits are fixed per image
    run.kd.temperature, run.kd.hard_weight = temperature, hard_weight
    run.kd.soft_weight = 1.0 - hard_weight
    return RunSpec(table, row, seed, 'distill', run,
                   info={'temperature': temperature, 'hard_weight': hard_weight})

  specs, teachers = [], {}
  for seed in sorted({0, *config.seeds}):
    teachers[seed] = teacher(seed)
  if config.get('teachers_only'):
    return [teachers[seed] for seed in config.seeds]
  if config.select:
    specs.append(teachers[0])
    specs.append(RunSpec(f'{NAME}_select', 'student', SELECT_SEED, 'train',
                         common(train_config(MODELS['student']), config.student,
                                config.student_epochs, SELECT_SEED)))
    for temperature, hard_weight in SELECT_GRID:
      specs.append(kd(SELECT_SEED, teachers[0].workdir(root), temperature, hard_weight,
                      f'{NAME}_select', f'T={temperature:g},hard={hard_weight:g}'))
  for seed in config.seeds:
    specs += [
        teachers[seed],
        RunSpec(NAME, 'student', seed, 'train',
                common(train_config(MODELS['student']), config.student,
                       config.student_epochs, seed)),
        kd(seed, teachers[seed].workdir(root), config.kd.temperature, config.kd.hard_weight,
           NAME, 'kd'),
    ]
  return list({spec.workdir(root): spec for spec in specs}.values())


# --- results -----------------------------------------------------------------------------------

def tabulate(records, config) -> dict:
  rows_present = {r['row'] for r in records if r['table'] == NAME}
  return dict(
      runs=records, kd=config.kd.to_dict(), summary=sweep.summarize(records),
      tests=[sweep.compare(records, table=NAME, treatment=t, control=c, metric=m)
             for t, c in TESTS if {t, c} <= rows_present for m in TEST_METRICS],
      costs=reproduce.model_costs({ROWS['teacher']: MODELS['teacher'],
                                   ROWS['student']: MODELS['student']}))


def render(payload: dict) -> str:
  cell = reproduce.cell
  lines = reproduce.header(f"Fashion-MNIST distillation with headroom ({payload['profile']} "
                           "profile)", payload)
  kd = payload['kd']
  lines += [f"kd: T = {kd['temperature']:g}, hard-label weight {kd['hard_weight']:g}, soft "
            f"weight {1 - kd['hard_weight']:g} (chosen on validation, see below); each seed's "
            "KD student is taught by that seed's teacher.", '']
  summary = {r['row']: r for r in payload['summary'] if r['table'] == NAME}
  lines += reproduce.markdown_table([
      ('row', lambda r: r['row']), ('model', lambda r: ROWS.get(r['row'], r['row'])),
      ('seeds', lambda r: str(r['n'])),
      ('test acc % (last epoch)', lambda r: cell(r, 'test_accuracy')),
      ('test errors / 10k', lambda r: cell(r, 'test_errors', count=True)),
      ('test acc % (best val epoch)', lambda r: cell(r, 'best_val_test_accuracy')),
      ('vs student (points)', reproduce.versus(summary, 'student', skip=('teacher',))),
  ], list(summary.values()))
  lines += building.tests_and_grid_lines(
      payload, NAME, f'Selection (student seed {SELECT_SEED}, seed-0 teacher; the validation '
      'accuracy of the best epoch chooses T and the hard-label weight):')
  lines += reproduce.cost_lines(payload['costs'])
  lines += reproduce.selection_lines(
      payload, 'training images held out for validation choose the "best val epoch" and, in '
      'the select profile, the KD settings; the test set is only reported.')
  return '\n'.join(lines + reproduce.plots_line(payload))


plot_files, plot = reproduce.row_curves(NAME, ROWS, 'ConvNet-BN -> LeNet-5-Half on Fashion-MNIST')
