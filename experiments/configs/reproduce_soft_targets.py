"""Soft targets as a regularizer (Hinton et al. 2015, sec. 5) on Fashion-MNIST.

    python experiments/reproduce_soft_targets.py --profile select  # chooses T (validation)
    python experiments/reproduce_soft_targets.py --profile full    # 5 seeds, the table

LeNet-5 trained on 3 % of the training images (180 per class, a different class-balanced
draw per seed) with hard labels (`hard_3pct`), and with soft targets from a LeNet-5 trained
on all of them (`soft_3pct`); LeNet-5 trained on all of them is the ceiling (`hard_full`).
As in the paper the model is the same on every row, and the teacher is a full-data model:
`hard_full` seed 0. 5,000 training images are held out first (`validation_first`), so every
row, 3 % or not, is selected on the same 5,000 images and never trains on them.

The temperature and the hard-label weight were chosen by the 'select' profile (validation
accuracy of the best epoch, on a draw of its own, seed 10, which no row of the table uses)
and written into `KD` below in a commit before any seed of the table ran.

This module is the table's whole description for `jaxkd.tables.reproduce`.
"""
import ml_collections

from jaxkd.tables import building, reproduce, stats, sweep
from jaxkd.tables.sweep import RunSpec

NAME = 'soft_targets'
ROWS = {'hard_3pct': 'LeNet-5, 3 % of the images, hard labels',
        'soft_3pct': 'LeNet-5, 3 % of the images, soft targets',
        'hard_full': 'LeNet-5, all images, hard labels (teacher: seed 0)'}
# The stronger source of soft targets (issue "Reference tables III", item 4): ConvNet-BN
# (the headroom table's teacher and recipe, 15 epochs) on all the training images but the
# same 5,000 held out first; seed 0, like the LeNet-5 teacher. Its row's T and hard-label
# weight are chosen as the LeNet-5 teacher's were (profile 'select_convnet', draw seed 10,
# validation accuracy of the best epoch) and committed in KD_CONVNET before its seeds run.
STRONG_TEACHER = 'convnet_bn'
CONVNET_ROWS = {'convnet_full': 'ConvNet-BN, all images, hard labels (teacher: seed 0)',
                'soft_3pct_convnet': 'LeNet-5, 3 % of the images, soft targets of ConvNet-BN'}
SOFT_ROWS = ('soft_3pct', 'soft_3pct_convnet')
TESTS = (('soft_3pct', 'hard_3pct'), ('hard_full', 'soft_3pct'),
         ('soft_3pct_convnet', 'hard_3pct'), ('soft_3pct_convnet', 'soft_3pct'))
TEST_METRICS = ('test_accuracy', 'best_val_test_accuracy')
MODEL = 'lenet5'
PER_CLASS = 180  # 3 % of 60,000 training images, 10 classes
TEACHER_SEED = 0
SELECT_SEED = 10  # the draw the temperature is chosen on; no row of the table uses it
VALIDATION_SIZE = 5000

# Hinton et al. 2015, Table 5 (speech, 85M-parameter DNN, frame accuracy on the test set).
REFERENCES = {
    'hard_3pct': {'accuracy': 0.445, 'source': 'Hinton et al. 2015, 3 % baseline (speech)'},
    'soft_3pct': {'accuracy': 0.570, 'source': 'Hinton et al. 2015, 3 % soft targets (speech)'},
    'hard_full': {'accuracy': 0.589, 'source': 'Hinton et al. 2015, 100 % baseline (speech)'},
}
PUBLISHED_RECOVERED = (0.570 - 0.445) / (0.589 - 0.445)  # 0.87 of the gap

PROFILES = {
    'select': dict(seeds=(), select=True, full_epochs=15, small_epochs=100, eval_every=5,
                   per_class=PER_CLASS, validation_size=VALIDATION_SIZE),
    'full': dict(seeds=(0, 1, 2, 3, 4), select=False, full_epochs=15, small_epochs=100,
                 eval_every=5, per_class=PER_CLASS, validation_size=VALIDATION_SIZE),
    'tiny': dict(seeds=(0, 1), select=False, full_epochs=1, small_epochs=2, eval_every=1,
                 per_class=8, validation_size=100),
    # the stronger teacher: its selection grid on seed 10, then the table's rows with its row
    'select_convnet': dict(seeds=(), select=True, full_epochs=15, small_epochs=100,
                           eval_every=5, per_class=PER_CLASS, validation_size=VALIDATION_SIZE,
                           convnet=True),
    'convnet': dict(seeds=(0, 1, 2, 3, 4), select=False, full_epochs=15, small_epochs=100,
                    eval_every=5, per_class=PER_CLASS, validation_size=VALIDATION_SIZE,
                    convnet=True),
    'convnet_smoke': dict(seeds=(0, 1), select=True, full_epochs=1, small_epochs=1,
                          eval_every=1, per_class=8, validation_size=100, convnet=True,
                          grid_points=1),
}
# The 'select' grid: temperature x weight of the hard-label term (the soft term has 1 - it).
SELECT_TEMPERATURES = (1.0, 2.0, 4.0, 8.0)
SELECT_HARD_WEIGHTS = (0.0, 0.1)
# Chosen by the 'select' profile (2026-12-02, validation accuracy of the best epoch, seed 10):
# hard labels alone 84.04 %; hard weight 0 / 0.1 at T = 1: 86.02 / 86.56, T = 2: 87.16 /
# 86.86, T = 4: 87.34 / 86.86, T = 8: 86.32 / 86.48. T = 4 with soft targets alone.
KD = dict(temperature=4.0, hard_weight=0.0)
# Chosen by the 'select_convnet' profile (same grid, seed 10) and committed before the
# 'convnet' profile's seeds run; None until then (that profile refuses to run its row).
KD_CONVNET: dict | None = None


def get_config(profile: str = 'full') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(PROFILES[profile or 'full'])
  config.profile = profile or 'full'
  config.recipe = ml_collections.ConfigDict(dict(
      batch_size=64, augment=dict(crop_padding=0, flip=True),
      optimizer=dict(name='adam', learning_rate=2e-3, schedule='cosine', weight_decay=0.0,
                     momentum=0.9, warmup_steps=0)))
  config.kd = ml_collections.ConfigDict(KD)
  config.kd_convnet = ml_collections.ConfigDict(KD_CONVNET or {})
  # the headroom table's teacher recipe, for ConvNet-BN on all the images
  config.teacher = ml_collections.ConfigDict(dict(
      batch_size=128, augment=dict(crop_padding=0, flip=True),
      optimizer=dict(name='sgd', learning_rate=0.05, momentum=0.9, weight_decay=5e-4,
                     schedule='cosine', warmup_steps=0)))
  return config


def run_specs(config, root: str) -> list:
  """The teacher (hard_full seed 0) first, then the selection grid or the table's rows."""
  from distill_fashion_mnist import get_config as distill_config
  from fashion_mnist import get_config as train_config

  def common(run, seed, small):
    recipe = config.recipe
    run.seed = seed
    run.batch_size = recipe.batch_size
    run.optimizer = ml_collections.ConfigDict(recipe.optimizer.to_dict())
    run.augment = ml_collections.ConfigDict(recipe.augment.to_dict())
    run.validation_size = config.validation_size
    run.validation_first = True
    run.num_epochs = config.small_epochs if small else config.full_epochs
    run.eval_every = config.eval_every if small else 1
    run.log_every = 200
    if small:
      run.train_per_class = config.per_class  # of every class: the 3 % draw
    return run

  def soft(seed, teacher_dir, temperature, hard_weight, table, row):
    run = common(distill_config(MODEL), seed, small=True)
    run.teacher_dir = teacher_dir
    run.kd.temperature, run.kd.hard_weight = temperature, hard_weight
    run.kd.soft_weight = 1.0 - hard_weight
    return RunSpec(table, row, seed, 'distill', run,
                   info={'temperature': temperature, 'hard_weight': hard_weight})

  def hard(seed, small):
    return RunSpec(NAME, 'hard_3pct' if small else 'hard_full', seed, 'train',
                   common(train_config(MODEL), seed, small))

  teacher = hard(TEACHER_SEED, small=False)
  teacher_dir = teacher.workdir(root)
  specs = [teacher]
  if config.get('convnet'):
    # the LeNet-5 teacher only for the table's rows (soft_3pct): the grid needs ConvNet-BN
    return specs[:bool(config.seeds)] + _convnet_specs(config, root, teacher_dir, common, soft,
                                                       hard)
  if config.select:
    specs.append(RunSpec(f'{NAME}_select', 'hard', SELECT_SEED, 'train',
                         common(train_config(MODEL), SELECT_SEED, small=True)))
    for temperature in SELECT_TEMPERATURES:
      for hard_weight in SELECT_HARD_WEIGHTS:
        specs.append(soft(SELECT_SEED, teacher_dir, temperature, hard_weight, f'{NAME}_select',
                          f'T={temperature:g},hard={hard_weight:g}'))
  for seed in config.seeds:
    if seed != TEACHER_SEED:
      specs.append(hard(seed, small=False))
    specs += [hard(seed, small=True),
              soft(seed, teacher_dir, config.kd.temperature, config.kd.hard_weight, NAME,
                   'soft_3pct')]
  return specs


def _convnet_specs(config, root: str, teacher_dir: str, common, soft, hard) -> list:
  """ConvNet-BN on all the images; then its selection grid (seed 10) or the table's rows
  with its soft-target row (`KD_CONVNET`, refused until committed)."""
  from fashion_mnist import get_config as train_config
  run = common(train_config(STRONG_TEACHER), TEACHER_SEED, small=False)
  recipe = config.teacher
  run.batch_size = recipe.batch_size
  run.optimizer = ml_collections.ConfigDict(recipe.optimizer.to_dict())
  run.augment = ml_collections.ConfigDict(recipe.augment.to_dict())
  strong = RunSpec(NAME, 'convnet_full', TEACHER_SEED, 'train', run)
  specs = [strong]
  if config.select:
    specs.append(RunSpec(f'{NAME}_select_convnet', 'hard', SELECT_SEED, 'train',
                         common(train_config(MODEL), SELECT_SEED, small=True)))
    grid = [(t, w) for t in SELECT_TEMPERATURES for w in SELECT_HARD_WEIGHTS]
    specs += [soft(SELECT_SEED, strong.workdir(root), t, w, f'{NAME}_select_convnet',
                   f'T={t:g},hard={w:g}') for t, w in grid[:config.get('grid_points') or None]]
  if config.seeds and not config.kd_convnet:
    if not config.select:
      raise ValueError('KD_CONVNET is not committed yet: run --profile select_convnet, write '
                       'its choice into experiments/configs/reproduce_soft_targets.py, commit.')
    return specs  # a smoke run: the grid alone
  for seed in config.seeds:
    if seed != TEACHER_SEED:
      specs.append(hard(seed, small=False))
    specs += [hard(seed, small=True),
              soft(seed, teacher_dir, config.kd.temperature, config.kd.hard_weight, NAME,
                   'soft_3pct'),
              soft(seed, strong.workdir(root), config.kd_convnet.temperature,
                   config.kd_convnet.hard_weight, NAME, 'soft_3pct_convnet')]
  return specs


# --- results -----------------------------------------------------------------------------------

def _recovered(records, metric: str, soft: str = 'soft_3pct') -> dict:
  """Per seed, the fraction of the gap between 3 % and all images that the soft targets of
  row `soft` close, and a paired one-sided test that they pass the gap's midpoint (>= 50 %)."""
  by = {row: {r['seed']: r[metric] for r in records
              if r['table'] == NAME and r['row'] == row and r.get(metric) is not None}
        for row in (*ROWS, soft)}
  seeds = sorted(set(by['hard_3pct']) & set(by[soft]) & set(by['hard_full']))
  fractions = [(by[soft][s] - by['hard_3pct'][s]) /
               (by['hard_full'][s] - by['hard_3pct'][s]) for s in seeds]
  midpoint = [(by['hard_3pct'][s] + by['hard_full'][s]) / 2 for s in seeds]
  result = {'row': soft, 'metric': metric, 'seeds': seeds, 'fractions': fractions}
  if seeds:
    mean_gap = sum(by['hard_full'][s] - by['hard_3pct'][s] for s in seeds) / len(seeds)
    mean_gain = sum(by[soft][s] - by['hard_3pct'][s] for s in seeds) / len(seeds)
    result['fraction_of_mean_gap'] = mean_gain / mean_gap if mean_gap else None
    result['over_midpoint'] = stats.paired_test([by[soft][s] for s in seeds], midpoint)
  return result


def tabulate(records, config) -> dict:
  rows_present = {r['row'] for r in records if r['table'] == NAME}
  return dict(
      runs=records, references=REFERENCES, kd=config.kd.to_dict(),
      summary=sweep.summarize(records),
      tests=[sweep.compare(records, table=NAME, treatment=t, control=c, metric=m)
             for t, c in TESTS if {t, c} <= rows_present for m in TEST_METRICS],
      recovered=[_recovered(records, m, soft) for soft in SOFT_ROWS for m in TEST_METRICS],
      kd_convnet=config.kd_convnet.to_dict(),
      costs=reproduce.model_costs({'LeNet-5 (every row and the teacher)': MODEL}))


def render(payload: dict) -> str:
  lines = reproduce.header(f"Soft targets as a regularizer, Fashion-MNIST ({payload['profile']} "
                           "profile)", payload)
  kd, labels = payload['kd'], {**ROWS, **CONVNET_ROWS}
  lines += [f"soft_3pct: T = {kd['temperature']:g}, hard-label weight {kd['hard_weight']:g}, "
            f"soft weight {1 - kd['hard_weight']:g} (chosen on validation, see below).", '']
  if payload.get('kd_convnet'):
    strong = payload['kd_convnet']
    lines[-1:] = [f"soft_3pct_convnet: T = {strong['temperature']:g}, hard-label weight "
                  f"{strong['hard_weight']:g} (chosen on validation in the same way).", '']
  lines += reproduce.markdown_table(reproduce.summary_columns(labels) + [
      ('published (speech frames)', lambda r: reproduce.reference(payload['references'],
                                                                  r['row'])),
  ], [row for row in payload['summary'] if row['table'] == NAME])
  for rec in payload['recovered']:
    if not rec['seeds']:
      continue
    test = rec['over_midpoint']
    row = rec.get('row', 'soft_3pct')
    lines += ['', f"Gap closed by soft targets{'' if row == 'soft_3pct' else f' ({row})'} "
              f"({rec['metric']}): "
              f"{100 * rec['fraction_of_mean_gap']:.0f} % of the mean gap between 3 % and all "
              f"images (per seed: {', '.join(f'{100 * f:.0f}' for f in rec['fractions'])} %; "
              f"paper: {100 * PUBLISHED_RECOVERED:.0f} %); {row} above the gap's midpoint: "
              f"{100 * test['mean_difference']:+.2f} points, p = {test['p_value']:.3g} "
              f"(t-test), {test['p_value_sign_flip']:.3g} (sign-flip)."]
  lines += building.tests_and_grid_lines(
      payload, NAME, f'Selection (draw seed {SELECT_SEED}, validation accuracy of the best '
      'epoch chooses T and the hard-label weight):')
  if any(r['table'] == f'{NAME}_select_convnet' for r in payload['summary']):
    lines += reproduce.grid_lines(
        payload['summary'], f'{NAME}_select_convnet', f'Selection for the ConvNet-BN teacher '
        f'(draw seed {SELECT_SEED}, the same grid and rule):')
  lines += reproduce.cost_lines(payload['costs'])
  lines += reproduce.selection_lines(
      payload, f'{VALIDATION_SIZE:,} training images held out before the 3 % draw choose the '
      '"best val epoch" and, in the select profile, T and the weights; the test set is only '
      'reported.')
  return '\n'.join(lines + reproduce.plots_line(payload))


plot_files, plot = reproduce.row_curves(NAME, ROWS, 'Soft targets on 3 % of Fashion-MNIST (LeNet-5)')
